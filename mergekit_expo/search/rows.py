"""The search's one typed row, :class:`AlphaResult`, and the rules read from rows.

A row is one scored unit of work (a candidate on the whole dev set, or on blocks of its rows)
as the study stores it, built by :mod:`.evaluation`; or one candidate as every report shows it
(results.json/csv, the plot, the summary, the model card), built by :func:`candidate_row` from
its units. The pick is the best-scoring candidate among those the strategy kept and the guard
allows (:func:`best`): one rule for every strategy.
"""

from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple

from mergekit_expo.search.stats import bootstrap_interval, fmean

#: a unit's own fields: its rows and their scores, which a candidate's row does not repeat
UNIT_FIELDS = ("block", "rows", "values", "guard_rows", "guard_values", "race_rows", "guard_race_rows",
               "stopped")


@dataclass
class AlphaResult:
    alpha: Optional[float]  # the candidate's α when it is one number
    score: float  # mean over ``rows``, or the scorer's score of the whole dev set
    low: Optional[float]  # 95% interval
    high: Optional[float]
    n: int  # rows scored
    seconds: float  # weight update plus scoring
    extra: Optional[dict] = None
    update_seconds: Optional[float] = None  # setting the weights in place alone
    guard: Optional[float] = None  # the --guard scorer's score
    guard_low: Optional[float] = None
    guard_high: Optional[float] = None
    alphas: Optional[Dict[str, float]] = None  # the candidate's coordinates ({"alpha": α} for scalar)
    candidate: Optional[str] = None  # its name: answers/<candidate>.jsonl
    trial: Optional[int] = None  # its (first) trial in the study
    dropped_in: Optional[int] = None  # the round (a sampled race: the block) it was dropped in
    retired_in: Optional[int] = None  # the round it was last shown within the tolerance
    pick_score: Optional[float] = None  # a race's leader's mean on this candidate's rows
    guard_reference: Optional[float] = None  # α = 0's guard on this candidate's guard rows, if fewer
    # -- a unit's own ------------------------------------------------------------------------
    block: Optional[int] = None  # its first block of dev rows; None: the whole dev set at once
    rows: Optional[List[int]] = None  # the dev rows scored, in the order scored
    values: Optional[List[float]] = None  # one score per row
    guard_rows: Optional[List[int]] = None
    guard_values: Optional[List[float]] = None
    race_rows: Optional[int] = None  # dev rows in all, for replays without an engine
    guard_race_rows: Optional[int] = None
    stopped: Optional[str] = None  # why the strategy stopped it before its last block

    @classmethod
    def stored(cls, row: dict, trial: Optional[int] = None) -> "AlphaResult":
        """From the study or results.json, also an earlier version's (a sampled race's ``dropped_why``)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in row.items() if key in known}
        values.setdefault("stopped", row.get("dropped_why"))
        return cls(**values) if trial is None else cls(**dict(values, trial=trial))

    def record(self) -> dict:
        """As stored: a unit's fields only where it has them."""
        return {key: value for key, value in asdict(self).items()
                if key not in UNIT_FIELDS or value is not None}

    @property
    def by_row(self) -> Dict[int, float]:
        return dict(zip(self.rows or [], self.values or []))

    @property
    def guard_by_row(self) -> Dict[int, float]:
        return dict(zip(self.guard_rows or [], self.guard_values or []))

    @property
    def coordinates(self) -> Dict[str, float]:
        return dict(self.alphas) if self.alphas else {"alpha": self.alpha}

    @property
    def key(self) -> str:
        return self.candidate or f"alpha={self.alpha:g}"

    @property
    def label(self) -> str:
        """``0.3`` for one α, ``attention=0.2 mlp=0.5 other=0.1`` for a vector."""
        coordinates = self.coordinates
        if list(coordinates) == ["alpha"]:
            return f"{coordinates['alpha']:g}"
        return " ".join(f"{name}={value:.3g}" for name, value in coordinates.items())

    @property
    def is_reference(self) -> bool:
        return all(value == 0 for value in self.coordinates.values())

    @property
    def kept(self) -> bool:
        """Whether the strategy kept it to the end (a race's survivors)."""
        return self.dropped_in is None and self.retired_in is None


