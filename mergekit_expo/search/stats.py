"""Every confidence bound of the search, in one place: intervals of a score, and the paired
bounds the strategies compare candidates with.

- A score's 95% interval: the percentile bootstrap of a mean (seeded, so reruns agree), or
  Wilson's interval of a share of ``n`` items (lm-eval accuracies).
- Paired bounds: every candidate is scored on the same dev rows, so the per-row differences
  of two candidates carry far less noise than their scores. A bound estimates the mean
  difference over *all* ``rows`` of the dev set: after ``n`` of them (drawn without
  replacement) its standard error shrinks by ``√((rows − n)/(rows − 1))``, and is 0 once
  every row is read.
"""

import functools
import math
from statistics import NormalDist, fmean
from typing import Optional, Sequence, Tuple

CONFIDENCE = 0.95  # of every interval and bound the search reports

__all__ = ["CONFIDENCE", "fmean", "stdev", "standard_errors", "z_of", "bootstrap_interval", "wilson_interval",
           "paired", "clearly_below", "most_above"]


def z_of(confidence: float = CONFIDENCE, comparisons: int = 0) -> float:
    """The normal quantile of a two-sided interval (``comparisons`` 0), or of a one-sided bound
    that holds for ``comparisons`` bounds at once (Bonferroni): a two-sided interval is two bounds."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / (comparisons or 2))


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (statistics.stdev without its exact-fraction cost, which a race
    replayed after every unit would pay on every pair)."""
    mean = fmean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def standard_errors(count: float) -> str:
    """``count`` standard errors, as a sentence says it (1 standard error, 3 standard errors)."""
    return f"{count:g} standard error{'' if count == 1 else 's'}"


def bootstrap_interval(values: Sequence[float], *, seed: int = 0, rounds: int = 2000):
    """Percentile bootstrap interval of the mean at :data:`CONFIDENCE` (None, None below 2 values)."""
    if len(values) < 2:
        return None, None
    return _bootstrap(tuple(values), seed, rounds)


@functools.lru_cache(maxsize=256)  # reports after each unit ask again for every candidate's (and guard's)
def _bootstrap(values: Tuple[float, ...], seed: int, rounds: int) -> Tuple[float, float]:
    import torch  # only once a score is reported

    generator = torch.Generator().manual_seed(seed)
    data = torch.tensor(values, dtype=torch.float64)
    picks = torch.randint(len(values), (rounds, len(values)), generator=generator)
    means = data[picks].mean(dim=1).sort().values
    tail = (1 - CONFIDENCE) / 2
    return float(means[int(tail * rounds)]), float(means[int((1 - tail) * rounds) - 1])


def wilson_interval(share: float, n: int):
    """Wilson's score interval of a share of ``n`` items (within [0, 1], not degenerate at 0 or 1)."""
    z = z_of()
    z2 = z * z
    center = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(center - half, 0.0), min(center + half, 1.0)


def paired(better: Sequence[float], worse: Sequence[float], rows: Optional[int],
           scale: Optional[float] = None) -> Tuple[float, float, float]:
    """(mean, standard error, spread) of the paired differences ``better − worse``, the error as an
    estimate of their mean over all ``rows`` (sampled without replacement; None: unknown).

    Two candidates that no row has told apart yet (every difference 0, as when both win
    every preference row so far) get the spread of one row differing by ``scale`` (the range
    of the scores, by default the pair's own): a difference never seen is not yet shown to
    be absent, and the normal approximation says nothing about it. A difference that every
    row shows alike (a constant shift) keeps its spread of 0."""
    differences = [b - w for b, w in zip(better, worse, strict=True)]
    n = len(differences)
    spread = stdev(differences) if n > 1 else 0.0
    if n > 1 and spread == 0 and differences[0] == 0:
        scale = max((*better, *worse)) - min((*better, *worse)) if scale is None else scale
        spread = scale / math.sqrt(n)
    unseen = 1.0 if rows is None else math.sqrt(max(0, rows - n) / (rows - 1)) if rows > 1 else 0.0
    return fmean(differences), spread / math.sqrt(n) * unseen, spread


def clearly_below(better: Sequence[float], worse: Sequence[float], rows: Optional[int], z: float,
                  margin: float = 0.0, scale: Optional[float] = None) -> Optional[str]:
    """Why ``worse`` is below ``better`` by more than ``margin`` with confidence ``z`` (paired
    per-row differences, their mean over all ``rows``), or None when it is not shown."""
    mean, error, _ = paired(better, worse, rows, scale)
    return f"{mean:.4g} ± {z * error:.3g}" if mean - z * error > margin else None


def most_above(candidate: Sequence[float], leader: Sequence[float], rows: int, z: float, tolerance: float,
               scale: Optional[float] = None) -> Tuple[float, float]:
    """How far ``candidate`` can be above ``leader`` on all ``rows`` with confidence ``z``, and the
    pair's tolerance: ``tolerance`` standard errors of the pair's mean paired difference on all
    rows (its per-row spread / √rows, the resolution of a full search's paired comparison of the
    two). Both from the rows ``candidate`` was scored on (the first ``len(candidate)`` of the
    leader's)."""
    mean, error, spread = paired(candidate, leader[:len(candidate)], rows, scale)
    return mean + z * error, tolerance * spread / math.sqrt(rows)
