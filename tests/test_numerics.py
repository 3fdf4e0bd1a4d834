"""The expo kernel against an fp64 reference, through mergekit's own merge API."""

import pytest
import torch
from mergekit.merge_methods import merge_tensors

import mergekit_expo  # noqa: F401  (registers expo)
from fp64_reference import expo_fp64, fidelity

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


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
    assert equal >= 0.9999, f"{equal:.6f} correctly rounded"
    assert worst_ulps <= 1.0


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
