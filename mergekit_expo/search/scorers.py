"""The built-in scorers of the α search (the interface: :mod:`.scoring`).

- ``preference``: log-likelihood of chosen over rejected answers (no generation).
- ``reward-model``: generate answers, score them with a sequence-classification model.
- ``module:function``: a user callable, given what the engine exposes.

``lm-eval:TASK[,TASK…]`` runs lm-evaluation-harness tasks (:mod:`.lm_eval_scorer`).
"""

import logging
import math
import os
import pkgutil
import sys
from typing import Callable, List, Optional

import torch

from mergekit_expo.errors import ExpoConfigError, ExpoInputError, ExpoNumericsError
from mergekit_expo.search.data import read_located, read_records
from mergekit_expo.search.prompts import encode_answer, encode_prompt
from mergekit_expo.search.reward_model import RewardModel
from mergekit_expo.search.sampling import Sampling
from mergekit_expo.search.scoring import Score, Scorer
from mergekit_expo.search.stats import bootstrap_interval

LOG = logging.getLogger("mergekit_expo")


def _fitting(items, lengths, limit: int, what: str, fix: str = "shorten them"):
    """Items whose token length fits the model's context; the rest are skipped, counted."""
    if not limit:
        return list(items), 0
    kept = [item for item, length in zip(items, lengths) if length <= limit]
    skipped = len(items) - len(kept)
    if not kept:
        raise ExpoConfigError(f"every one of the {what} exceeds the model's context of {limit} tokens: {fix}")
    if skipped:
        LOG.warning("%d of %d %s exceed the model's context of %d tokens and are skipped "
                    "(counted as 'skipped' in the results)", skipped, len(items), what, limit)
    return kept, skipped


def _check_answers_differ(path, places: List[str], encoded: list) -> None:
    """A row whose answers are the same tokens scores 0 at every α (a tie is no win). Words the
    tokenizer does not know all become its unknown token, so every row can look alike."""
    same = [where for where, (_, chosen, rejected) in zip(places, encoded) if chosen == rejected]
    if len(same) == len(encoded):
        raise ExpoInputError(f"data file {path}: in every row, 'chosen' and 'rejected' encode to the same "
                             "tokens, so no α can score above another: give answers in words the model's "
                             "tokenizer knows")
    if same:
        LOG.warning("data file %s: in %d of %d rows (first: %s) 'chosen' and 'rejected' encode to the "
                    "same tokens: those rows score 0 at every α", path, len(same), len(encoded), same[0])


class _KeptRowsScorer(Scorer):
    """A scorer of data rows, each encoded once; the rows that fit the context can be raced."""

    _encoded: Optional[list] = None  # by _encode, on first use

    def _encode(self, engine) -> None:
        raise NotImplementedError

    def race_rows(self, engine) -> int:
        self._encode(engine)
        return len(self._encoded)

    def race_refusal(self) -> None:
        return None

    def _selected(self, engine, rows: Optional[List[int]]):
        """The rows asked for (all kept rows when None) and their encodings."""
        self._encode(engine)
        indices = list(range(len(self._encoded))) if rows is None else list(rows)
        return indices, [self._encoded[i] for i in indices]

    def _score(self, values: List[float], records: List[dict], rows: Optional[List[int]], **extra) -> Score:
        """The mean of the rows' values with its bootstrap interval (``rows``: those asked for)."""
        low, high = bootstrap_interval(values)
        return Score(value=sum(values) / len(values), low=low, high=high, n=len(values),
                     extra={**extra, "skipped": self._skipped}, rows=records,
                     values=values if rows is not None else None)


