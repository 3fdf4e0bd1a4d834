"""The fused bf16 trajectory kernel against the fp64 stream and the least-squares reference,
bit for bit: random weights with many exact ties, awkward values, every window."""

import pytest
import torch

from fp64_reference import trajectory_reference
from mergekit_expo.trajectory import fit_coefficients
from mergekit_expo.trajectory.numerics import fit_bf16, stream

STEPS = [(0, 100, 200, 300, 400, 500), (0, 37, 150, 410, 999, 1000), (0, 1, 2, 3, 4, 1000)]


def same(got, want):
    """Equal bit patterns, any NaN equal to any NaN (neither reaches a checkpoint: check_finite)."""
    nan = torch.isnan(got.float()) & torch.isnan(want.float())
    return bool(((got.view(torch.int16) == want.view(torch.int16)) | nan).all())


def run(n=1 << 17, seed=0):
    """Points near a line: exact ties of the fit are frequent (a few % of elements)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=generator, dtype=torch.float64) * 0.02
    return [(base + 0.001 * k + 0.0005 * torch.randn(n, generator=generator, dtype=torch.float64))
            .to(torch.bfloat16) for k in range(6)]


@pytest.mark.parametrize("steps", STEPS, ids=["regular", "irregular", "outlier"])
def test_fused_and_stream_give_the_same_bits(steps):
    points = run(seed=len(steps))
    for window in (None, 4, 2):
        fit = fit_coefficients(steps, window=window)
        for alpha in (0.3, 0.0, -0.7, 0.5 + 2.0 ** -20):
            fused = fit_bf16(points, fit.arithmetic, alpha)
            assert fused is not None and same(fused, stream(points, fit.arithmetic, alpha)), (window, alpha)


def test_fused_equals_the_least_squares_reference():
    points, steps = run(seed=9), STEPS[0]
    fit = fit_coefficients(steps)
    want, ties = trajectory_reference(points, steps, 0.5, torch.bfloat16)
    assert ties > 500 and same(fit_bf16(points, fit.arithmetic, 0.5), want)


def test_awkward_values():
    # zeros of both signs, subnormals, huge values and gaps, in every combination of three points
    values = torch.tensor([0.0, -0.0, 1.0, -1.0, 1.0078125, 3.0, 1e-30, -1e-30, 1e30, 2.0 ** -133,
                           -(2.0 ** -130), 1e38, -1e38, 0.1, 65504.0], dtype=torch.float64).to(torch.bfloat16)
    grid = torch.cartesian_prod(values, values, values)
    points = [grid[:, k].contiguous() for k in range(3)]
    fit = fit_coefficients([0, 100, 300])
    for alpha in (0.3, 0.0, -0.5, 1.0):
        assert same(fit_bf16(points, fit.arithmetic, alpha), stream(points, fit.arithmetic, alpha)), alpha


def test_affine_parts_evaluated_per_alpha_give_the_merges_bits():
    # What a caller setting many α uses: two points are expo's reference (signed zeros too),
    # more points the fused pass's bits.
    from fp64_reference import expo_fp64, round_once
    from mergekit_expo.trajectory.numerics import affine_parts, evaluate

    sft, aligned = run(n=1 << 12, seed=4)[::5]
    sft[:8], aligned[:4], aligned[4:8] = 0.0, -0.0, 0.0
    two = affine_parts([sft, aligned], fit_coefficients([0, 700]))
    points, fit = run(seed=5), fit_coefficients(STEPS[1], window=4)
    six = affine_parts(points, fit)
    for alpha in (0.3, 0.0, -0.4, 1.7):
        want = alpha and round_once(expo_fp64(sft, aligned, alpha), torch.bfloat16)
        assert same(evaluate(two, alpha), aligned if alpha == 0 else want), alpha
        assert same(evaluate(six, alpha), fit_bf16(points, fit.arithmetic, alpha)), alpha
