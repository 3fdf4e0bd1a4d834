"""The references the numerics are judged against, written independently of the package.

Rounding here never goes through torch's own narrowing conversion (fp64 -> bf16 and
fp64 -> fp16 round twice, through fp32): :func:`round_once` picks between the two
neighbours of each value with exact fp64 arithmetic, and :func:`round_fraction` rounds
an exact rational. ``tests/test_rounding_reference.py`` holds the first to the second.
"""

import math
from fractions import Fraction

import torch

# significand bits (with the leading one), smallest normal exponent, largest exponent
FORMATS = {torch.bfloat16: (8, -126, 127), torch.float16: (11, -14, 15), torch.float32: (24, -126, 127)}


def expo_fp64(sft: torch.Tensor, aligned: torch.Tensor, alpha: float) -> torch.Tensor:
    """The fp64 value: a − s, times α, plus a, each step rounded to fp64 (IEEE)."""
    sft, aligned = sft.double(), aligned.double()
    return aligned + alpha * (aligned - sft)


def round_once(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp64 ``values`` rounded once to ``dtype``: nearest, ties to even, past the largest to inf.

    Each value's grid step is a power of two (fixed below the smallest normal, which
    gives subnormals); the value divided by it splits exactly into an integer and a
    fraction, and the fraction decides. The final ``.to(dtype)`` only moves values
    that are already representable, so torch's conversion decides nothing.
    """
    x = values.double()
    bits, min_exponent, _ = FORMATS[dtype]
    _, exponent = torch.frexp(x)  # x = m·2**exponent with 0.5 <= |m| < 1
    step = torch.pow(2.0, ((exponent - 1).clamp_min(min_exponent) - (bits - 1)).double())
    scaled = x / step  # exact: a power-of-two scaling
    low = torch.floor(scaled)
    fraction = scaled - low  # exact
    up = (fraction > 0.5) | ((fraction == 0.5) & (torch.remainder(low, 2) == 1))
    rounded = torch.copysign(((low + up.double()) * step).abs(), x)  # a zero keeps x's sign
    inf = torch.full_like(x, math.inf)
    rounded = torch.where(rounded.abs() > torch.finfo(dtype).max, torch.copysign(inf, x), rounded)
    return torch.where(torch.isfinite(x), rounded, x).to(dtype)


def round_fraction(value: Fraction, dtype: torch.dtype) -> float:
    """An exact rational rounded once to ``dtype`` (nearest, ties to even), as a float.

    A zero comes back as +0.0: a rational has no sign of zero.
    """
    bits, min_exponent, max_exponent = FORMATS[dtype]
    if value == 0:
        return 0.0
    magnitude = abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1  # now 2**exponent <= magnitude < 2**(exponent + 1)
    step = Fraction(2) ** (max(exponent, min_exponent) - (bits - 1))
    rounded = round(magnitude / step) * step  # Fraction rounds halves to even
    largest = (2 - Fraction(2) ** (1 - bits)) * Fraction(2) ** max_exponent
    result = math.inf if rounded > largest else float(rounded)
    return result if value > 0 else -result


def exact_expo(sft: float, aligned: float, alpha: Fraction) -> Fraction:
    """θ_aligned + α·(θ_aligned − θ_sft) in exact rational arithmetic, nothing rounded."""
    aligned_q = Fraction(aligned)
    return aligned_q + alpha * (aligned_q - Fraction(sft))


def assert_sample_rounded_once(out, sft, aligned, alpha, count=200, seed=0):
    """``count`` random elements of ``out`` equal their fp64 value rounded once, in Python
    floats and exact rationals only (no torch arithmetic or conversion decides)."""
    import random

    out_values, sft_values, aligned_values = (t.reshape(-1) for t in (out, sft, aligned))
    for i in random.Random(seed).sample(range(out_values.numel()), min(count, out_values.numel())):
        s, a = float(sft_values[i]), float(aligned_values[i])
        expected = round_fraction(Fraction(a + alpha * (a - s)), out.dtype)
        assert float(out_values[i]) == expected, (i, s, a, alpha, float(out_values[i]), expected)


def ulp_at(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` numbers at magnitude ``scale`` (fp64 tensor)."""
    info = torch.finfo(dtype)
    mantissa_bits = FORMATS[dtype][0] - 1
    exponent = torch.floor(torch.log2(scale.clamp_min(info.tiny)))
    return torch.pow(2.0, exponent - mantissa_bits)


