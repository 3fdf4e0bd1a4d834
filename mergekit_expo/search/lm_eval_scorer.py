"""The ``lm-eval:TASK[,TASK…]`` scorer: EleutherAI's lm-evaluation-harness at every α.

lm-eval's own HF wrapper is put around the search's in-place model and tokenizer, and
each α is scored by lm-eval's ``simple_evaluate``: the same numbers ``lm_eval`` gives
for the merged checkpoint, without writing or loading one per α.
"""

import difflib
import functools
import itertools
import math
import os
from typing import Callable, Dict, List, Optional

from mergekit_expo.compat.lm_eval import dataset_of, filter_names, import_lm_eval, quiet_lm_eval
from mergekit_expo.errors import ExpoConfigError, ExpoInputError, first_line
from mergekit_expo.search.scoring import Score, Scorer
from mergekit_expo.search.stats import wilson_interval, z_of

LM_EVAL = "lm-eval:"  # lm-eval:TASK[,TASK...]
NO_TRANSFORMERS = ("the lm-eval scorer wraps the engine's transformers model, and this engine has none: "
                   "use an engine that holds one")
# Metrics that are a share of items scored 0 or 1 (their intervals lie within [0, 1]).
SHARES = ("acc", "acc_norm", "exact_match")


class LmEvalScorer(Scorer):
    """Mean of each task's chosen metric (its first one unless --metric says otherwise)."""

    @classmethod
    def from_options(cls, spec: str, *, batch_size=None, lm_eval_options=None, **_) -> "LmEvalScorer":
        return cls(spec, batch_size=batch_size, **(lm_eval_options or {}))

    def __init__(self, spec: str, *, tasks_path: Optional[str] = None, limit: Optional[int] = None,
                 num_fewshot: Optional[int] = None, metric: Optional[str] = None,
                 batch_size: Optional[int] = None):
        names = [name.strip() for name in spec[len(LM_EVAL):].split(",") if name.strip()]
        if not names:
            raise ExpoConfigError(f"scorer {spec!r} names no task: use e.g. lm-eval:arc_easy")
        import_lm_eval()
        quiet_lm_eval()
        self.task_manager = _task_manager(tasks_path)
        for name in names:
            _check_known(name, self.task_manager, tasks_path)
        self.tasks = {name: self._load(name) for name in names}
        self.metrics = {name: _metric_key(name, task, metric) for name, task in self.tasks.items()}
        # Each task's metric with the sign that makes higher better: the search maximizes.
        self.signs = {name: 1.0 if _higher_is_better(task, self.metrics[name]) else -1.0
                      for name, task in self.tasks.items()}
        self.limit, self.num_fewshot, self.batch_size = limit, num_fewshot, batch_size
        self.tasks_path = tasks_path and os.path.abspath(tasks_path)
        self.name = spec
        self._wrapper = None

    def _load(self, name: str):
        try:
            loaded = self.task_manager.load([name])
        except (ConnectionError, OSError) as error:
            dataset = dataset_of(self.task_manager, name)
            raise ExpoInputError(
                f"task {name} cannot load its dataset{dataset}: {first_line(error)}; "
                "download it once with the Hub reachable, or point the task at local files"
            ) from None
        if name in loaded["groups"]:
            group = loaded["groups"][name]
            if not group.has_aggregation:
                members = ", ".join(sorted(loaded["tasks"])[:3])
                raise ExpoConfigError(
                    f"{name} groups tasks without a score of its own: name its tasks instead "
                    f"(e.g. lm-eval:{members}); their scores are averaged")
            return group
        return next(iter(loaded["tasks"].values()))

    @classmethod
    def card_words(cls, name: str, settings: dict, details) -> str:
        details = details or {}
        metrics = details.get("metrics") or {}
        tasks = ", ".join(f"{task} ({metric})" for task, metric in metrics.items()) or name[len(LM_EVAL):]
        extra = []
        if details.get("limit"):
            extra.append(f"first {details['limit']} examples per task")
        if details.get("num_fewshot") is not None:
            extra.append(f"{details['num_fewshot']}-shot")
        more = f", {', '.join(extra)}" if extra else ""
        return (f"`{name}`: lm-evaluation-harness, mean of task metric {tasks}{more} "
                "(95% interval from lm-eval's standard error)")

    def settings(self) -> dict:
        return {"tasks": list(self.tasks), "tasks_path": self.tasks_path, "metrics": self.metrics,
                "limit": self.limit, "num_fewshot": self.num_fewshot}

    def wrapper(self, engine):
        """lm-eval's HFLM around the engine's model: its weights change in place per α."""
        model = engine.transformers_model()
        if model is None:
            raise ExpoConfigError(NO_TRANSFORMERS)
        if self._wrapper is None:
            from lm_eval.models.huggingface import HFLM

            batch = self.batch_size or ("auto" if str(model.device).startswith("cuda") else 8)
            self._wrapper = HFLM(pretrained=model, tokenizer=engine.tokenizer, batch_size=batch)
        return self._wrapper

    def evaluate(self, engine, tasks: list, **options) -> dict:
        """lm-eval's results dict on ``tasks`` for the model as the engine holds it now."""
        from lm_eval import simple_evaluate

        return simple_evaluate(model=self.wrapper(engine), tasks=tasks, task_manager=self.task_manager,
                               num_fewshot=self.num_fewshot, **options)

    # -- racing: rows are the documents of every task, one task after the other --------------
    def race_refusal(self) -> Optional[str]:
        for name, task in self.tasks.items():
            if hasattr(task, "aggregate_metric_list"):
                return (f"{self.name}: {name} is a group, whose score is not a mean over documents: "
                        "name its tasks instead to race")
            aggregation = task.aggregation().get(self.metrics[name].partition(",")[0])
            if getattr(aggregation, "__name__", None) != "mean":
                return (f"{self.name}: {name}'s {_shown_metric(self.metrics[name])} is not a mean over "
                        "documents, so a part of them has no comparable score: race with another --metric "
                        "or task")
        return None

    def _documents(self) -> Dict[str, int]:
        """Documents scored per task (--limit applied)."""
        return {name: min(len(task.eval_docs), self.limit or math.inf) for name, task in self.tasks.items()}

    def race_rows(self, engine) -> Optional[int]:
        return None if self.race_refusal() else sum(self._documents().values())

    def _scored_rows(self, engine, rows: List[int]) -> Score:
        """lm-eval on the documents ``rows`` name (lm-eval's ``samples``); each document's metric,
        weighted so that the mean over every row is the mean of the task scores."""
        documents = self._documents()
        starts = dict(zip(documents, itertools.accumulate(documents.values(), initial=0)))
        wanted = {name: sorted(row - starts[name] for row in rows if 0 <= row - starts[name] < count)
                  for name, count in documents.items()}
        samples = self.evaluate(engine, [self.tasks[name] for name in self.tasks if wanted[name]],
                                samples={name: docs for name, docs in wanted.items() if docs},
                                log_samples=True)["samples"]
        by_row = {}
        for name, count in documents.items():
            metric, _, filter_name = self.metrics[name].partition(",")
            weight = self.signs[name] * sum(documents.values()) / (len(documents) * count)
            for sample in samples.get(name, []):
                if sample.get("filter", "none") == filter_name:
                    by_row[starts[name] + int(sample["doc_id"])] = weight * float(sample[metric])
        values = [by_row[row] for row in rows]
        return Score(value=sum(values) / len(values), n=len(values), values=values)

    def __call__(self, engine, progress: Callable = None, *, rows: Optional[List[int]] = None) -> Score:
        if rows is not None:
            return self._scored_rows(engine, list(rows))
        results = self.evaluate(engine, list(self.tasks.values()), limit=self.limit,
                                log_samples=False)["results"]
        values, errors, per_task = [], [], {}
        for name, key in self.metrics.items():
            metric, _, filter_name = key.partition(",")
            value = float(results[name][key])
            stderr = results[name].get(f"{metric}_stderr,{filter_name}")
            values.append(self.signs[name] * value)
            errors.append(float(stderr) if isinstance(stderr, (int, float)) else math.nan)
            per_task[name] = value
        value = sum(values) / len(values)
        samples = {name: int(results[name].get("sample_len", 0) or 0) for name in self.tasks}
        low, high = self._interval(value, errors, samples)
        return Score(value=value, low=low, high=high, n=sum(samples.values()) or 1,
                     extra={f"lm_eval:{name}": per_task[name] for name in self.tasks})

    def _interval(self, value: float, errors: List[float], samples: dict):
        """95% interval: Wilson's for one accuracy-like task (a share of n items, never outside
        [0, 1]); else ±1.96 lm-eval standard errors (several tasks: of their mean, in
        quadrature), clipped to [0, 1] when every metric is such a share."""
        shares = all(self.metrics[name].partition(",")[0] in SHARES and self.signs[name] > 0
                     for name in self.tasks)
        if shares and len(samples) == 1:
            (name, n), = samples.items()
            if n > 0 and not hasattr(self.tasks[name], "aggregate_metric_list"):  # a group: no n
                return wilson_interval(value, n)
        # Tasks are scored on separate examples: their errors add in quadrature.
        stderr = math.sqrt(sum(e * e for e in errors)) / len(errors)
        if math.isnan(stderr):
            return None, None
        z = z_of()
        low, high = value - z * stderr, value + z * stderr
        return (max(low, 0.0), min(high, 1.0)) if shares else (low, high)