class PreferenceScorer(_KeptRowsScorer):
    """Accuracy of log p(chosen | prompt) > log p(rejected | prompt); margin = mean difference."""

    name = "preference"

    @classmethod
    def from_options(cls, spec: str, *, data=None, **_) -> "PreferenceScorer":
        _require(data, "--data (JSONL/CSV with prompt, chosen, rejected)")
        return cls(data)

    def __init__(self, path: str):
        self.path = path
        self.located = read_located(path, ("prompt", "chosen", "rejected"))
        self.rows = [row for _, row in self.located]

    @classmethod
    def card_words(cls, name: str, settings: dict, details) -> str:
        return (f"`{name}`: accuracy, the share of rows in which the model gives the chosen answer a "
                "higher log-likelihood than the rejected one (bootstrap 95% interval)")

    def _encode(self, engine) -> None:
        if self._encoded is not None:  # the same token ids at every α
            return
        tokenizer = engine.tokenizer
        encoded = [(encode_prompt(tokenizer, r["prompt"]), encode_answer(tokenizer, r["chosen"]),
                    encode_answer(tokenizer, r["rejected"])) for r in self.rows]
        for (where, _), (_, chosen, rejected) in zip(self.located, encoded):
            for field, ids in (("chosen", chosen), ("rejected", rejected)):
                if not ids:
                    raise ExpoInputError(f"data file {self.path} {where}: {field!r} encodes to no "
                                         "tokens: give it text the tokenizer knows")
        _check_answers_differ(self.path, [where for where, _ in self.located], encoded)
        lengths = [len(c) + max(len(a), len(b)) for c, a, b in encoded]
        kept, self._skipped = _fitting(list(zip(encoded, self.rows)), lengths, engine.context_length,
                                       "preference rows")
        self._encoded = [item for item, _ in kept]
        self._kept_rows = [row for _, row in kept]

    def __call__(self, engine, progress: Callable = None, *, rows: Optional[List[int]] = None) -> Score:
        indices, encoded = self._selected(engine, rows)
        contexts = [c for c, _, _ in encoded for _ in (0, 1)]
        answers = [answer for _, chosen, rejected in encoded for answer in (chosen, rejected)]
        totals = engine.answer_logprobs(contexts, answers, progress=progress)
        margins = [totals[i] - totals[i + 1] for i in range(0, len(totals), 2)]
        wins = [1.0 if m > 0 else 0.0 for m in margins]
        kept = [self._kept_rows[i] for i in indices]
        records = [{"row": index, "prompt": row["prompt"], "chosen": row["chosen"],
                    "rejected": row["rejected"], "logp_chosen": totals[2 * i],
                    "logp_rejected": totals[2 * i + 1], "score": win}
                   for i, (index, row, win) in enumerate(zip(indices, kept, wins))]
        return self._score(wins, records, rows, mean_margin=sum(margins) / len(margins))


class RewardModelScorer(_KeptRowsScorer):
    """Mean reward of generated answers under a local sequence-classification model."""

    name = "reward-model"

    @classmethod
    def from_options(cls, spec: str, *, data=None, reward_model=None, sampling=None, device="cpu",
                     batch_size=None, trust_remote_code=False, **_) -> "RewardModelScorer":
        _require(data, "--data (JSONL/CSV with a prompt column)")
        _require(reward_model, "--reward-model (a sequence-classification model folder or Hub id)")
        read_records(data, ("prompt",))  # every row checked before the reward model loads
        model = RewardModel(reward_model, device=device, batch_size=batch_size,
                            trust_remote_code=trust_remote_code)
        return cls(data, model, sampling)

    def __init__(self, path: str, reward_model, sampling: Sampling):
        self.prompts = [r["prompt"] for r in read_records(path, ("prompt",))]
        self.reward = reward_model
        self.sampling = sampling

    @classmethod
    def card_words(cls, name: str, settings: dict, details) -> str:
        sampling = settings.get("sampling") or {}
        how = "greedy"
        if sampling.get("sample"):
            how = (f"sampled at temperature {sampling.get('temperature'):g}, "
                   f"top-p {sampling.get('top_p'):g}, top-k {sampling.get('top_k')}, "
                   f"seed {sampling.get('seed')}")
        reward = settings.get("reward_model") or "a reward model"
        shown = os.path.basename(reward.rstrip("/")) if os.path.isabs(reward) else reward
        return (f"`{name}`: mean reward of the model's answers ({how}, up to "
                f"{sampling.get('max_new_tokens', '?')} new tokens) under `{shown}` (bootstrap 95% interval)")

    def _encode(self, engine) -> None:
        if self._encoded is None:
            encoded = [(prompt, encode_prompt(engine.tokenizer, prompt)) for prompt in self.prompts]
            lengths = [len(ids) + self.sampling.max_new_tokens for _, ids in encoded]
            self._encoded, self._skipped = _fitting(encoded, lengths, engine.context_length, "prompts",
                                                    "shorten them or lower --max-new-tokens")

    def __call__(self, engine, progress: Callable = None, *, rows: Optional[List[int]] = None) -> Score:
        indices, encoded = self._selected(engine, rows)
        answers = engine.generate([ids for _, ids in encoded], self.sampling, progress=progress)
        sequences = [self.reward.encode(prompt, answer) for (prompt, _), answer in zip(encoded, answers)]
        rewards = self.reward.scores(sequences)
        records = [{"row": index, "prompt": prompt, "answer": answer, "score": reward}
                   for index, (prompt, _), answer, reward in zip(indices, encoded, answers, rewards)]
        return self._score(rewards, records, rows)


