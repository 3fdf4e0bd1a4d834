"""Every option of ``mergekit-expo search`` as one settings object, and every rule about them.

Like mergekit's ``MergeOptions``: the fields are declared once, the click options are
generated from them and shown in ``--help`` in named groups, and the command receives
one :class:`SearchSettings` instead of thirty arguments. Every check of an option is here
(pydantic constraints and validators), before anything is read: the names of scorers,
engines, spaces and strategies, and the options only one of them takes, come from
:mod:`.registry`.
"""

import dataclasses
import difflib
import functools
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mergekit_expo import hub
from mergekit_expo.alpha import checked_alpha, warn_large_grid
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.search.registry import ENGINES, SCORERS, SPACES, STRATEGIES
from mergekit_expo.search.sampling import PRESETS, Sampling
from mergekit_expo.search.strategies.base import Plan
from mergekit_expo.search.strategies.race import DEFAULT_TOLERANCE

GROUPS = ("Trajectory", "Scorer", "lm-eval", "Engine", "Generation", "Space and workers", "Strategy",
          "Output")
DTYPES = ("bfloat16", "float16", "float32")
SAMPLERS = ("grid", "tpe", "cmaes", "random")
DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the paper's range
DEFAULT_TRIALS = 30
AT_LEAST_ONE = dict(ge=1)
GRID_SPACE = SPACES.having("grid")[0].name
_FIRST_DEFAULT, *_OTHER_DEFAULTS = (entry.name for entry in STRATEGIES.having("default"))
DEFAULTS = (f"{_FIRST_DEFAULT} where it fits (an --alphas grid, scorers of dev rows one by one, no "
            f"--refine), else {', else '.join(_OTHER_DEFAULTS)}")


def _option(group: str, default: Any = None, *, flags: Tuple[str, ...] = (), limits: Optional[dict] = None,
            **click_options):
    """A settings field that is also a click option shown under ``group`` (``flags``: its own,
    else ``--field-name``); ``limits``: pydantic's constraints on its value."""
    return Field(default, json_schema_extra={"group": group, "flags": flags, "click": click_options},
                 **(limits or {}))


def _described(registry) -> str:
    return "; ".join(f"{entry.name}: {entry.help}" for entry in registry.entries)


def _one_of(names) -> dict:
    """click's view of an option whose value the settings check: its choices in --help."""
    return dict(metavar=f"[{'|'.join(names)}]")


