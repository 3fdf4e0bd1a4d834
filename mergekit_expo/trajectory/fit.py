"""The fitted point as a fixed linear combination of the checkpoints (the hat matrix's row at s*).

Points (s_i, θ_i): the SFT model at step 0, then each checkpoint at its training step;
the fit uses the last ``window`` of them (n points, mean step s̄, S = Σ (s_i − s̄)²).
Per element, the least-squares line evaluated at s* = s_last·(1 + α) is

    θ(α) = Σ c_i·θ_i,   c_i = p_i + α·q_i
    p_i = 1/n + (s_last − s̄)(s_i − s̄)/S      (the fit at s_last; Σ p_i = 1)
    q_i = s_last·(s_i − s̄)/S                 (its slope times s_last; Σ q_i = 0)

so θ(α) = P + α·D with P = Σ p_i θ_i and D = Σ q_i θ_i. With the SFT model and one
checkpoint, p = (0, 1) and q = (−1, 1): θ = θ_1 + α·(θ_1 − θ_0), which is ExPO.

The coefficients are exact rationals (integer steps). The arithmetic used on tensors
(:class:`Arithmetic`) writes the same point as θ_last + (A + α·B)/m, with integers m,
P_i = −m·p_i, Q_i = −m·q_i and A = Σ P_i·(θ_last − θ_i), B = Σ Q_i·(θ_last − θ_i) over
the window's other points. With bf16 or fp16 inputs and small weights every step before
α·B is exact in fp64, so, as in expo, a result that is exactly a tie of the output dtype
lands on it. With two points this is B = θ_1 − θ_0, m = 1, no A: expo's own operations.
"""

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence, Tuple

from mergekit_expo.errors import ExpoConfigError


@dataclass(frozen=True)
class Arithmetic:
    """θ(α) = θ[last] + (Σ P·(θ[last] − θ[i]) + α·Σ Q·(θ[last] − θ[i])) / denominator."""

    last: int  # index of the last point
    terms: Tuple[Tuple[int, float, float], ...]  # (point index, P, Q): the window's other points
    denominator: float

    @property
    def has_a(self) -> bool:
        """False when the fit at the last step is the last point itself (two points)."""
        return any(p for _, p, _ in self.terms)


@dataclass(frozen=True)
class TrajectoryFit:
    """The least-squares fit through ``steps`` (the SFT model's 0 first), last ``window`` points."""

    steps: Tuple[int, ...]
    window: int

    @property
    def first(self) -> int:
        """Index of the first point the fit uses."""
        return len(self.steps) - self.window

    @property
    def is_expo(self) -> bool:
        """Two points, the SFT model and one checkpoint: exactly expo."""
        return len(self.steps) == 2

    @property
    def p(self) -> Tuple[Fraction, ...]:
        """Per point, the coefficient of the fit at the last step (0 outside the window)."""
        return self._coefficients()[0]

    @property
    def q(self) -> Tuple[Fraction, ...]:
        """Per point, the coefficient of α (0 outside the window)."""
        return self._coefficients()[1]

    def coefficients(self, alpha: float) -> Tuple[float, ...]:
        """c_i = p_i + α·q_i per point, each the exact value rounded once to a float.

        >>> fit_coefficients([0, 100, 200]).coefficients(0.5)
        (-0.6666666666666666, 0.3333333333333333, 1.3333333333333333)
        """
        exact = Fraction(alpha)
        return tuple(float(p + exact * q) for p, q in zip(self.p, self.q))

    @property
    def arithmetic(self) -> Arithmetic:
        """The integer-weight form the tensors are computed in."""
        p, q = self._coefficients()
        last = len(self.steps) - 1
        others = range(self.first, last)
        denominator = math.lcm(*(c.denominator for i in others for c in (p[i], q[i])))
        terms = tuple((i, float(-p[i] * denominator), float(-q[i] * denominator)) for i in others)
        return Arithmetic(last, terms, float(denominator))

    def _coefficients(self) -> Tuple[Tuple[Fraction, ...], Tuple[Fraction, ...]]:
        used = self.steps[self.first:]
        n, last = len(used), used[-1]
        mean = Fraction(sum(used), n)
        spread = sum((s - mean) ** 2 for s in used)
        outside = (Fraction(0),) * self.first
        p = outside + tuple(Fraction(1, n) + (last - mean) * (s - mean) / spread for s in used)
        q = outside + tuple(last * (s - mean) / spread for s in used)
        return p, q


def fit_coefficients(steps: Sequence[int], *, window: Optional[int] = None) -> TrajectoryFit:
    """The fit through points at ``steps`` (0 first: the SFT model), using the last ``window``.

    >>> fit = fit_coefficients([0, 100, 200, 300], window=3)
    >>> fit.p, fit.q   # θ(α) = Σ (p_i + α·q_i)·θ_i
    """
    steps = tuple(steps)
    if len(steps) < 2:
        raise ExpoConfigError(f"a fit needs at least two points (the SFT model and a checkpoint), "
                              f"got {len(steps)}")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
        raise ExpoConfigError(f"steps must be integers, got {list(steps)}")
    if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ExpoConfigError(f"steps must start at 0 (the SFT model) and increase, got {list(steps)}")
    window = len(steps) if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= len(steps):
        raise ExpoConfigError(f"window must be an integer from 2 to {len(steps)} (the points), "
                              f"got {window!r}")
    return TrajectoryFit(steps, window)
