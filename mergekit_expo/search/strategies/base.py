"""What a selection strategy is: it says which units to score next, from what the study has
stored, and what the scores mean once they are in.

A unit is a candidate on the whole dev set, or on a run of blocks of its rows (a seeded order
of the rows, cut into blocks). The study's loop leases units to workers, scores them, stores
each as a :class:`~mergekit_expo.search.rows.AlphaResult` and asks the strategy again; it knows no
strategy. Every method is a function of what the study stored, so any worker can replay the
strategy and reach the same answer (optuna's shape: the loop never names its pruner).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional, Tuple

from mergekit_expo.search.race import row_blocks
from mergekit_expo.search.rows import AlphaResult
from mergekit_expo.search.trial_roles import GRID, REFERENCE, TrialRole

BLOCK, BLOCKS = "block", "blocks"  # a unit's first block, and how many (stored with its candidate)
ALL = -1  # blocks: every block from the first, each scored only while the strategy goes on


@dataclass(frozen=True)
class Unit:
    """What one trial scores. ``candidate`` None: one the sampler draws."""

    candidate: Optional[Dict[str, float]]
    block: Optional[int] = None  # None: the whole dev set at once
    blocks: int = 1
    role: TrialRole = GRID

    def stored(self) -> dict:
        """The trial's ``candidate`` attribute: the coordinates, and the blocks of a block unit."""
        stored = dict(self.candidate)
        if self.block is not None:
            stored[BLOCK] = self.block
            if self.blocks != 1:
                stored[BLOCKS] = self.blocks
        return stored

    @classmethod
    def of(cls, stored: dict, coordinates: List[str], role: TrialRole) -> "Unit":
        return cls({name: stored[name] for name in coordinates}, stored.get(BLOCK), stored.get(BLOCKS, 1),
                   role)


class DevRows:
    """The dev rows in the ``seed`` order, cut into blocks (the guard's into as many), known once
    the scorers have counted their rows: from a scored unit, else by ``count()``."""

    def __init__(self, seed: int, count: Callable[[], Tuple[int, Optional[int]]]):
        self.seed, self._count, self._counts = seed, count, None

    def counts(self, scored: List[AlphaResult] = ()) -> Tuple[int, Optional[int]]:
        """(score rows, guard rows or None)."""
        if self._counts is None:
            unit = next((unit for unit in scored if unit.race_rows), None)
            self._counts = (unit.race_rows, unit.guard_race_rows) if unit else self._count()
        return self._counts

    def blocks(self, scored: List[AlphaResult] = ()) -> Tuple[List[List[int]], Optional[List[List[int]]]]:
        rows, guard_rows = self.counts(scored)
        blocks = row_blocks(rows, self.seed)
        return blocks, row_blocks(guard_rows, self.seed, count=len(blocks)) if guard_rows else None


@dataclass
class Plan:
    """What to search: the space, its candidates or budget, how they are drawn and which
    strategy picks what to score. A strategy is started with its own copy, into which it
    follows the study's plan."""

    space: object  # space.Space
    resolve: Optional[Callable] = None  # candidate -> {checkpoint tensor: α}; None offline
    grid: Optional[List[float]] = None  # the --alphas grid (--space scalar); None: candidates are drawn
    refine: bool = False
    trials: Optional[int] = None  # candidates to draw (the other spaces)
    alpha_range: Tuple[float, float] = (0.0, 1.0)
    sampler: str = "grid"
    seed: int = 0
    storage: Optional[str] = None
    heartbeat: int = 60
    strategy: str = "full"
    options: Dict[str, object] = field(default_factory=dict)  # the strategy's own (--race-tolerance)
    max_drop: Optional[float] = None
    dev: Optional[DevRows] = None  # the dev rows in blocks, given to the strategy's copy


class Strategy(ABC):
    """Which units to score next, and what the scored ones say."""

    #: its --strategy name, and what a worker's summary calls its unit
    name: ClassVar[str]
    unit_word: ClassVar[str] = "candidate"

    def __init__(self, setup: Plan):
        self.setup = setup  # its own copy of the search's plan

    def plan(self) -> dict:
        """What workers scoring together must agree on (a rerun may change it once they are done).
        The loop reads ``trials``: how many candidates the sampler may draw."""
        if self.setup.grid is None:
            return {"trials": self.setup.trials}
        return {"alphas": self.setup.grid, "refine": self.setup.refine}

    def follow(self, plan: dict) -> "Strategy":
        """The study's plan as it is now: a rerun while no worker scored may have changed it, and
        the workers still running follow. Returns the strategy under it."""
        self.setup.trials = plan.get("trials", self.setup.trials)
        self.setup.refine = plan.get("refine", self.setup.refine)
        race = dict(plan.get("race") or {})
        self.setup.max_drop = race.pop("max_drop", self.setup.max_drop)
        self.setup.options.update(race)
        return self

    @abstractmethod
    def start(self) -> List[Unit]:
        """What a worker enqueues on arrival (the study keeps one live trial per unit)."""

    def next(self, scored: List[AlphaResult]) -> List[Unit]:
        """Further units, asked whenever nothing is waiting; [] when there are none (the search
        ends once nothing runs either)."""
        return []

    def go_on(self, unit: AlphaResult, scored: List[AlphaResult]) -> Optional[str]:
        """Asked between the blocks of a unit scored so far: None to go on, else why it stops."""
        return None

    @abstractmethod
    def report(self, scored: List[AlphaResult]) -> Tuple[List[AlphaResult], Optional[dict]]:
        """One row per candidate scored so far, and the strategy's own record for results.json
        (None for a full search)."""

    def resumed(self, scored: List[AlphaResult]) -> Optional[str]:
        """What a worker says when it finds scores in the study already."""
        count = len(scored)
        return f"resuming: {count} candidate{'s' if count != 1 else ''} already scored" if count else None

    # What reports say of it, read back from its results.json record (defaults: a full search's).
    @classmethod
    def verdict(cls, row: AlphaResult, best: AlphaResult, record: dict) -> str:
        """A candidate's fate in the summary table."""
        return "pick" if row.key == best.key else ""

    @classmethod
    def why_picked(cls, record: dict) -> str:
        return "the best score"

    @classmethod
    def unscored(cls, record: Optional[dict]) -> List[dict]:
        """The candidates of the search it never scored: {"alpha", "candidate", "why"} each."""
        return (record or {}).get("unscored") or []

    @classmethod
    def card_rows_note(cls, row: AlphaResult, record: dict) -> str:
        """Why the card's rows column shows fewer rows for a candidate."""
        return ""

    @classmethod
    def card_sentence(cls, record: dict) -> str:
        return ""

    @classmethod
    def summary_line(cls, record: dict, generating: bool) -> Optional[str]:
        """The line a finished search prints about it."""
        return None

    def sorted_rows(self, rows: List[AlphaResult]) -> List[AlphaResult]:
        return sorted(rows, key=lambda row: row.alpha if self.setup.grid is not None else row.trial)

    def reference(self, **unit) -> Unit:
        """α = 0 everywhere: the aligned model, the baseline and the guard's reference."""
        return Unit(self.setup.space.reference(), role=REFERENCE, **unit)