@functools.lru_cache(maxsize=None)
def _task_manager(tasks_path: Optional[str]):
    """One index of lm-eval's tasks per process (building it takes seconds): scorer and guard share it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_path)


def _check_known(name: str, manager, tasks_path: Optional[str]) -> None:
    if name in manager.all_tasks:
        return
    close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
    hint = f"closest: {', '.join(close)}" if close else "run `lm_eval ls tasks` for the list"
    where = f" (built-in or in --tasks-path {tasks_path})" if tasks_path else \
        " (pass --tasks-path DIR for your own task YAMLs)"
    raise ExpoConfigError(f"unknown lm-eval task {name!r}{where}: {hint}")


def _reported(task) -> List[str]:
    """Every 'metric,filter' key lm-eval reports for a task or group, primary first."""
    if hasattr(task, "aggregate_metric_list"):  # a group: its aggregate metrics
        return [f"{agg.metric},{filter_name}" for agg in task.aggregate_metric_list
                for filter_name in (agg.filter_list or ["none"])]
    return [f"{metric},{filter_name}" for filter_name in filter_names(task) for metric in task.aggregation()]


def _metric_key(name: str, task, metric: Optional[str]) -> str:
    reported = _reported(task)
    if metric is None:
        return reported[0]
    wanted = metric if "," in metric else next((key for key in reported if key.split(",")[0] == metric),
                                               metric)
    if wanted not in reported:
        names = [_shown_metric(key) for key in reported]
        close = difflib.get_close_matches(metric, names, n=1, cutoff=0.5)
        hint = f" (closest: {close[0]})" if close else ""
        raise ExpoConfigError(
            f"task {name} does not report --metric {metric!r}{hint}: it reports {', '.join(names)}")
    return wanted


def _shown_metric(key: str) -> str:
    """lm-eval's 'acc,none' as the user writes it: 'acc' (the filter only when there is one)."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else key


def _higher_is_better(task, key: str) -> bool:
    if hasattr(task, "aggregate_metric_list"):
        return _higher_is_better(task.get_all_tasks()[0], key)
    return bool(task.higher_is_better().get(key.split(",")[0], True))
