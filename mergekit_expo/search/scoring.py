"""What a scorer of the α search is: the Score it returns, the interface every scorer
implements (talking to the :class:`~.engine.Engine` interface only), and :func:`make_scorer`,
which makes the one a --scorer value names."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional

from mergekit_expo.search.registry import SCORERS


@dataclass(frozen=True)
class Score:
    value: float
    low: Optional[float] = None  # 95% interval of the value, where the scorer can tell
    high: Optional[float] = None
    n: int = 1
    extra: Optional[dict] = None
    # Per scored row, for answers/<candidate>.jsonl: prompt, answer(s), score.
    rows: Optional[List[dict]] = None
    # Per scored row, aligned with the ``rows`` it was asked for (racing): the row's part of
    # the score, so that the mean of ``values`` is the score on those rows.
    values: Optional[List[float]] = None


class Scorer(ABC):
    """Turns the model an engine holds now (some α) into a :class:`Score`, higher is better."""

    #: the --scorer value it was made from; results and model cards name it so
    name: str
    #: what its registry entry says it can do (make_scorer sets them)
    traits: FrozenSet[str] = frozenset()

    @classmethod
    @abstractmethod
    def from_options(cls, spec: str, **options) -> "Scorer":
        """The scorer ``spec`` names, from :func:`make_scorer`'s options (one line if one is missing)."""

    @abstractmethod
    def __call__(self, engine, progress: Optional[Callable] = None, *,
                 rows: Optional[List[int]] = None) -> Score:
        """``progress(total)``: a tqdm-like bar for the engine's batches. ``rows``: score only
        these dev rows (indices below :meth:`race_rows`), with one entry of ``values`` per row."""

    def race_rows(self, engine) -> Optional[int]:
        """How many dev rows this scorer scores by index (``--race``); None: it cannot race."""
        return None

    def race_refusal(self) -> Optional[str]:
        """Why ``--race`` cannot use this scorer and what to do, or None when it can (asked
        before any model is loaded)."""
        return (f"{self.name}: it scores its whole dev set at once; racing needs a scorer that scores "
                "dev rows by index (preference, reward-model, lm-eval, or a function with `rows`)")

    def settings(self) -> dict:
        """What else makes two searches with it the same; {} adds nothing to results.json's settings."""
        return {}

    @classmethod
    def card_words(cls, name: str, settings: dict, details: Optional[dict]) -> str:
        """What the model card says it measured (``settings``: the search's, ``details``: its own)."""
        return f"`{name}`"


def make_scorer(spec: str, **options) -> Scorer:
    """The scorer ``spec`` names (:data:`~.registry.SCORERS`), from the search's options."""
    entry = SCORERS.get(spec)
    scorer = entry.load().from_options(spec, **options)
    scorer.traits = entry.traits
    return scorer