def candidate_row(units: Sequence[AlphaResult], *, dropped_in: Optional[int] = None,
                  retired_in: Optional[int] = None, pick_score: Optional[float] = None,
                  reference: Sequence[AlphaResult] = ()) -> AlphaResult:
    """A candidate's row from its scored units: the scorer's own score of the whole dev set, or
    the mean of its per-row scores over every block it was scored on (bootstrap interval).
    ``reference``: α = 0's units, for its guard on this candidate's guard rows."""
    units = sorted(units, key=lambda unit: unit.block or 0)
    first = units[0]
    verdict = dict(dropped_in=dropped_in, retired_in=retired_in, pick_score=pick_score,
                   guard_reference=_guard_on_same_rows(units, reference))
    common = dict(alpha=first.alpha, alphas=first.alphas, candidate=first.candidate,
                  trial=min((unit.trial for unit in units if unit.trial is not None), default=None),
                  seconds=sum(unit.seconds for unit in units),
                  update_seconds=sum(unit.update_seconds or 0.0 for unit in units) if len(units) > 1
                  else first.update_seconds)
    if len(units) == 1 and first.rows is None:
        return AlphaResult(score=first.score, low=first.low, high=first.high, n=first.n, extra=first.extra,
                           guard=first.guard, guard_low=first.guard_low, guard_high=first.guard_high,
                           **common, **verdict)
    values = [value for unit in units for value in unit.values]
    guards = [value for unit in units for value in (unit.guard_values or [])]
    low, high = bootstrap_interval(values)
    guard_low, guard_high = bootstrap_interval(guards)  # (None, None) without guard values
    return AlphaResult(score=fmean(values), low=low, high=high, n=len(values),
                       extra=merged_extras([(unit.extra, unit.n) for unit in units]),
                       guard=fmean(guards) if guards else None, guard_low=guard_low, guard_high=guard_high,
                       **common, **verdict)


def _guard_on_same_rows(units: Sequence[AlphaResult], reference: Sequence[AlphaResult]) -> Optional[float]:
    """α = 0's guard mean on the guard rows ``units`` read, where they are fewer than α = 0's (a
    raced candidate stopped early): its guard is compared with that, row for row, not with α = 0's
    mean on rows it never read. None where both read the same rows."""
    own = [row for unit in units for row in (unit.guard_rows or [])]
    theirs = {row: value for unit in reference for row, value in unit.guard_by_row.items()}
    if not own or len(own) >= len(theirs) or any(row not in theirs for row in own):
        return None
    return fmean([theirs[row] for row in own])


def merged_extras(parts: Sequence[Tuple[Optional[dict], int]]) -> Optional[dict]:
    """The details of parts scored on ``n`` rows each: row-weighted means (counts such as
    ``skipped`` as the largest, text as the last)."""
    keys = sorted({key for extra, _ in parts for key in (extra or {})})
    merged: Dict[str, object] = {}
    for key in keys:
        given = [(extra[key], n) for extra, n in parts if key in (extra or {})]
        numbers = [(value, n) for value, n in given if isinstance(value, (int, float)) and value is not None]
        if len(given) == 1:
            merged[key] = given[0][0]
        elif key.endswith("skipped"):
            merged[key] = max(value for value, _ in numbers)
        elif numbers and len(numbers) == len(given):
            merged[key] = sum(value * n for value, n in numbers) / sum(n for _, n in numbers)
        else:
            merged[key] = given[-1][0]
    return merged or None


def excluded(rows: Sequence[AlphaResult], max_drop: Optional[float]) -> List[AlphaResult]:
    """Candidates whose guard score fell more than ``max_drop`` below the guard at α = 0, on the
    rows the candidate's guard read (:attr:`AlphaResult.guard_reference`)."""
    baseline = next((row for row in rows if row.is_reference), None)
    if max_drop is None or baseline is None or baseline.guard is None:
        return []
    return [row for row in rows
            if row.guard is not None and row.guard < reference_guard(row, baseline) - max_drop]


def reference_guard(row: AlphaResult, baseline: AlphaResult) -> float:
    """What ``row``'s guard is measured against: α = 0's on the same rows."""
    return baseline.guard if row.guard_reference is None else row.guard_reference


def eligible(rows: Sequence[AlphaResult], max_drop: Optional[float]) -> List[AlphaResult]:
    """The candidates the pick is chosen from: those the strategy kept (each scored, and guarded,
    on every row it read) and the guard allows; where the guard excludes every one it kept, those
    it allows that were scored on the most rows (their means comparable). α = 0 is never
    excluded, so one is always left."""
    out = {row.key for row in excluded(rows, max_drop)}
    allowed = [row for row in rows if row.key not in out]
    kept = [row for row in allowed if row.kept]
    if kept:
        return kept
    most = max(row.n for row in allowed)
    return [row for row in allowed if row.n == most]


def best(rows: Sequence[AlphaResult], max_drop: Optional[float]) -> AlphaResult:
    """Highest score among the :func:`eligible` candidates; ties (common for accuracies) go to
    the larger mean margin."""
    return max(eligible(rows, max_drop),
               key=lambda row: (row.score, (row.extra or {}).get("mean_margin", float("-inf"))))
