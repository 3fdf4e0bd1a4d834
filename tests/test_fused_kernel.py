"""The fused bf16 CPU kernel and the fp64 stream, each held bit for bit to the fp64 value rounded once."""

import math
import threading

import pytest
import torch

from fp64_reference import expo_fp64, round_once
from mergekit_expo import numerics
from mergekit_expo.errors import ExpoNumericsError
from mergekit_expo.fused_kernel import extrapolate_bf16

ALPHAS = [0.3, 0.37, 0.5, 1.0, 2.0, -0.5, 1e-3, 7.25]
# α whose binary expansion has long runs, and one a mergekit gradient produces: through
# fp32 by nearest first, these round twice on many elements.
LONG_RUNS = [0.3 + 2.0 ** -30, 0.5 + 2.0 ** -20, 0.123456789, 0.1 + 0.4 * 17 / 31]


def bits(tensor):
    return tensor.view(torch.int16)


def reference(sft, aligned, alpha, dtype=torch.bfloat16):
    return round_once(expo_fp64(sft, aligned, alpha), dtype)


def weights(n=1 << 22, seed=0, delta=0.002):
    generator = torch.Generator().manual_seed(seed)
    sft = torch.randn(n, generator=generator, dtype=torch.float64) * 0.02
    aligned = sft + torch.randn(n, generator=generator, dtype=torch.float64) * delta
    return sft.to(torch.bfloat16), aligned.to(torch.bfloat16)


def awkward_pairs():
    """Every pair of a set of awkward bf16 values: zeros, subnormals, ties, huge gaps."""
    values = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, 1.0078125, 1.01171875, 3.0, 1e-30, -1e-30, 1e30, 2.0 ** -133,
         -(2.0 ** -130), 2.0 ** -126, 1e38, -1e38, 0.1, 0.3, 65504.0, 2.0 ** -149],
        dtype=torch.float64,
    ).to(torch.bfloat16)
    sft = values.repeat_interleave(len(values))
    aligned = values.repeat(len(values))
    return sft, aligned


def test_the_fused_kernel_is_available_with_the_installed_numba():
    sft, aligned = weights(n=16)
    assert extrapolate_bf16(sft, aligned, 0.3) is not None


@pytest.mark.parametrize("alpha", ALPHAS)
def test_fused_and_stream_equal_the_fp64_reference_bit_for_bit(alpha):
    sft, aligned = weights(n=1 << 20, seed=int(abs(alpha) * 100))
    expected = bits(reference(sft, aligned, alpha))
    assert torch.equal(bits(extrapolate_bf16(sft, aligned, alpha)), expected)
    assert torch.equal(bits(numerics.stream_fp64(sft, aligned, alpha)), expected)


@pytest.mark.parametrize("alpha", [0.3, 0.5, -0.7, 2.0, *LONG_RUNS])
def test_awkward_values_bit_for_bit(alpha):
    sft, aligned = awkward_pairs()
    expected = reference(sft, aligned, alpha)
    assert torch.isfinite(expected).sum() > 300  # the awkward cases really are exercised
    for result in (extrapolate_bf16(sft, aligned, alpha), numerics.stream_fp64(sft, aligned, alpha)):
        assert torch.equal(bits(result), bits(expected))


def few_ulp_pairs(dtype=torch.bfloat16, n=1 << 20, seed=3):
    """aligned = sft moved by -4..4 units in the last place: results full of ties and near-ties."""
    sft, _ = weights(n=n, seed=seed)
    sft = sft.to(dtype)
    steps = torch.randint(-4, 5, sft.shape, generator=torch.Generator().manual_seed(seed + 1))
    aligned = (sft.view(torch.int16) + steps.to(torch.int16)).view(dtype)
    return sft, torch.where(torch.isfinite(aligned), aligned, sft)


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.3, *LONG_RUNS])
def test_few_ulp_deltas_full_of_ties_and_false_ties(alpha):
    sft, aligned = few_ulp_pairs()
    expected = bits(reference(sft, aligned, alpha))
    assert torch.equal(bits(extrapolate_bf16(sft, aligned, alpha)), expected)
    assert torch.equal(bits(numerics.stream_fp64(sft, aligned, alpha)), expected)


@pytest.mark.parametrize("alpha", [0.3, *LONG_RUNS])
def test_the_stream_rounds_float16_once(alpha):
    sft, aligned = few_ulp_pairs(torch.float16, n=1 << 18)
    assert torch.equal(bits(numerics.stream_fp64(sft, aligned, alpha)),
                       bits(reference(sft, aligned, alpha, torch.float16)))


