"""Every option of ``mergekit-expo search`` as one settings object.

Like mergekit's ``MergeOptions``: the fields are declared once, the click options are
generated from them and shown in ``--help`` in named groups, and the command receives
one :class:`SearchSettings` instead of thirty arguments.
"""

import functools
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import click
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergekit_expo import hub
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.search import racing
from mergekit_expo.search.lm_eval_scorer import UNSUPPORTED_ENGINE, check_spelling
from mergekit_expo.search.race import DEFAULT_TOLERANCE
from mergekit_expo.search.runner import DEFAULT_TRIALS, Plan, fingerprint, parse_alphas, parse_range
from mergekit_expo.search.sampling import PRESETS, Sampling, build_sampling
from mergekit_expo.search.scoring import is_lm_eval

GROUPS = ("Scorer", "lm-eval", "Engine", "Generation", "Space and workers", "Racing", "Output")
DTYPES = ("bfloat16", "float16", "float32")
SAMPLERS = ("grid", "tpe", "cmaes", "random")
# Options that one engine takes; given with the other engine they are an error, never dropped.
ENGINE_OPTIONS = {"hf": ("device", "batch_size"),
                  "vllm": ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")}


def _positive(context, parameter, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


def _option(group: str, default: Any = None, *, flags: Tuple[str, ...] = (), **click_options):
    """A settings field that is also a click option shown under ``group`` (``flags``: its own,
    else ``--field-name``)."""
    return Field(default, json_schema_extra={"group": group, "flags": flags, "click": click_options})


class SearchSettings(BaseModel):
    """What ``mergekit-expo search`` was asked to do (models excepted)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    # -- Scorer ---------------------------------------------------------------------------
    scorer: str = _option("Scorer", "preference", show_default=True,
                          help="preference, reward-model, lm-eval:TASK[,TASK...], or module:function "
                               "returning a float")
    guard: Optional[str] = _option("Scorer", help="A second scorer (any kind, typically lm-eval:TASK) "
                                                  "that must not drop")
    max_drop: Optional[float] = _option("Scorer", type=float,
                                        help="With --guard: exclude candidates whose guard score is more "
                                             "than this below α = 0's")
    data: Optional[str] = _option("Scorer", help="JSONL/CSV (or saved datasets folder) with the prompts or "
                                                 "preference pairs")
    reward_model: Optional[str] = _option("Scorer", help="Sequence-classification model folder or Hub id "
                                                         "(reward-model scorer)")
    # -- lm-eval ----------------------------------------------------------------------------
    tasks_path: Optional[str] = _option("lm-eval", type=click.Path(exists=True, file_okay=False),
                                        help="Folder of your own task YAMLs (lm-eval's include path)")
    limit: Optional[int] = _option("lm-eval", type=int, callback=_positive,
                                   help="Score only the first N examples per task")
    num_fewshot: Optional[int] = _option("lm-eval", type=int,
                                         help="Few-shot examples  [default: each task's]")
    metric: Optional[str] = _option("lm-eval",
                                    help="Metric to score, e.g. acc_norm  [default: each task's first]")
    # -- Engine -----------------------------------------------------------------------------
    engine: str = _option("Engine", "hf", type=click.Choice(("hf", "vllm")), show_default=True,
                          help="hf: transformers, batched; vllm: vLLM with in-place weight reload")
    device: str = _option("Engine", "cpu", show_default=True,
                          help="cpu, cuda, cuda:N or auto (hf engine; with vllm: the reward model's)")
    dtype: Optional[str] = _option("Engine", type=click.Choice(DTYPES),
                                   help="Load and merge in this dtype  [default: checkpoint's]")
    batch_size: Optional[int] = _option("Engine", type=int, callback=_positive,
                                        help="Prompts per batch (hf engine; with vllm: the reward model's)  "
                                             "[default: automatic, halved on out-of-memory]")
    tensor_parallel_size: Optional[int] = _option("Engine", type=int, callback=_positive,
                                                  help="vLLM: GPUs per model  "
                                                       "[default: all visible GPUs; 1 on CPU]")
    gpu_memory_utilization: Optional[float] = _option("Engine", type=float,
                                                      help="vLLM: share of GPU memory it may take")
    max_model_len: Optional[int] = _option("Engine", type=int, callback=_positive,
                                           help="vLLM: context length to reserve")
    trust_remote_code: bool = _option("Engine", False, is_flag=True,
                                      help="Run model code from the checkpoints (danger)")
    # -- Generation -------------------------------------------------------------------------
    preset: Optional[str] = _option("Generation", type=click.Choice(sorted(PRESETS)),
                                    help="paper: the released procedure's sampling (T 0.7, top-k 50, "
                                         "top-p 0.9, penalties 0.1, up to 2048 tokens); options below "
                                         "override it")
    max_new_tokens: Optional[int] = _option("Generation", type=int,
                                            help="Answer length (reward-model scorer)  [default: 64]")
    sample: Optional[bool] = _option("Generation", flags=("--sample/--greedy",),
                                     help="Seeded sampling or greedy decoding  [default: greedy]")
    temperature: Optional[float] = _option("Generation", type=float,
                                           help="Sampling temperature  [default: 1.0]")
    top_p: Optional[float] = _option("Generation", type=float, help="Nucleus sampling mass  [default: 1.0]")
    top_k: Optional[int] = _option("Generation", type=int, help="Top-k cut, 0 = off  [default: 0]")
    seed: int = _option("Generation", 0, type=int, show_default=True,
                        help="Seed of --sample and of the candidate sampler; reruns draw the same")
    # -- Space and workers ------------------------------------------------------------------
    space: str = _option("Space and workers", "scalar", show_default=True,
                         type=click.Choice(("scalar", "module", "depth", "module+depth")),
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
    sampler: Optional[str] = _option("Space and workers", type=click.Choice(SAMPLERS),
                                     help="optuna sampler  [default: grid for scalar, tpe otherwise]")
    storage: Optional[str] = _option("Space and workers", metavar="URL",
                                     help="optuna storage shared by workers: sqlite:///…, postgresql://…, "
                                          "or a journal file (…/study.journal)  [default: study.db in --out]")
    heartbeat: int = _option("Space and workers", 60, type=int, callback=_positive, show_default=True,
                             help="Seconds between a worker's heartbeats; a candidate whose worker missed "
                                  "3 is scored again by another (database storages)")
    # -- Racing -------------------------------------------------------------------------------
    race: bool = _option("Racing", False, is_flag=True,
                         help="Score candidates on blocks of dev rows (in a --seed order), dropping each "
                              "clearly worse than the leader (the --alphas grid) or than the best so far "
                              "(sampled spaces); see docs/search.md")
    race_tolerance: float = _option("Racing", DEFAULT_TOLERANCE, type=float, show_default=True,
                                    help="--space scalar: stop scoring a candidate once it cannot beat the "
                                         "leader by more than this many standard errors of their paired "
                                         "difference on all rows")
    # -- Output -----------------------------------------------------------------------------
    out: str = _option("Output", "./expo-search", show_default=True, type=click.Path(),
                       help="Folder for results.json/csv, answers/, the plot and best.yml; rerunning "
                            "resumes it")
    write_best: Optional[str] = _option("Output", type=click.Path(),
                                        help="Merge the best candidate with mergekit into this folder")
    overwrite: bool = _option("Output", False, is_flag=True,
                              help="Let --write-best replace a model mergekit-expo wrote there, unchanged "
                                   "(never an input)")
    verbose: bool = _option("Output", False, flags=("-v", "--verbose"), is_flag=True,
                            help="Show tracebacks on errors")

    given: FrozenSet[str] = frozenset()  # not an option: those given on the command line, not defaults

    # -- Rules across options, one line each (ExpoError is no ValueError: pydantic passes it on) --
    @model_validator(mode="after")
    def check_space(self) -> "SearchSettings":
        """Options of one space used with another, the range and the sampler."""
        if self.space == "scalar":
            for given, name in ((self.trials, "--trials"), (self.alpha_range, "--alpha-range")):
                if given is not None:
                    raise ExpoConfigError(f"{name} applies to --space module, depth or module+depth; "
                                          "--space scalar scores the --alphas grid: drop it, or choose "
                                          "another --space")
            if self.sampler not in (None, "grid"):
                raise ExpoConfigError(f"--sampler {self.sampler} draws from a range; --space scalar scores "
                                      "the --alphas grid: drop --sampler, or choose --space module, depth "
                                      "or module+depth")
        else:
            for given, name in ((self.alphas, "--alphas"), (self.refine or None, "--refine")):
                if given is not None:
                    raise ExpoConfigError(f"{name} applies to --space scalar; --space {self.space} draws "
                                          "candidates from --alpha-range: use --alpha-range LO,HI and "
                                          "--trials N instead")
            if self.sampler == "grid":
                raise ExpoConfigError(f"--sampler grid is the --alphas grid of --space scalar; --space "
                                      f"{self.space} needs tpe, cmaes or random")
        self.grid, self.bounds  # noqa: B018 (an unreadable --alphas or --alpha-range fails here)
        return self

    @model_validator(mode="after")
    def check_scorer(self) -> "SearchSettings":
        """Scorer options that only make sense together."""
        check_spelling(self.scorer)
        check_spelling(self.guard)
        if (self.guard is None) != (self.max_drop is None):
            given, missing = ("--guard", "--max-drop") if self.guard else ("--max-drop", "--guard")
            raise ExpoConfigError(f"{given} needs {missing}: e.g. --guard lm-eval:arc_easy --max-drop 0.02")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ExpoConfigError("--max-drop must be 0 or more (a drop in the guard's units), "
                                  f"got {self.max_drop}")
        given = [f"--{name.replace('_', '-')}" for name, value in self.lm_eval_options().items()
                 if value is not None]
        if given and not self.uses_lm_eval:
            verb = "applies" if len(given) == 1 else "apply"
            raise ExpoConfigError(f"{', '.join(given)} only {verb} to lm-eval scorers: "
                                  "use --scorer lm-eval:TASK or --guard lm-eval:TASK, or drop them")
        if self.uses_lm_eval and self.engine != "hf":
            raise ExpoConfigError(UNSUPPORTED_ENGINE)
        return self

    @model_validator(mode="after")
    def check_engine(self) -> "SearchSettings":
        """An option of the other engine given, then the sampling's own rules."""
        other = "vllm" if self.engine == "hf" else "hf"
        # with vLLM, --device and --batch-size place and batch the reward model
        if other == "vllm" or "reward-model" not in (self.scorer, self.guard):
            for name in (name for name in ENGINE_OPTIONS[other] if name in self.given):
                raise ExpoConfigError(f"--{name.replace('_', '-')} is an option of --engine {other}, "
                                      f"not of --engine {self.engine}: drop it, or use --engine {other}")
        self.sampling  # noqa: B018
        return self

    # -- What follows from the settings --------------------------------------------------------
    @property
    def uses_lm_eval(self) -> bool:
        return is_lm_eval(self.scorer) or is_lm_eval(self.guard)

    def lm_eval_options(self) -> Dict[str, Any]:
        return dict(tasks_path=self.tasks_path, limit=self.limit, num_fewshot=self.num_fewshot,
                    metric=self.metric)

    @property
    def grid(self) -> Optional[List[float]]:
        """The α values of --space scalar; None for the spaces that draw from --alpha-range."""
        return parse_alphas(self.alphas) if self.space == "scalar" else None

    @property
    def bounds(self) -> Tuple[float, float]:
        return parse_range(self.alpha_range)

    @property
    def sampling(self) -> Sampling:
        return build_sampling(self.preset, seed=self.seed, max_new_tokens=self.max_new_tokens,
                              sample=self.sample, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k)

    def study_settings(self, sft: str, aligned: str) -> dict:
        """What makes two runs the same search (results.json's settings): another value is refused,
        by the --out before any work and by the study itself."""
        reference = hub.model_reference
        settings = {"data": fingerprint(self.data),
                    "reward_model": self.reward_model and reference(self.reward_model),
                    "sampling": self.sampling.settings(), "engine": self.engine, "sft": reference(sft),
                    "aligned": reference(aligned), "dtype": self.dtype, "scorer": self.scorer,
                    "space": self.space}
        if self.guard:
            settings["guard"] = self.guard
        if self.grid is None:
            settings.update(alpha_range=list(self.bounds), sampler=self.sampler or "tpe")
        return dict(settings, **racing.study_settings(self))

    def plan(self, space, resolve: Callable) -> Plan:
        grid = self.grid
        return Plan(space=space, resolve=resolve, grid=grid, refine=self.refine, alpha_range=self.bounds,
                    trials=None if grid is not None else (self.trials or DEFAULT_TRIALS),
                    sampler=self.sampler or ("grid" if grid is not None else "tpe"), seed=self.seed,
                    storage=self.storage, heartbeat=self.heartbeat, race=racing.plan_of(self))

    def engine_options(self, device: str) -> dict:
        """make_engine's options: each engine gets its own only (``device``: the resolved --device)."""
        own = {name: getattr(self, name) for name in ENGINE_OPTIONS[self.engine]}
        own.update({"device": device} if self.engine == "hf" else {"seed": self.seed})
        return dict(own, dtype=self.dtype, trust_remote_code=self.trust_remote_code)


def search_options(command: Callable) -> Callable:
    """Add one click option per :class:`SearchSettings` field; call ``command(settings, ...)``."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in list(kwargs) if name in SearchSettings.model_fields}
        context = click.get_current_context()
        given = {name for name in values if context.get_parameter_source(name) not in
                 (None, click.core.ParameterSource.DEFAULT)}
        return command(*args, settings=SearchSettings(**values, given=given), **kwargs)

    for name, field in reversed(list(SearchSettings.model_fields.items())):
        if field.json_schema_extra is None:
            continue  # not an option
        options, flags = dict(field.json_schema_extra["click"]), field.json_schema_extra["flags"]
        if field.default is not None and "is_flag" not in options:
            options["default"] = field.default
        wrapper = click.option(*(flags or [f"--{name.replace('_', '-')}"]), name, **options)(wrapper)
    return wrapper


class GroupedHelp(click.Command):
    """``--help`` in named sections, as mergekit shows its own options."""

    def format_options(self, ctx, formatter) -> None:
        sections: Dict[str, list] = {group: [] for group in (*GROUPS, "Other")}
        for parameter in self.get_params(ctx):
            record, field = parameter.get_help_record(ctx), SearchSettings.model_fields.get(parameter.name)
            if record is not None:
                sections[field.json_schema_extra["group"] if field else "Other"].append(record)
        for group, records in sections.items():
            if records:
                with formatter.section(f"{group} options"):
                    formatter.write_dl(records)