class SearchSettings(BaseModel):
    """What ``mergekit-expo search`` was asked to do (models excepted)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    # -- Trajectory (several checkpoints of one run) ---------------------------------------
    steps: Optional[str] = _option("Trajectory", metavar="N,N,...",
                                   help="Each checkpoint's training step, in order  [default: what each "
                                        "folder states: trainer_state.json's global_step, or checkpoint-N]")
    window: Optional[int] = _option("Trajectory", type=int, metavar="K",
                                    help="Fit the last K points only (the SFT model is step 0)  "
                                         "[default: all]")
    # -- Scorer ---------------------------------------------------------------------------
    scorer: str = _option("Scorer", SCORERS.default.name, show_default=True,
                          help=f"{SCORERS.listed()} returning a float")
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
    tasks_path: Optional[str] = _option("lm-eval", metavar="DIRECTORY",
                                        help="Folder of your own task YAMLs (lm-eval's include path)")
    limit: Optional[int] = _option("lm-eval", type=int, limits=AT_LEAST_ONE,
                                   help="Score only the first N examples per task")
    num_fewshot: Optional[int] = _option("lm-eval", type=int, limits=dict(ge=0),
                                         help="Few-shot examples  [default: each task's]")
    metric: Optional[str] = _option("lm-eval",
                                    help="Metric to score, e.g. acc_norm  [default: each task's first]")
    # -- Engine -----------------------------------------------------------------------------
    engine: str = _option("Engine", ENGINES.default.name, show_default=True, **_one_of(ENGINES.names()),
                          help=_described(ENGINES))
    device: str = _option("Engine", "cpu", show_default=True,
                          help="cpu, cuda, cuda:N or auto (hf engine; with vllm: the reward model's)")
    dtype: Optional[str] = _option("Engine", **_one_of(DTYPES),
                                   help="Load and merge in this dtype  [default: checkpoint's]")
    batch_size: Optional[int] = _option("Engine", type=int, limits=AT_LEAST_ONE,
                                        help="Prompts per batch (hf engine; with vllm: the reward model's)  "
                                             "[default: automatic, halved on out-of-memory]")
    tensor_parallel_size: Optional[int] = _option("Engine", type=int, limits=AT_LEAST_ONE,
                                                  help="vLLM: GPUs per model  "
                                                       "[default: all visible GPUs; 1 on CPU]")
    gpu_memory_utilization: Optional[float] = _option("Engine", type=float, limits=dict(gt=0, le=1),
                                                      help="vLLM: share of GPU memory it may take")
    max_model_len: Optional[int] = _option("Engine", type=int, limits=AT_LEAST_ONE,
                                           help="vLLM: context length to reserve")
    trust_remote_code: bool = _option("Engine", False, is_flag=True,
                                      help="Run model code from the checkpoints (danger)")
    # -- Generation -------------------------------------------------------------------------
    preset: Optional[str] = _option("Generation", **_one_of(sorted(PRESETS)),
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
                        help="Seed of --sample, of the candidate sampler and of the dev rows' order; "
                             "reruns draw the same")
    # -- Space and workers ------------------------------------------------------------------
    space: str = _option("Space and workers", SPACES.default.name, show_default=True,
                         **_one_of(SPACES.names()), help=_described(SPACES))
    alphas: Optional[str] = _option("Space and workers",
                                    help=f"--space {GRID_SPACE}: comma-separated α values  "
                                         "[default: 0,0.1,...,0.6]")
    refine: bool = _option("Space and workers", False, is_flag=True,
                           help=f"--space {GRID_SPACE}: also score the midpoints around the best α")
    alpha_range: Optional[str] = _option("Space and workers", metavar="LO,HI",
                                         help="Bounds of every coordinate (other spaces)  [default: 0,1]")
    trials: Optional[int] = _option("Space and workers", type=int, limits=AT_LEAST_ONE,
                                    help="Sampled candidates besides α = 0, across all workers "
                                         "(other spaces)  [default: 30]")
    sampler: Optional[str] = _option("Space and workers", **_one_of(SAMPLERS),
                                     help="optuna sampler  [default: grid for scalar, tpe otherwise]")
    storage: Optional[str] = _option("Space and workers", metavar="URL",
                                     help="optuna storage shared by workers: sqlite:///…, postgresql://…, "
                                          "or a journal file (…/study.journal)  [default: study.db in --out]")
    heartbeat: int = _option("Space and workers", 60, type=int, limits=AT_LEAST_ONE, show_default=True,
                             help="Seconds between a worker's heartbeats; a candidate whose worker missed "
                                  "3 is scored again by another (database storages)")
    # -- Strategy -----------------------------------------------------------------------------
    strategy: Optional[str] = _option("Strategy", **_one_of(STRATEGIES.names()),
                                      help=f"What to score next: {_described(STRATEGIES)}  [default: "
                                           f"{DEFAULTS} (docs/search.md)]")
    race: bool = _option("Strategy", False, is_flag=True,
                         help="The space's racing strategy: score candidates on blocks of dev rows (in a "
                              "--seed order), dropping each clearly worse than the leader (the --alphas "
                              "grid) or than the best so far (sampled spaces); see docs/search.md")
    race_tolerance: float = _option("Strategy", DEFAULT_TOLERANCE, type=float, show_default=True,
                                    help=f"--space {GRID_SPACE}: stop scoring a candidate once it cannot "
                                         "beat the leader by more than this many standard errors of their "
                                         "paired difference on all rows")
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

    # -- One option at a time (ExpoError is no ValueError: pydantic passes it on) ---------------
    @field_validator("scorer", "guard", "engine", "space")
    @classmethod
    def known(cls, spec: Optional[str], info) -> Optional[str]:
        """A name its registry knows, or one line naming the closest."""
        registry = {"engine": ENGINES, "space": SPACES}.get(info.field_name, SCORERS)
        if spec is not None:
            head, _, tail = spec.partition(":")
            close = [entry.name for entry in registry.having("prefix")
                     if difflib.get_close_matches(head, [entry.name.rstrip(":")], cutoff=0.5)]
            if close and not any(spec.startswith(name) for name in close):
                # lm_eval:arc_easy would otherwise be taken for a Python module:function
                raise ExpoConfigError(f"unknown {registry.noun} {spec!r}: did you mean {close[0]}{tail}?")
            registry.get(spec, f"--{info.field_name}")
        return spec

    @field_validator("dtype", "preset", "sampler")
    @classmethod
    def one_of(cls, value: Optional[str], info) -> Optional[str]:
        choices = {"dtype": DTYPES, "preset": sorted(PRESETS), "sampler": SAMPLERS}[info.field_name]
        if value is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ExpoConfigError(f"--{info.field_name} {value!r} is not one of {', '.join(choices)}: {hint}"
                                  "choose one of them")
        return value

    @field_validator("tasks_path")
    @classmethod
    def existing_folder(cls, path: Optional[str]) -> Optional[str]:
        if path is not None and not Path(path).is_dir():
            raise ExpoConfigError(f"--tasks-path {path} is not a folder: give the folder of your task YAMLs")
        return path

    @field_validator("out", "write_best")
    @classmethod
    def not_blank(cls, value: Optional[str], info) -> Optional[str]:
        """An empty path (an unset shell variable) is a mistake, never "no --write-best"."""
        if value is not None and not value.strip():
            example = "./expo-search" if info.field_name == "out" else "./expo-best"
            raise ExpoConfigError(f"--{info.field_name.replace('_', '-')} is empty ({value!r}): give a "
                                  f"folder, e.g. --{info.field_name.replace('_', '-')} {example}")
        return value

    @field_validator("max_drop")
    @classmethod
    def drop(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not value >= 0:
            raise ExpoConfigError(f"--max-drop must be 0 or more (a drop in the guard's units), got "
                                  f"{value:g}: give e.g. --max-drop 0.02")
        return value

    @field_validator("race_tolerance")
    @classmethod
    def tolerance(cls, value: float) -> float:
        if not 0 <= value < math.inf:
            raise ExpoConfigError("--race-tolerance must be a finite number, 0 or more (standard errors of "
                                  f"a pair's paired difference), got {value}")
        return value

    @model_validator(mode="after")
    def check_sampling(self) -> "SearchSettings":
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ExpoConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if any(value is not None and not ok for value, ok in (
                (self.temperature, (self.temperature or 0) > 0), (self.top_p, 0 < (self.top_p or 0) <= 1),
                (self.top_k, (self.top_k or 0) >= 0))):
            raise ExpoConfigError("--temperature must be > 0, --top-p in (0, 1] and --top-k ≥ 0 (0 = off): "
                                  "fix the sampling options")
        return self

    # -- Rules across options, one line each ---------------------------------------------------
    @model_validator(mode="after")
    def check_space(self) -> "SearchSettings":
        """Options of one space used with another, the range and the sampler."""
        grid = "grid" in SPACES.get(self.space).traits
        own = SPACES.get(self.space).options
        others = [name for entry in SPACES.entries if entry.name != self.space for name in entry.options
                  if name not in own]
        for name in others:
            if getattr(self, name) not in (None, False):
                raise ExpoConfigError(f"--{name.replace('_', '-')} applies to --space {GRID_SPACE}; "
                                      f"--space {self.space} draws candidates from --alpha-range: use "
                                      "--alpha-range LO,HI and --trials N instead")
        if grid:
            for given, name in ((self.trials, "--trials"), (self.alpha_range, "--alpha-range")):
                if given is not None:
                    raise ExpoConfigError(f"{name} applies to --space {SPACES.listed('sampled')}; --space "
                                          f"{self.space} scores the --alphas grid: drop it, or choose "
                                          "another --space")
            if self.sampler not in (None, "grid"):
                raise ExpoConfigError(f"--sampler {self.sampler} draws from a range; --space {self.space} "
                                      f"scores the --alphas grid: drop --sampler, or choose --space "
                                      f"{SPACES.listed('sampled')}")
        elif self.sampler == "grid":
            raise ExpoConfigError(f"--sampler grid is the --alphas grid of --space {GRID_SPACE}; "
                                  f"--space {self.space} needs tpe, cmaes or random")
        self.grid, self.bounds  # noqa: B018 (an unreadable --alphas or --alpha-range fails here)
        return self

    @model_validator(mode="after")
    def check_scorer(self) -> "SearchSettings":
        """Scorer options that only make sense together, and options no chosen part takes."""
        if (self.guard is None) != (self.max_drop is None):
            given, missing = ("--guard", "--max-drop") if self.guard else ("--max-drop", "--guard")
            raise ExpoConfigError(f"{given} needs {missing}: e.g. --guard lm-eval:arc_easy --max-drop 0.02")
        scorers = [SCORERS.get(spec) for spec in (self.scorer, self.guard) if spec]
        engine = ENGINES.get(self.engine)
        for entry in scorers:
            if "transformers" in entry.traits and "transformers" not in engine.traits:
                capable = " or ".join(e.name for e in ENGINES.having("transformers"))
                raise ExpoConfigError(f"the {entry.name.rstrip(':')} scorer runs with --engine {capable}: it "
                                      "wraps the engine's transformers model, whose weights change in place "
                                      f"(lm-eval's vLLM wrapper builds its own vLLM instance)")
        self._check_owned_options([engine, *scorers])
        self.sampling  # noqa: B018
        return self

    def _check_owned_options(self, chosen) -> None:
        """An option that only an unchosen engine or scorer takes is an error, never dropped."""
        allowed = {name for entry in chosen for name in entry.options}
        given = [name for name in self.given if name not in allowed]
        for registry, kind in ((ENGINES, "engine"), (SCORERS, "scorer")):
            owners = {name: entry for entry in registry.entries for name in entry.options}
            for name in (name for name in given if name in owners):
                option = f"--{name.replace('_', '-')}"
                if kind == "engine":
                    owner = owners[name].name
                    raise ExpoConfigError(f"{option} is an option of --engine {owner}, not of --engine "
                                          f"{self.engine}: drop it, or use --engine {owner}")
                unused = [f"--{n.replace('_', '-')}" for n in owners[name].options if n in given]
                verb = "applies" if len(unused) == 1 else "apply"
                owner = owners[name]
                raise ExpoConfigError(f"{', '.join(unused)} only {verb} to {owner.name.rstrip(':')} scorers: "
                                      f"use --scorer or --guard {owner.written}, or drop them")

    @model_validator(mode="after")
    def check_strategy(self) -> "SearchSettings":
        """The strategy fits the space, and its own options come with it."""
        if self.strategy is not None and self.race and self.strategy != self.strategy_name:
            raise ExpoConfigError(f"--race picks --strategy {self.strategy_name} for --space {self.space}, "
                                  f"not {self.strategy}: drop one of them")
        kind = "grid" if "grid" in SPACES.get(self.space).traits else "sampled"
        entry = STRATEGIES.get(self.strategy_name)
        if kind not in entry.traits:
            fitting = [e.name for e in STRATEGIES.entries if kind in e.traits]
            raise ExpoConfigError(f"--strategy {entry.name} does not search --space {self.space}: use "
                                  f"--strategy {' or '.join(fitting)}")
        others = {name for other in STRATEGIES.entries for name in other.options} - set(entry.options)
        for name in (name for name in self.given if name in others):
            option = f"--{name.replace('_', '-')}"
            if "races" in entry.traits:
                raise ExpoConfigError(
                    f"{option} ends the race of the --alphas grid; with --space {self.space} each sampled "
                    "candidate is pruned on its own once clearly worse than the best so far, and the "
                    f"search ends after --trials: drop {option}")
            takers = " or ".join(f"--strategy {e.name}" for e in STRATEGIES.entries if name in e.options)
            raise ExpoConfigError(f"{option} applies to a race: add --race ({takers}), or drop {option}")
        if self.refine and "rows" in entry.traits:
            how = "--race" if self.race else f"--strategy {entry.name}"
            raise ExpoConfigError(f"{how} cannot --refine: the midpoints are placed around the best full "
                                  "score, which it does not compute for every α: add the midpoints to "
                                  "--alphas")
        return self

    def check_scorers(self, scorer, guard) -> None:
        """What only the loaded scorers can tell: whether a strategy of dev rows can use them."""
        if not self.per_row:
            return
        how = "--race" if self.race else f"--strategy {self.strategy_name}"
        for option, used in (("--scorer", scorer), ("--guard", guard)):
            why = used is not None and used.race_refusal()
            if why:
                raise ExpoConfigError(f"{how} cannot use {option} {why}")

    # -- What follows from the settings --------------------------------------------------------
    @property
    def strategy_name(self) -> str:
        """--strategy; what --race picks for the space (its racing strategy); else the first default
        strategy that fits: the space, and, for one of dev rows, scorers that score rows by index
        (known from their registry entries, before they are loaded) and no --refine."""
        kind = "grid" if "grid" in SPACES.get(self.space).traits else "sampled"
        if self.race:
            return next(entry.name for entry in STRATEGIES.having("races") if kind in entry.traits)
        if self.strategy:
            return self.strategy
        per_row = not self.refine and all("rows" in SCORERS.get(spec).traits
                                          for spec in (self.scorer, self.guard) if spec)
        return next(entry.name for entry in STRATEGIES.having("default")
                    if kind in entry.traits and (per_row or "rows" not in entry.traits))

    def default_note(self) -> Optional[str]:
        """Why the default on the --alphas grid is not the first default (the curve search), if so."""
        first = STRATEGIES.having("default")[0]
        if self.strategy or self.race or self.grid is None or self.strategy_name == first.name:
            return None
        if self.refine:
            return (f"--strategy {self.strategy_name}: every α on every dev row (--refine needs every α of "
                    f"the grid; --strategy {first.name} to race a lattice of the grid)")
        role, spec = next((role, spec) for role, spec in (("scorer", self.scorer), ("guard", self.guard))
                          if spec and "rows" not in SCORERS.get(spec).traits)
        return (f"--strategy {self.strategy_name}: every α on every dev row (--{role} {spec} is not known "
                f"to score dev rows one by one; if it does, --strategy {first.name} races a lattice of the "
                "grid)")

    @property
    def per_row(self) -> bool:
        """Whether the strategy scores dev rows by index (in the --seed order)."""
        return "rows" in STRATEGIES.get(self.strategy_name).traits

    @property
    def uses_lm_eval(self) -> bool:
        return any("transformers" in SCORERS.get(spec).traits for spec in (self.scorer, self.guard) if spec)

    def lm_eval_options(self) -> Dict[str, Any]:
        return dict(tasks_path=self.tasks_path, limit=self.limit, num_fewshot=self.num_fewshot,
                    metric=self.metric)

    @property
    def grid(self) -> Optional[List[float]]:
        """The α values of the grid space; None for the spaces that draw from --alpha-range."""
        if "grid" not in SPACES.get(self.space).traits:
            return None
        text = self.alphas
        if text is None:  # not given; an empty value is a mistake, never the default grid
            return list(DEFAULT_ALPHAS)
        parts = text.split(",")
        if text.strip() and not all(part.strip() for part in parts):
            raise ExpoConfigError(f"--alphas {text!r} has an empty value between its commas: write e.g. "
                                  "--alphas 0,0.3,0.5")
        values = [checked_alpha(part.strip(), option="--alphas", in_search=True) for part in parts
                  if part.strip()]
        warn_large_grid(values)
        if not values:
            raise ExpoConfigError(f"--alphas {text!r} names no α: give e.g. --alphas 0,0.3,0.5, or drop "
                                  "--alphas for the default grid 0,0.1,...,0.6")
        return sorted(set(values))

    @property
    def bounds(self) -> Tuple[float, float]:
        """``LO,HI`` of --alpha-range, LO < HI."""
        text = self.alpha_range
        if text is None:
            return (0.0, 1.0)
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 2:
            raise ExpoConfigError(f"--alpha-range {text!r} must be two numbers LO,HI: e.g. --alpha-range 0,1")
        low, high = (checked_alpha(part, option="--alpha-range", in_search=True) for part in parts)
        warn_large_grid((high,))
        if not low < high:
            example = f"{min(low, high):g},{max(low, high) if low != high else high + 1:g}"
            raise ExpoConfigError(f"--alpha-range {text}: LO must be below HI: e.g. --alpha-range {example}")
        return low, high

    @property
    def step_list(self) -> Optional[List[int]]:
        """--steps as whole numbers (the trajectory's checks take them from here)."""
        if self.steps is None:
            return None
        parts = [part.strip() for part in self.steps.split(",")]
        for part in parts:
            if not part.isdigit():
                raise ExpoConfigError(f"--steps: {part!r} is not a whole number: give each checkpoint's "
                                      "training step, in order, e.g. --steps 100,200,300")
        return [int(part) for part in parts]

    @property
    def sampling(self) -> Sampling:
        """The --preset (or greedy defaults) with the generation options given on top."""
        base = PRESETS[self.preset] if self.preset else Sampling()
        options = ("max_new_tokens", "sample", "temperature", "top_p", "top_k")
        given = {name: getattr(self, name) for name in options if getattr(self, name) is not None}
        return dataclasses.replace(base, seed=self.seed, **given)

    def study_settings(self, models: dict) -> dict:
        """What makes two runs the same search (results.json's settings): another value is refused,
        by the --out before any work and by the study itself. ``models``: the searched models'
        own (:meth:`~.searched_models.SearchedModels.settings`)."""
        settings = {"data": fingerprint(self.data),
                    "reward_model": self.reward_model and hub.model_reference(self.reward_model),
                    "sampling": self.sampling.settings(), "engine": self.engine, **models,
                    "dtype": self.dtype, "scorer": self.scorer, "space": self.space}
        if self.guard:
            settings["guard"] = self.guard
        if self.grid is None:
            settings.update(alpha_range=list(self.bounds), sampler=self.sampler or "tpe")
        if self.per_row:  # the seeded row order
            settings["race"] = {"seed": self.seed}
        if "implicit" not in STRATEGIES.get(self.strategy_name).traits:
            settings["strategy"] = self.strategy_name  # earlier versions knew only full searches and races
        return settings

    def plan(self, space, resolve: Callable) -> Plan:
        grid = self.grid
        options = {"tolerance": self.race_tolerance} if "race_tolerance" in \
            STRATEGIES.get(self.strategy_name).options else {}
        return Plan(space=space, resolve=resolve, grid=grid, refine=self.refine, alpha_range=self.bounds,
                    trials=None if grid is not None else (self.trials or DEFAULT_TRIALS),
                    sampler=self.sampler or ("grid" if grid is not None else "tpe"), seed=self.seed,
                    storage=self.storage, heartbeat=self.heartbeat, strategy=self.strategy_name,
                    options=options, max_drop=self.max_drop)

    def engine_options(self, device: str) -> dict:
        """The engine's options: each engine gets its own only (``device``: the resolved --device)."""
        entry = ENGINES.get(self.engine)
        own = {name: getattr(self, name) for name in entry.options}
        own.update({"device": device} if "device" in entry.options else {"seed": self.seed})
        return dict(own, dtype=self.dtype, trust_remote_code=self.trust_remote_code)


def fingerprint(*parts: Optional[str]) -> str:
    """Content hash of a data file, so a changed file is a different search."""
    digest = hashlib.sha256()
    for part in parts:
        if part and Path(part).is_file():
            digest.update(Path(part).read_bytes())
        digest.update(str(part).encode())
    return digest.hexdigest()[:16]


def search_options(command: Callable) -> Callable:
    """Add one click option per :class:`SearchSettings` field; call ``command(settings, ...)``."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in list(kwargs) if name in SearchSettings.model_fields}
        context = click.get_current_context()
        given = {name for name in values if context.get_parameter_source(name) not in
                 (None, click.core.ParameterSource.DEFAULT)}
        try:
            settings = SearchSettings(**values, given=given)
        except ValidationError as error:  # a constraint on one value: click's usage error, as click words it
            problem = error.errors()[0]
            name = str(problem["loc"][0])
            raise click.BadParameter(f"{_limit_words(problem)}, got {problem['input']}",
                                     param_hint=f"'--{name.replace('_', '-')}'") from None
        return command(*args, settings=settings, **kwargs)

    for name, field in reversed(list(SearchSettings.model_fields.items())):
        if field.json_schema_extra is None:
            continue  # not an option
        options, flags = dict(field.json_schema_extra["click"]), field.json_schema_extra["flags"]
        if field.default is not None and "is_flag" not in options:
            options["default"] = field.default
        wrapper = click.option(*(flags or [f"--{name.replace('_', '-')}"]), name, **options)(wrapper)
    return wrapper


def _limit_words(problem: dict) -> str:
    """pydantic's constraint, as the option's limit."""
    limits = problem.get("ctx") or {}
    words = {"ge": "must be at least", "gt": "must be more than", "le": "must be at most",
             "lt": "must be below"}
    return next((f"{text} {limits[key]}" for key, text in words.items() if key in limits), problem["msg"])


class GroupedHelp(click.Command):
    """``--help`` in named sections, as mergekit shows its own options."""

    def format_options(self, ctx, formatter) -> None:
        arguments = [(parameter.make_metavar(ctx), ARGUMENTS.get(parameter.name, ""))
                     for parameter in self.get_params(ctx) if isinstance(parameter, click.Argument)]
        sections: Dict[str, list] = {group: [] for group in (*GROUPS, "Other")}
        for parameter in self.get_params(ctx):
            record, field = parameter.get_help_record(ctx), SearchSettings.model_fields.get(parameter.name)
            if record is not None and not isinstance(parameter, click.Argument):
                sections[field.json_schema_extra["group"] if field else "Other"].append(record)
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
        for group, records in sections.items():
            if records:
                with formatter.section(f"{group} options"):
                    formatter.write_dl(records)


ARGUMENTS = {"sft": "The SFT model (a folder, or a Hub id)",
             "checkpoints": "The aligned model trained from it; or several checkpoints of one run, in "
                            "training order (expo_trajectory: --steps, --window)"}
