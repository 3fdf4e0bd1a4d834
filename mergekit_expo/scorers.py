"""Scorers for the α search: each turns (model, tokenizer) into a score with an interval.

- ``preference``: log-likelihood of chosen over rejected answers (no generation).
- ``reward-model``: generate answers, score them with a sequence-classification model.
- ``module:function``: a user callable ``f(model, tokenizer) -> float``.
"""

import csv
import importlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from mergekit_expo.errors import ExpoConfigError, ExpoInputError, ExpoNumericsError


@dataclass(frozen=True)
class Score:
    value: float
    low: Optional[float] = None  # bootstrap 95% interval of the mean, when per-item scores exist
    high: Optional[float] = None
    n: int = 1
    extra: Optional[dict] = None


def bootstrap_interval(values: Sequence[float], *, seed: int = 0, rounds: int = 2000):
    """Percentile bootstrap 95% interval of the mean (seeded, so reruns agree)."""
    if len(values) < 2:
        return None, None
    generator = torch.Generator().manual_seed(seed)
    data = torch.tensor(values, dtype=torch.float64)
    picks = torch.randint(len(values), (rounds, len(values)), generator=generator)
    means = data[picks].mean(dim=1).sort().values
    return float(means[int(0.025 * rounds)]), float(means[int(0.975 * rounds) - 1])


def read_records(path: str, required: Sequence[str]) -> List[dict]:
    """Rows of a JSONL, JSON-list or CSV file (or a saved `datasets` folder)."""
    file = Path(path)
    if not file.exists():
        raise ExpoInputError(f"data file {path} does not exist: check the path")
    if file.is_dir():
        try:
            import datasets
        except ImportError:
            raise ExpoInputError(
                f"{path} is a folder: install `datasets` to read saved datasets, or pass JSONL/CSV"
            ) from None
        rows = [dict(r) for r in datasets.load_from_disk(str(file))]
    elif file.suffix == ".csv":
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif file.suffix == ".json":
        rows = json.loads(file.read_text(encoding="utf-8"))
    else:
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ExpoInputError(f"data file {path} is empty: it needs rows with {', '.join(required)}")
    missing = [key for key in required if key not in rows[0]]
    if missing:
        raise ExpoInputError(
            f"data file {path} lacks column(s) {', '.join(missing)}: each row needs "
            f"{', '.join(required)}"
        )
    return rows


def prompt_text(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


class PreferenceScorer:
    """Accuracy of log p(chosen | prompt) > log p(rejected | prompt); margin = mean difference."""

    name = "preference"

    def __init__(self, path: str):
        self.rows = read_records(path, ("prompt", "chosen", "rejected"))

    def __call__(self, model, tokenizer, progress: Callable = iter) -> Score:
        margins = []
        for row in progress(self.rows):
            context = prompt_text(tokenizer, row["prompt"])
            chosen = answer_logprob(model, tokenizer, context, row["chosen"])
            rejected = answer_logprob(model, tokenizer, context, row["rejected"])
            margins.append(chosen - rejected)
        wins = [1.0 if m > 0 else 0.0 for m in margins]
        low, high = bootstrap_interval(wins)
        return Score(
            value=sum(wins) / len(wins), low=low, high=high, n=len(wins),
            extra={"mean_margin": sum(margins) / len(margins)},
        )


def answer_logprob(model, tokenizer, context: str, answer: str) -> float:
    """Sum of log-probabilities of the answer's tokens after the context."""
    context_ids = tokenizer(context, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + answer_ids], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits.float()
    logprobs = torch.log_softmax(logits[0, len(context_ids) - 1 : -1], dim=-1)
    return float(logprobs.gather(1, ids[0, len(context_ids):, None]).sum())


class RewardModelScorer:
    """Mean reward of generated answers under a local sequence-classification model."""

    name = "reward-model"

    def __init__(self, path: str, reward_model: str, *, max_new_tokens: int = 64,
                 sample: bool = False, seed: int = 0, device: str = "cpu",
                 trust_remote_code: bool = False):
        import transformers

        self.prompts = [r["prompt"] for r in read_records(path, ("prompt",))]
        self.max_new_tokens, self.sample, self.seed = max_new_tokens, sample, seed
        config_file = Path(reward_model) / "config.json"
        if not config_file.is_file():
            raise ExpoInputError(f"reward model {reward_model} is not a model folder (no config.json)")
        architectures = json.loads(config_file.read_text()).get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ExpoInputError(
                f"reward model {reward_model} is {architectures[0] if architectures else 'untyped'}, "
                "not a sequence classifier: pass an AutoModelForSequenceClassification checkpoint"
            )
        self.reward = transformers.AutoModelForSequenceClassification.from_pretrained(
            reward_model, trust_remote_code=trust_remote_code).to(device).eval()
        self.reward_tokenizer = transformers.AutoTokenizer.from_pretrained(
            reward_model, trust_remote_code=trust_remote_code)

    def __call__(self, model, tokenizer, progress: Callable = iter) -> Score:
        rewards = []
        for index, prompt in enumerate(progress(self.prompts)):
            answer = generate_answer(model, tokenizer, prompt, self.max_new_tokens,
                                     self.sample, self.seed + index)
            rewards.append(reward_of(self.reward, self.reward_tokenizer, prompt, answer))
        low, high = bootstrap_interval(rewards)
        return Score(value=sum(rewards) / len(rewards), low=low, high=high, n=len(rewards))


def generate_answer(model, tokenizer, prompt, max_new_tokens, sample, seed) -> str:
    inputs = tokenizer(prompt_text(tokenizer, prompt), return_tensors="pt").to(model.device)
    options = dict(max_new_tokens=max_new_tokens, do_sample=sample,
                   pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if sample:
        torch.manual_seed(seed)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        output = model.generate(**inputs, **options)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def reward_of(reward_model, tokenizer, prompt: str, answer: str) -> float:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            tokenize=False)
    else:
        text = f"{prompt} {answer}"
    inputs = tokenizer(text, return_tensors="pt").to(reward_model.device)
    with torch.no_grad():
        return float(reward_model(**inputs).logits[0, 0])


class CallableScorer:
    """A user function ``module:function`` taking (model, tokenizer) and returning a float."""

    def __init__(self, target: str):
        module_name, _, function_name = target.partition(":")
        if not module_name or not function_name:
            raise ExpoConfigError(f"scorer {target!r} must look like module:function")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # like uvicorn: the user's own module, from cwd
        try:
            self.function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise ExpoConfigError(f"cannot load scorer {target}: {error}") from None
        self.name = target

    def __call__(self, model, tokenizer, progress: Callable = iter) -> Score:
        value = float(self.function(model, tokenizer))
        if not math.isfinite(value):
            raise ExpoNumericsError(f"scorer {self.name} returned {value}: it must return a finite float")
        return Score(value=value)

