"""The rounding reference itself: held to exact rationals, and shown to differ from torch's conversion."""

import math
from fractions import Fraction

import pytest
import torch

from fp64_reference import FORMATS, round_fraction, round_once

NARROW = [torch.bfloat16, torch.float16, torch.float32]


def adversarial_values(dtype, count=600, seed=0):
    """fp64 values on, next to and just off the midpoints of ``dtype``, over its whole range."""
    bits, min_exponent, max_exponent = FORMATS[dtype]
    generator = torch.Generator().manual_seed(seed)
    exponents = torch.randint(min_exponent - bits, max_exponent + 1, (count,), generator=generator)
    significands = torch.randint(1 << (bits - 1), 1 << bits, (count,), generator=generator)
    signs = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
    step = torch.pow(2.0, (exponents.clamp_min(min_exponent) - (bits - 1)).double())
    # below the smallest normal the grid is fixed: a subnormal, or a small multiple of it
    whole = torch.where(exponents < min_exponent, significands % 64, significands).double()
    midpoints = signs * (whole + 0.5) * step
    nudges = [0.0, 2.0 ** -52, -(2.0 ** -52), 2.0 ** -30, -(2.0 ** -30), 2.0 ** -20, 0.25]
    values = torch.cat([midpoints * (1 + nudge) for nudge in nudges] + [signs * whole * step])
    largest = torch.finfo(dtype).max
    threshold = largest + 2.0 ** (max_exponent - bits)  # halfway from the largest to the next power
    special = [0.0, -0.0, 1e-300, -1e-300, 2.0 ** -1074, threshold, -threshold,
               threshold * (1 - 2.0 ** -40), threshold * (1 + 2.0 ** -40), largest, 1e39, -1e300,
               math.inf, -math.inf]
    return torch.cat([values, torch.tensor(special, dtype=torch.float64)])


@pytest.mark.parametrize("dtype", NARROW)
def test_round_once_equals_exact_rational_rounding(dtype):
    values = adversarial_values(dtype)
    got = round_once(values, dtype).double().tolist()
    for value, result in zip(values.tolist(), got):
        if math.isinf(value):
            assert result == value
            continue
        expected = round_fraction(Fraction(value), dtype)
        assert result == expected, (value, result, expected)
        if expected == 0:  # zero keeps the value's sign
            assert math.copysign(1, result) == math.copysign(1, value), value


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torchs_conversion_rounds_twice_and_the_reference_does_not(dtype):
    # Guards the tests: a reference made with torch's fp64 -> bf16/fp16 conversion (two
    # roundings, through fp32) would accept a kernel that rounds twice.
    values = adversarial_values(dtype)
    differ = (values.to(dtype) != round_once(values, dtype)).sum().item()
    assert differ > 100
    # one by hand: 1 + 2**-6 + 2**-8 + 2**-37 is just above a bf16 midpoint (rounds up);
    # through fp32 it first becomes the midpoint itself, then rounds to even (down)
    if dtype == torch.bfloat16:
        value = torch.tensor([1 + 2.0 ** -6 + 2.0 ** -8 + 2.0 ** -37], dtype=torch.float64)
        assert round_once(value, dtype).item() == 1.0234375
        assert value.to(dtype).item() == 1.015625


def test_round_fraction_by_hand():
    assert round_fraction(Fraction(3, 2 ** 134), torch.bfloat16) == 2.0 ** -132  # subnormal tie: even
    assert round_fraction(Fraction(5, 2 ** 134), torch.bfloat16) == 2.0 ** -132
    assert round_fraction(Fraction(65520), torch.float16) == math.inf  # the overflow tie goes to inf
    assert round_fraction(Fraction(65519), torch.float16) == 65504.0
    assert round_fraction(-Fraction(1, 3), torch.float32) == -0.3333333432674408
