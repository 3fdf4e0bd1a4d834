"""The expo kernel against the fp64 value rounded once and exact rationals, through mergekit's own merge API."""

import random
from fractions import Fraction

import pytest
import torch
from mergekit.merge_methods import merge_tensors

import mergekit_expo  # noqa: F401  (registers expo)
from fp64_reference import exact_expo, expo_fp64, fidelity, round_fraction, round_once

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# Held-out α, each with the exact rational it stands for: the float itself where its
# binary expansion is what was meant, the decimal as written, and the rational a
# mergekit gradient computes (0.1 + 0.4·17/31 = 99/310).
HELD_OUT = [
    (0.3 + 2.0 ** -30, Fraction(0.3 + 2.0 ** -30)),
    (0.5 + 2.0 ** -20, Fraction(0.5 + 2.0 ** -20)),
    (0.123456789, Fraction(0.123456789)),
    (0.3, Fraction("0.3")),
    (0.37, Fraction("0.37")),
    (0.1 + 0.4 * 17 / 31, Fraction(99, 310)),
]


def weights_pair(dtype, n=1_000_000, spread=0.02, delta=0.002, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sft = torch.randn(n, generator=generator, dtype=torch.float64) * spread
    aligned = sft + torch.randn(n, generator=generator, dtype=torch.float64) * delta
    return sft.to(dtype), aligned.to(dtype)


def expo(sft, aligned, alpha, **kwargs):
    return merge_tensors(
        [sft, aligned], "expo", parameters={"alpha": alpha}, base_index=0, **kwargs
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.37, 0.3, 0.5, 1.0, 2.0, -0.5])
def test_matches_fp64_reference_rounded_once(dtype, alpha):
    sft, aligned = weights_pair(dtype)
    out = expo(sft, aligned, alpha)
    assert out.dtype == dtype
    equal, worst_ulps = fidelity(out, sft, aligned, alpha)
    assert equal == 1.0, f"{equal:.6f} rounded once"
    assert worst_ulps <= 1.0


def few_ulp_pair(dtype, n, seed=0):
    """aligned = sft moved by -4..4 units in the last place: results full of ties and near-ties."""
    sft, _ = weights_pair(dtype, n=n, seed=seed)
    steps = torch.randint(-4, 5, sft.shape, generator=torch.Generator().manual_seed(seed + 1))
    aligned = (sft.view(torch.int16) + steps.to(torch.int16)).view(dtype)
    return sft, aligned


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha,exact_alpha", HELD_OUT)
def test_sampled_elements_equal_exact_rationals_rounded_once(dtype, alpha, exact_alpha):
    # Python floats and fractions only: no torch conversion decides anything here.
    pairs = [weights_pair(dtype, n=20_000, seed=5), few_ulp_pair(dtype, n=20_000, seed=6)]
    for sft, aligned in pairs:
        out = expo(sft, aligned, alpha).double().tolist()
        sample = random.Random(7).sample(range(len(out)), 1500)
        s, a = sft.double().tolist(), aligned.double().tolist()
        for i in sample:
            fp64_value = a[i] + alpha * (a[i] - s[i])  # IEEE fp64, one step at a time
            assert out[i] == round_fraction(Fraction(fp64_value), dtype), (i, s[i], a[i])
            # and, on these held-out pairs, the exact real result rounded once
            assert out[i] == round_fraction(exact_expo(s[i], a[i], exact_alpha), dtype), (i, s[i], a[i])


def test_the_fused_kernel_through_mergekit_api():
    from mergekit_expo import fused_kernel, numerics

    sft, aligned = few_ulp_pair(torch.bfloat16, n=numerics._FUSED_MIN_ELEMENTS, seed=8)
    calls = fused_kernel._compiled.cache_info()
    out = expo(sft, aligned, 0.3 + 2.0 ** -30)
    after = fused_kernel._compiled.cache_info()
    assert after.hits + after.misses == calls.hits + calls.misses + 1  # the fused pass ran
    expected = round_once(expo_fp64(sft, aligned, 0.3 + 2.0 ** -30), torch.bfloat16)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_near_cancellation_stays_within_one_ulp_of_the_inputs(dtype):
    # α = 1 and aligned ≈ sft/2 make the result cancel to ~0.
    sft, _ = weights_pair(dtype, n=200_000)
    aligned = (sft.double() / 2 + 1e-6).to(dtype)
    _, worst_ulps = fidelity(expo(sft, aligned, 1.0), sft, aligned, 1.0)
    assert worst_ulps <= 1.0


def test_naive_bf16_arithmetic_is_measurably_worse():
    # Guards the test itself: the fidelity measure must see the paper script's rounding.
    sft, aligned = weights_pair(torch.bfloat16)
    naive = aligned + 0.3 * (aligned - sft)
    equal, _ = fidelity(naive, sft, aligned, 0.3)
    assert equal < 0.99


def test_alpha_is_used_exactly_for_fp32():
    # fp32(0.37) = 0.37000000477; using it instead of 0.37 changes ~1% of outputs.
    sft, aligned = weights_pair(torch.float32)
    out = expo(sft, aligned, 0.37)
    assert torch.equal(out, expo_fp64(sft, aligned, 0.37).float())


def test_alpha_zero_returns_aligned_bit_for_bit():
    sft, aligned = weights_pair(torch.bfloat16, n=10_000)
    aligned[0] = -0.0
    out = expo(sft, aligned, 0.0)
    assert torch.equal(out.view(torch.int16), aligned.view(torch.int16))


def test_float64_inputs_stay_float64():
    sft, aligned = weights_pair(torch.float64, n=1000)
    out = expo(sft, aligned, 0.3)
    assert out.dtype == torch.float64
    assert torch.allclose(out, expo_fp64(sft, aligned, 0.3), rtol=0, atol=1e-15)


def test_out_dtype_rounds_the_fp32_path_to_bf16():
    sft, aligned = weights_pair(torch.float32)
    out = expo(sft, aligned, 0.3, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    # rounded once to fp32, then mergekit's own cast to bf16: a second rounding
    equal, worst = fidelity(out, sft, aligned, 0.3)
    assert equal >= 0.9999 and worst <= 1.0


def test_strided_and_multidimensional_inputs():
    sft, aligned = weights_pair(torch.float32, n=64 * 48)
    sft_t, aligned_t = sft.view(64, 48).t(), aligned.view(64, 48).t()
    out = expo(sft_t, aligned_t, 0.3)
    assert out.shape == (48, 64)
    assert torch.equal(out, expo_fp64(sft_t, aligned_t, 0.3).float())


def test_empty_tensor():
    empty = torch.empty(0, 4, dtype=torch.bfloat16)
    assert expo(empty, empty.clone(), 0.3).shape == (0, 4)