def fidelity(out, sft, aligned, alpha):
    """(fraction equal to the fp64 result rounded once, worst error in ulps).

    The ulp is the output dtype's at max(|aligned|, |sft|, |exact|), as the
    acceptance rule states.
    """
    exact = expo_fp64(sft, aligned, alpha)
    rounded = round_once(exact, out.dtype)
    equal = (out == rounded).double().mean().item()
    scale = torch.maximum(
        torch.maximum(sft.double().abs(), aligned.double().abs()), exact.abs()
    )
    ulps = (out.double() - exact).abs() / ulp_at(scale, out.dtype)
    return equal, ulps.max().item()


def trajectory_fp64(points, steps, alpha, window=None):
    """numpy's least-squares line per element through (steps, points) (the last ``window``),
    evaluated at s* = steps[-1]·(1 + α): fp64, as ``numpy.polyfit`` computes it."""
    import numpy as np

    window = window or len(steps)
    x = np.asarray(steps[-window:], dtype=np.float64)
    y = np.stack([p.double().reshape(-1).numpy() for p in points[-window:]])
    slope, intercept = np.polyfit(x, y, 1)
    return torch.from_numpy(intercept + slope * (steps[-1] * (1 + alpha))).reshape(points[-1].shape)


def exact_trajectory(values, steps, alpha: Fraction) -> Fraction:
    """The least-squares line through (steps, values) at steps[-1]·(1 + α), in exact rationals."""
    n = len(steps)
    ys = [Fraction(v) for v in values]
    mean_s, mean_y = Fraction(sum(steps), n), sum(ys) / n
    slope = (sum((s - mean_s) * (y - mean_y) for s, y in zip(steps, ys))
             / sum((s - mean_s) ** 2 for s in steps))
    return mean_y + slope * (steps[-1] * (1 + alpha) - mean_s)


def near_midpoint(values: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor,
                  tolerance: float = 2.0 ** -36) -> torch.Tensor:
    """Where an fp64 value lies within ``tolerance``·``scale`` of a rounding midpoint of
    ``dtype``: near enough that the fp64 roundings of how it was computed (relative to the
    inputs' magnitude ``scale``) could put it on either side."""
    x = values.double()
    bits, min_exponent, _ = FORMATS[dtype]
    _, exponent = torch.frexp(x)
    step = torch.pow(2.0, ((exponent - 1).clamp_min(min_exponent) - (bits - 1)).double())
    scaled = x / step
    return ((scaled - torch.floor(scaled)) - 0.5).abs() * step <= tolerance * scale.double()


def trajectory_reference(points, steps, alpha, dtype, window=None):
    """Each element's least-squares fit rounded once to ``dtype``: numpy's fp64 fit decides,
    except where it lies within a few fp64 roundings of a midpoint (exact ties of the fit,
    which numpy's fp64 misses by an ulp either way): there exact rationals decide, with α
    as written in decimal (0.3 is 3/10), as expo's fp64 steps land on its ties."""
    window = window or len(steps)
    fitted = trajectory_fp64(points, steps, alpha, window)
    rounded = round_once(fitted, dtype).reshape(-1)
    flat = [p.reshape(-1) for p in points[-window:]]
    scale = torch.stack([p.double().abs() for p in flat]).amax(0)
    undecided = near_midpoint(fitted.reshape(-1), dtype, scale).nonzero().reshape(-1).tolist()
    exact_alpha = Fraction(repr(alpha))
    for i in undecided:
        value = exact_trajectory([float(p[i]) for p in flat], list(steps[-window:]), exact_alpha)
        rounded[i] = round_fraction(value, dtype)
    return rounded.reshape(points[-1].shape), len(undecided)
