"""Everything the search finds by name: scorers, engines, spaces and strategies.

Each entry describes itself (its name, its help, what it can do, the options only it takes);
its implementation is imported only when it is used, as lm-eval registers its models, so the
command line, ``--help``, the settings' validation and the model card read names from here
without importing torch, lm-eval or vLLM. A built-in one is a module plus one entry below (the
first of each registry is its default); :meth:`Registry.register` adds one from outside.
"""

import difflib
import pkgutil
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Tuple

from mergekit_expo.errors import ExpoConfigError


@dataclass(frozen=True)
class Entry:
    name: str  # as typed; for a prefix entry the prefix ("lm-eval:"), for the callable "module:function"
    target: str  # "package.module:Class", imported when used
    help: str = ""
    traits: FrozenSet[str] = frozenset()  # what it can do (see each registry)
    options: Tuple[str, ...] = ()  # settings only it takes: given without it, they are refused
    words: str = ""  # how reports and the card name it
    form: str = ""  # how a user writes it, when that is more than its name
    tested: Tuple[str, ...] = ()  # an engine's library and the first and last minor versions tested

    @property
    def written(self) -> str:
        return self.form or self.name

    def load(self):
        return pkgutil.resolve_name(self.target)

    def matches(self, spec: str) -> bool:
        if "prefix" in self.traits:
            return spec.startswith(self.name)
        if "callable" in self.traits:
            return ":" in spec
        return spec == self.name


class Registry:
    def __init__(self, noun: str, entries: List[Entry]):
        self.option, self.noun, self.entries = f"--{noun}", noun, list(entries)

    def register(self, entry: Entry) -> None:
        """Add ``entry`` (a plugin's, under a name of its own)."""
        self.entries.append(entry)

    @property
    def default(self) -> Entry:
        """The one used when none is named: the first built-in one."""
        return self.entries[0]

    def names(self) -> List[str]:
        return list(dict.fromkeys(entry.name for entry in self.entries))

    def listed(self, trait: str = None) -> str:
        """``a, b or c``: the entries (those with ``trait``) as a user writes them."""
        names = list(dict.fromkeys(entry.written for entry in self.entries
                                   if trait is None or trait in entry.traits))
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    def get(self, spec: str, option: Optional[str] = None) -> Entry:
        """The entry ``spec`` names, or one line naming the closest (and ``option``, the one it
        was given with: --guard names a scorer too)."""
        entry = next((entry for entry in self.entries if entry.matches(spec)), None)
        if entry is None:
            match = difflib.get_close_matches(spec, self.names(), n=1, cutoff=0.6)
            hint = f"did you mean {match[0]!r}? " if match else ""
            raise ExpoConfigError(f"unknown {self.noun} {spec!r} ({option or self.option}): {hint}use "
                                  f"{self.listed()}")
        return entry

    def having(self, trait: str) -> List[Entry]:
        return [entry for entry in self.entries if trait in entry.traits]


def _here(module: str, name: str) -> str:
    return f"mergekit_expo.search.{module}:{name}"


# traits: rows (scores dev rows by index, so it can race), data (reads --data), generates (one
# generation per row), tasks (scores its tasks' own examples), prefix/callable (how its name is
# matched), transformers (needs an engine whose model is a transformers model)
SCORERS = Registry("scorer", [
    Entry("preference", _here("scorers", "PreferenceScorer"), "log-likelihood of chosen over rejected",
          frozenset({"rows", "data"})),
    # with --engine vllm, --device and --batch-size place and batch the reward model
    Entry("reward-model", _here("scorers", "RewardModelScorer"), "mean reward of generated answers",
          frozenset({"rows", "data", "generates"}), options=("reward_model", "device", "batch_size")),
    Entry("lm-eval:", _here("lm_eval_scorer", "LmEvalScorer"), "lm-evaluation-harness tasks",
          frozenset({"prefix", "transformers", "tasks"}),
          options=("tasks_path", "limit", "num_fewshot", "metric"), form="lm-eval:TASK[,TASK...]"),
    Entry("module:function", _here("scorers", "CallableScorer"), "your function, returning a float",
          frozenset({"callable"})),
])

# traits: transformers (the model it runs is a transformers model, set in place: lm-eval wraps it)
ENGINES = Registry("engine", [
    Entry("hf", _here("hf_engine", "HFEngine"), "transformers, batched", frozenset({"transformers"}),
          options=("device", "batch_size"), words="transformers (`--engine hf`)",
          tested=("transformers", "5.19", "5.25")),
    Entry("vllm", _here("vllm_engine", "VLLMEngine"), "vLLM with in-place weight reload",
          options=("tensor_parallel_size", "gpu_memory_utilization", "max_model_len"),
          words="vLLM (`--engine vllm`)", tested=("vllm", "0.32", "0.32")),
])

# traits: grid (one α, an --alphas grid) or sampled (coordinates drawn from --alpha-range);
# by_module (one α per module group), by_depth (α at the first and last layer)
SPACES = Registry("space", [
    Entry("scalar", "", "one α", frozenset({"grid"}), options=("alphas", "refine")),
    Entry("module", "", "attention, MLP, other", frozenset({"sampled", "by_module"}),
          words="one α each for attention (`self_attn`), MLP (`mlp`, experts and routers included) and "
                "everything else (embeddings, norms, `lm_head`)"),
    Entry("depth", "", "first and last layer, interpolated", frozenset({"sampled", "by_depth"}),
          words="α at the first and at the last layer, interpolated over the layers as mergekit "
                "interpolates a gradient list"),
    Entry("module+depth", "", "both", frozenset({"sampled", "by_module", "by_depth"}),
          words="for each of attention, MLP and everything else, α at the first and at the last layer, "
                "interpolated over the layers"),
])

# traits: the kinds of space it searches (grid, sampled); races (what --race picks); rows (it
# needs a scorer of dev rows by index); default (used, in this order, where it fits and no strategy
# is named); implicit (earlier versions recorded a search with it without naming it)
STRATEGIES = Registry("strategy", [
    Entry("curve", "mergekit_expo.search.strategies.curve:CurveSearch",
          "the --alphas grid raced on a lattice that refines itself at the leader, the α beyond "
          "candidates dropped or retired against it never scored (the score taken to be unimodal and "
          "smooth in α)",
          frozenset({"grid", "rows", "default"}), options=("race_tolerance",)),
    Entry("full", "mergekit_expo.search.strategies.full:FullSearch",
          "every candidate on every dev row", frozenset({"grid", "sampled", "default", "implicit"})),
    Entry("race", "mergekit_expo.search.strategies.race:GridRace",
          "the --alphas grid scored block by block of dev rows, clear losers dropped, candidates within "
          "--race-tolerance of the leader retired", frozenset({"grid", "races", "rows", "implicit"}),
          options=("race_tolerance",)),
    Entry("prune", "mergekit_expo.search.strategies.prune:SampledPruning",
          "each sampled candidate scored block by block, pruned once clearly worse than the best so far",
          frozenset({"sampled", "races", "rows", "implicit"})),
])