class CallableScorer(Scorer):
    """A user function ``module:function``; it receives ``engine.callable_arguments()``:
    (model, tokenizer) with the transformers engine, (llm, tokenizer) with vLLM."""

    @classmethod
    def from_options(cls, spec: str, **_) -> "CallableScorer":
        return cls(spec)

    def __init__(self, target: str):
        module_name, _, function_name = target.partition(":")
        if not module_name or not function_name:
            raise ExpoConfigError(f"scorer {target!r} must look like module:function")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # like uvicorn: the user's own module, from cwd
        try:
            self.function = pkgutil.resolve_name(target)
        except ModuleNotFoundError as error:
            if error.name != module_name.split(".")[0] and error.name != module_name:
                raise ExpoConfigError(f"scorer {target}: importing {module_name} needs {error.name}, "
                                      f"which is not installed: pip install the package that provides "
                                      "it") from None
            raise ExpoConfigError(f"scorer {target}: there is no module {module_name} here: run from the "
                                  f"folder that holds {module_name.replace('.', '/')}.py, or add its folder "
                                  "to PYTHONPATH") from None
        except AttributeError:
            raise ExpoConfigError(f"scorer {target}: module {module_name} has no {function_name}: check "
                                  "the function's name") from None
        except ImportError as error:
            raise ExpoConfigError(f"scorer {target}: importing {module_name} failed: {error}") from None
        self.name = target

    @classmethod
    def card_words(cls, name: str, settings: dict, details) -> str:
        return f"`{name}`: the value this user function returns"

    @property
    def declared_rows(self):
        """The function's ``rows`` attribute: how many dev rows it scores by index."""
        return getattr(self.function, "rows", None)

    def race_rows(self, engine) -> Optional[int]:
        rows = self.declared_rows
        if rows is None:
            return None
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ExpoConfigError(f"scorer {self.name} has rows = {_brief(rows)}: it must be how many dev "
                                  "rows the function scores, a whole number of at least 1")
        return rows

    def race_refusal(self) -> Optional[str]:
        if self.declared_rows is not None:
            return None
        return (f"{self.name}: it has no `rows` attribute, so it cannot score dev rows by index: set "
                f"{self.name.partition(':')[2]}.rows = N (its dev rows) and accept rows=[i, ...], "
                "returning one float per row (docs/search.md, Racing)")

    def __call__(self, engine, progress: Callable = None, *, rows: Optional[List[int]] = None) -> Score:
        if rows is not None:
            return self._rows(engine, list(rows))
        if self.declared_rows is not None:  # a per-row function: a full search asks for every row
            score = self._rows(engine, list(range(self.race_rows(engine))))
            low, high = bootstrap_interval(score.values)
            return Score(value=score.value, low=low, high=high, n=score.n)
        with torch.no_grad():  # scoring needs no gradients (and torch warns about them)
            returned = self.function(*engine.callable_arguments())
        return Score(value=self._number(returned, "it must return a float (higher is better)"))

    def _returned(self, returned) -> str:
        return f"scorer {self.name} returned {type(returned).__name__} {_brief(returned)}"

    def _number(self, returned, must: str) -> float:
        if isinstance(returned, (str, bytes)) or not hasattr(returned, "__float__"):
            raise ExpoConfigError(f"{self._returned(returned)}: {must}")
        try:
            value = float(returned)
        except (TypeError, ValueError, RuntimeError):  # a tensor of several elements, for one
            raise ExpoConfigError(f"{self._returned(returned)}, which is not one number: {must}") from None
        if not math.isfinite(value):
            raise ExpoNumericsError(f"scorer {self.name} returned {value}: it must return a finite float")
        return value

    def _rows(self, engine, rows: List[int]) -> Score:
        """``function(..., rows=[i, ...])``: one float per row, higher is better."""
        with torch.no_grad():
            returned = self.function(*engine.callable_arguments(), rows=rows)
        must = f"called with rows=[...], it must return one float per row ({len(rows)})"
        try:
            items = list(returned)
        except TypeError:
            items = None
        if items is None or isinstance(returned, (str, bytes)) or len(items) != len(rows):
            raise ExpoConfigError(f"{self._returned(returned)}: {must}")
        values = [self._number(item, must) for item in items]
        return Score(value=sum(values) / len(values), n=len(values), values=values)


def _brief(value) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def _require(value, what):
    if not value:
        raise ExpoConfigError(f"this scorer needs {what}")