def edge_cases(dtype):
    """(sft, aligned, alpha, expected) rows, the expected results worked out by hand."""
    tiny = 2.0 ** -133 if dtype == torch.bfloat16 else 2.0 ** -24  # the smallest subnormal
    largest = torch.finfo(dtype).max
    ulp_at_largest = 2.0 ** (120 if dtype == torch.bfloat16 else 5)
    return [
        # false tie among subnormals: 3 + 1.5·(1 + 2**-29) smallest subnormals is just above 4.5
        (0.0, 3 * tiny, 0.5 + 2.0 ** -30, 5 * tiny),
        # largest + half an ulp is a tie that goes to inf; just below it stays finite
        (largest - ulp_at_largest, largest, 0.5, math.inf),
        (largest - ulp_at_largest, largest, 0.5 - 2.0 ** -30, largest),
        (-largest + ulp_at_largest, -largest, 0.5 - 2.0 ** -30, -largest),
        # far past fp32's range: inf, with its sign
        (-largest, largest, 3.0, math.inf),
        # results that round to zero keep their sign; an exact zero is +0 (IEEE: -0 - -0 = +0)
        (3 * tiny, tiny, 0.7, -0.0),
        (-3 * tiny, -tiny, 0.7, 0.0),
        (1.0, 0.5, 1.0, 0.0),
        (-0.0, -0.0, 0.3, 0.0),
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_edge_cases_worked_out_by_hand(dtype):
    rows = edge_cases(dtype)
    expected = torch.tensor([row[3] for row in rows], dtype=dtype)
    for sft_value, aligned_value, alpha, want in rows:
        sft, aligned = (torch.tensor([v], dtype=torch.float64).to(dtype) for v in (sft_value, aligned_value))
        results = [numerics.stream_fp64(sft, aligned, alpha)]
        if dtype == torch.bfloat16:
            results.append(extrapolate_bf16(sft, aligned, alpha))
        want_bits = bits(torch.tensor([want], dtype=dtype))
        assert torch.equal(bits(reference(sft, aligned, alpha, dtype)), want_bits), (sft_value, aligned_value, alpha)
        for result in results:
            assert torch.equal(bits(result), want_bits), (sft_value, aligned_value, alpha, result.item(), want)
    assert len(expected) == len(rows)


def test_only_large_contiguous_cpu_bf16_tensors_take_the_fused_path():
    large, small = weights(n=numerics._FUSED_MIN_ELEMENTS), weights(n=numerics._FUSED_MIN_ELEMENTS // 2)
    assert numerics._fused(*large, 0.3) is not None
    assert numerics._fused(*small, 0.3) is None
    assert numerics._fused(*(t.float() for t in large), 0.3) is None
    assert numerics._fused(*(t.view(2048, -1).t() for t in large), 0.3) is None


def test_extrapolate_tensor_on_the_fused_path_keeps_the_shape():
    sft, aligned = weights(n=1 << 22)
    sft, aligned = sft.view(2048, 2048), aligned.view(2048, 2048)
    out = numerics.extrapolate_tensor(sft, aligned, 0.3)
    assert out.shape == (2048, 2048) and out.dtype == torch.bfloat16
    assert torch.equal(bits(out), bits(reference(sft, aligned, 0.3)))
    # a transposed (non-contiguous) view goes through the stream, same bits
    out_t = numerics.extrapolate_tensor(sft.t(), aligned.t(), 0.3)
    assert torch.equal(bits(out_t), bits(reference(sft.t(), aligned.t(), 0.3)))


def test_overflow_on_the_fused_path_names_the_tensor():
    sft, aligned = weights(n=1 << 22)
    aligned[5] = 3e38
    sft[5] = -3e38
    with pytest.raises(ExpoNumericsError, match="lm_head.weight overflows bfloat16 at alpha=0.5"):
        numerics.extrapolate_tensor(sft, aligned, 0.5, name="lm_head.weight")


def test_calls_from_several_threads_at_once_stay_exact():
    pairs = [weights(n=1 << 21, seed=seed) for seed in range(4)]
    results = [None] * len(pairs)

    def work(index):
        sft, aligned = pairs[index]
        results[index] = extrapolate_bf16(sft, aligned, 0.3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (sft, aligned), result in zip(pairs, results):
        assert torch.equal(bits(result), bits(reference(sft, aligned, 0.3)))
