"""Every option of ``mergekit-expo search`` as one settings object.

Like mergekit's ``MergeOptions``: the fields are declared once, the click options are
generated from them and shown in ``--help`` in named groups, and the command receives
one :class:`SearchSettings` instead of thirty arguments.
"""

import functools
from typing import Any, Callable, Dict, Optional

import click
from pydantic import BaseModel, ConfigDict, Field

from mergekit_expo.search.race import DEFAULT_TOLERANCE
from mergekit_expo.search.sampling import PRESETS

GROUPS = ("Scorer", "lm-eval", "Engine", "Generation", "Space and workers", "Racing", "Output")
DTYPES = ("bfloat16", "float16", "float32")
SAMPLERS = ("grid", "tpe", "cmaes", "random")


def _positive(context, parameter, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


def _option(group: str, default: Any = None, *, flags: Optional[str] = None, **click_options):
    """A settings field that is also a click option shown under ``group``."""
    return Field(default, json_schema_extra={"group": group, "flags": flags, "click": click_options})


def _choices(values):
    return click.Choice(values)


class SearchSettings(BaseModel):
    """What ``mergekit-expo search`` was asked to do (models excepted)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    # -- Scorer ---------------------------------------------------------------------------
    scorer: str = _option("Scorer", "preference", show_default=True,
                          help="preference, reward-model, lm-eval:TASK[,TASK...], or module:function "
                               "returning a float")
    guard: Optional[str] = _option("Scorer", help="A second scorer (any kind, typically lm-eval:TASK) "
                                                  "that must not drop")
    max_drop: Optional[float] = _option("Scorer", type=float, help="With --guard: exclude candidates whose "
                                                                   "guard score is more than this below α = 0's")
    data: Optional[str] = _option("Scorer", help="JSONL/CSV (or saved datasets folder) with the prompts or "
                                                 "preference pairs")
    reward_model: Optional[str] = _option("Scorer", help="Sequence-classification model folder or Hub id "
                                                         "(reward-model scorer)")
    # -- lm-eval ----------------------------------------------------------------------------
    tasks_path: Optional[str] = _option("lm-eval", type=click.Path(exists=True, file_okay=False),
                                        help="Folder of your own task YAMLs (lm-eval's include path)")
    limit: Optional[int] = _option("lm-eval", type=int, callback=_positive,
                                   help="Score only the first N examples per task")
    num_fewshot: Optional[int] = _option("lm-eval", type=int, help="Few-shot examples  [default: each task's]")
    metric: Optional[str] = _option("lm-eval", help="Metric to score, e.g. acc_norm  [default: each task's first]")
    # -- Engine -----------------------------------------------------------------------------
    engine: str = _option("Engine", "hf", type=_choices(("hf", "vllm")), show_default=True,
                          help="hf: transformers, batched; vllm: vLLM with in-place weight reload")
    device: str = _option("Engine", "cpu", show_default=True,
                          help="cpu, cuda, cuda:N or auto (hf engine; with vllm: the reward model's)")
    dtype: Optional[str] = _option("Engine", type=_choices(DTYPES),
                                   help="Load and merge in this dtype  [default: checkpoint's]")
    batch_size: Optional[int] = _option("Engine", type=int, callback=_positive,
                                        help="Prompts per batch (hf engine; with vllm: the reward model's)  "
                                             "[default: automatic, halved on out-of-memory]")
    tensor_parallel_size: Optional[int] = _option("Engine", type=int, callback=_positive,
                                                  help="vLLM: GPUs per model  [default: all visible GPUs; 1 on CPU]")
    gpu_memory_utilization: Optional[float] = _option("Engine", type=float,
                                                      help="vLLM: share of GPU memory it may take")
    max_model_len: Optional[int] = _option("Engine", type=int, callback=_positive,
                                           help="vLLM: context length to reserve")
    trust_remote_code: bool = _option("Engine", False, is_flag=True,
                                      help="Run model code from the checkpoints (danger)")
    # -- Generation -------------------------------------------------------------------------
    preset: Optional[str] = _option("Generation", type="presets",
                                    help="paper: the released procedure's sampling (T 0.7, top-k 50, top-p 0.9, "
                                         "penalties 0.1, up to 2048 tokens); options below override it")
    max_new_tokens: Optional[int] = _option("Generation", type=int,
                                            help="Answer length (reward-model scorer)  [default: 64]")
    sample: Optional[bool] = _option("Generation", flags="--sample/--greedy",
                                     help="Seeded sampling or greedy decoding  [default: greedy]")
    temperature: Optional[float] = _option("Generation", type=float, help="Sampling temperature  [default: 1.0]")
    top_p: Optional[float] = _option("Generation", type=float, help="Nucleus sampling mass  [default: 1.0]")
    top_k: Optional[int] = _option("Generation", type=int, help="Top-k cut, 0 = off  [default: 0]")
    seed: int = _option("Generation", 0, type=int, show_default=True,
                        help="Seed of --sample and of the candidate sampler; reruns draw the same")
    # -- Space and workers ------------------------------------------------------------------
    space: str = _option("Space and workers", "scalar", type=_choices(("scalar", "module", "depth", "module+depth")),
                         show_default=True,
                         help="scalar: one α; module: attention, MLP, other; depth: first and last "
                              "layer, interpolated; module+depth: both")
    alphas: Optional[str] = _option("Space and workers",
                                    help="--space scalar: comma-separated α values  [default: 0,0.1,...,0.6]")
    refine: bool = _option("Space and workers", False, is_flag=True,
                           help="--space scalar: also score the midpoints around the best α")
    alpha_range: Optional[str] = _option("Space and workers", metavar="LO,HI",
                                         help="Bounds of every coordinate (other spaces)  [default: 0,1]")
    trials: Optional[int] = _option("Space and workers", type=int, callback=_positive,
                                    help="Sampled candidates besides α = 0, across all workers "
                                         "(other spaces)  [default: 30]")
    sampler: Optional[str] = _option("Space and workers", type=_choices(SAMPLERS),
                                     help="optuna sampler  [default: grid for scalar, tpe otherwise]")
    storage: Optional[str] = _option("Space and workers", metavar="URL",
                                     help="optuna storage shared by workers: sqlite:///…, postgresql://…, "
                                          "or a journal file (…/study.journal)  [default: study.db in --out]")
    heartbeat: int = _option("Space and workers", 60, type=int, callback=_positive, show_default=True,
                             help="Seconds between a worker's heartbeats; a candidate whose worker missed "
                                  "3 is scored again by another (database storages)")
    # -- Racing -------------------------------------------------------------------------------
    race: bool = _option("Racing", False, is_flag=True,
                         help="--space scalar: score the α grid on blocks of dev rows (in a --seed order), "
                              "dropping each α clearly worse than the leader; see docs/search.md")
    race_tolerance: float = _option("Racing", DEFAULT_TOLERANCE, type=float, show_default=True,
                                    help="End the race when the survivors are within this many standard "
                                         "errors of a full-data score of the leader")
    # -- Output -----------------------------------------------------------------------------
    out: str = _option("Output", "./expo-search", flags="--out", show_default=True, type=click.Path(),
                       help="Folder for results.json/csv, answers/, the plot and best.yml; rerunning resumes it")
    write_best: Optional[str] = _option("Output", type=click.Path(),
                                        help="Merge the best candidate with mergekit into this folder")
    overwrite: bool = _option("Output", False, is_flag=True,
                              help="Let --write-best replace a model mergekit-expo wrote there, unchanged "
                                   "(never an input)")
    verbose: bool = _option("Output", False, flags="-v/--verbose", is_flag=True, help="Show tracebacks on errors")

    def lm_eval_options(self) -> Dict[str, Any]:
        return dict(tasks_path=self.tasks_path, limit=self.limit, num_fewshot=self.num_fewshot,
                    metric=self.metric)


def _declarations(name: str, flags: Optional[str]):
    if flags is None:
        return [f"--{name.replace('_', '-')}", name]
    if flags.startswith("-v/"):
        return ["-v", "--verbose", name]
    return [flags, name]


def search_options(command: Callable) -> Callable:
    """Add one click option per :class:`SearchSettings` field; call ``command(settings, ...)``."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in list(kwargs) if name in SearchSettings.model_fields}
        return command(*args, settings=SearchSettings(**values), **kwargs)

    for name, field in reversed(list(SearchSettings.model_fields.items())):
        extra = dict(field.json_schema_extra)
        options = dict(extra["click"])
        if options.get("type") == "presets":
            options["type"] = click.Choice(sorted(PRESETS))
        if field.default is not None and "is_flag" not in options:
            options["default"] = field.default
        wrapper = click.option(*_declarations(name, extra["flags"]), **options)(wrapper)
    return wrapper


def option_group(name: str) -> str:
    return SearchSettings.model_fields[name].json_schema_extra["group"]


class GroupedHelp(click.Command):
    """``--help`` in named sections, as mergekit shows its own options."""

    def format_options(self, ctx, formatter) -> None:
        sections: Dict[str, list] = {group: [] for group in GROUPS}
        other = []
        for parameter in self.get_params(ctx):
            record = parameter.get_help_record(ctx)
            if record is None:
                continue
            if parameter.name in SearchSettings.model_fields:
                sections[option_group(parameter.name)].append(record)
            else:
                other.append(record)
        for group in GROUPS:
            if sections[group]:
                with formatter.section(f"{group} options"):
                    formatter.write_dl(sections[group])
        if other:
            with formatter.section("Other options"):
                formatter.write_dl(other)
