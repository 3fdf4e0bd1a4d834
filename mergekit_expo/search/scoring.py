"""What a scorer of the α search is: the Score it returns, the interface every scorer
implements (talking to the :class:`~.engine.Engine` interface only), and :data:`SCORERS`,
which finds one by the --scorer value."""

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, List, Optional

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.registry import load

LM_EVAL = "lm-eval:"  # lm-eval:TASK[,TASK...]
CALLABLE = "module:function"  # any other value with a colon
SCORERS = {"preference": "mergekit_expo.search.scorers:PreferenceScorer",
           "reward-model": "mergekit_expo.search.scorers:RewardModelScorer",
           LM_EVAL: "mergekit_expo.search.lm_eval_scorer:LmEvalScorer",
           CALLABLE: "mergekit_expo.search.scorers:CallableScorer"}


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


def is_lm_eval(scorer: Optional[str]) -> bool:
    return bool(scorer) and scorer.startswith(LM_EVAL)


def make_scorer(scorer: str, *, data, reward_model, sampling, device: str, batch_size,
                trust_remote_code: bool, lm_eval_options: Optional[dict] = None) -> Scorer:
    kind = LM_EVAL if is_lm_eval(scorer) else CALLABLE if ":" in scorer else scorer
    if kind not in SCORERS:
        match = difflib.get_close_matches(scorer, ["preference", "reward-model", LM_EVAL], n=1, cutoff=0.6)
        hint = f"did you mean {match[0]!r}? " if match else ""
        raise ExpoConfigError(f"unknown scorer {scorer!r}: {hint}use preference, reward-model, "
                              "lm-eval:TASK[,TASK...], or module:function")
    return load(SCORERS[kind]).from_options(
        scorer, data=data, reward_model=reward_model, sampling=sampling, device=device, batch_size=batch_size,
        trust_remote_code=trust_remote_code, lm_eval_options=lm_eval_options)
