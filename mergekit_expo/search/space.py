"""Where the search looks: α as one number, per module group, per depth, or both.

A candidate is a dict of coordinates (``{"attention": 0.2, "mlp": 0.5, "other": 0.1}``).
It becomes a mergekit ``parameters.alpha`` value (filters and gradient lists, plain
YAML: the aligned model's under ``expo``, the fit's under ``expo_trajectory``), and the α
of every tensor is what mergekit's own planner makes of that value for the searched
models: the engine's weights and the merge of ``best.yml`` come from the same
resolution, so they cannot drift apart.

Groups, by substring of the tensor name (mergekit's filters, first match wins):

- attention: ``self_attn`` (q/k/v/o projections and their biases)
- mlp: ``mlp`` (dense MLPs; Qwen2-MoE's experts, shared expert and router) and
  ``block_sparse_moe`` (Mixtral's experts and router)
- other: everything else (embeddings, norms, ``lm_head``)
"""

from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from mergekit_expo.compat.mergekit import model_out_config
from mergekit_expo.compat.transformers import checkpoint_renamer
from mergekit_expo.errors import ExpoConfigError, ExpoInputError
from mergekit_expo.search.registry import SPACES

GROUPS = ("attention", "mlp", "other")
# Substrings of tensor names that make up each group, in mergekit filter syntax.
GROUP_FILTERS = {"attention": ("self_attn",), "mlp": ("mlp", "block_sparse_moe")}
ENDS = ("first", "last")

Candidate = Dict[str, float]


@dataclass(frozen=True)
class Space:
    """A space (:data:`~.registry.SPACES`: one α, or one per module group and/or per depth) and,
    for module spaces, the filters that this model needs."""

    name: str
    by_module: bool = False
    by_depth: bool = False
    filters: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()  # (group, substrings), "other" excluded

    @property
    def coordinates(self) -> List[str]:
        groups = GROUPS if self.by_module else ("alpha",)
        if not self.by_depth:
            return list(groups)
        return [f"{group}_{end}" for group in groups for end in ENDS]

    @property
    def scalar(self) -> bool:
        return self.coordinates == ["alpha"]

    def reference(self) -> Candidate:
        """α = 0 everywhere: the aligned model as it is (for a run: the fit at its last step)."""
        return {name: 0.0 for name in self.coordinates}

    def alpha_setting(self, candidate: Mapping[str, float]):
        """The mergekit ``parameters.alpha`` value of a candidate."""
        missing = [name for name in self.coordinates if name not in candidate]
        if missing:
            raise ExpoConfigError(f"candidate {dict(candidate)} has no {missing[0]} for --space {self.name}")
        value = {name: float(candidate[name]) for name in self.coordinates}

        def of(group: Optional[str]):
            if not self.by_depth:
                return value[group or "alpha"]
            return [value[f"{group or 'alpha'}_{end}"] for end in ENDS]

        if not self.by_module:
            return of(None)
        setting = [{"filter": substring, "value": of(group)}
                   for group, substrings in self.filters for substring in substrings]
        return setting + [{"value": of("other")}]

    def describe(self, candidate: Mapping[str, float]) -> str:
        """``alpha=0.3`` for one α, ``attention=0.2 mlp=0.5 other=0.1`` otherwise."""
        if self.scalar:
            return f"alpha={candidate['alpha']:g}"
        return " ".join(f"{name}={candidate[name]:.4g}" for name in self.coordinates)

    def name_of(self, candidate: Mapping[str, float], trial: int) -> str:
        """How answers/ and the reports name a candidate: by its α for one α, else by its trial."""
        return f"alpha={candidate['alpha']:g}" if self.scalar else f"trial-{trial}"


def make_space(name: str, tensor_names: Sequence[str]) -> Space:
    """The space ``name`` for a model with these tensors; refuse one it cannot express."""
    traits = SPACES.get(name).traits
    space = Space(name, by_module="by_module" in traits, by_depth="by_depth" in traits)
    if not space.by_module:
        return space
    filters = []
    claimed = set()
    for group, substrings in GROUP_FILTERS.items():
        used = tuple(s for s in substrings if any(s in t and t not in claimed for t in tensor_names))
        if not used:
            raise ExpoConfigError(
                f"--space {name}: no tensor of this model is in the {group} group (names containing "
                f"{' or '.join(substrings)}): use --space {_without_modules()}")
        claimed |= {t for t in tensor_names if any(s in t for s in used)}
        filters.append((group, used))
    if all(t in claimed for t in tensor_names):
        raise ExpoConfigError(f"--space {name}: every tensor of this model is attention or MLP, so "
                              f"the other group is empty: use --space {_without_modules()}")
    return replace(space, filters=tuple(filters))


def _without_modules() -> str:
    return " or ".join(entry.name for entry in SPACES.entries if "by_module" not in entry.traits)


def merge_planner(config, *, trust_remote_code: bool = False):
    """mergekit's planner for ``config`` (a dict or a ``MergeConfiguration``, copied: planning
    rewrites it), set up as ``mergekit-yaml`` sets it up; its ``config`` is the planned copy."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    data = config if isinstance(config, dict) else config.model_dump()
    merge_config = MergeConfiguration.model_validate(data)
    options = MergeOptions(trust_remote_code=trust_remote_code, quiet=True)
    arch_info = get_architecture_info(merge_config, options)
    LoaderCache().setup(options=options)
    out_config = model_out_config(merge_config, arch_info, trust_remote_code=trust_remote_code)
    return MergePlanner(merge_config, arch_info, options=options, out_model_config=out_config)


def planned_tensor_alphas(config, *, trust_remote_code: bool = False) -> Dict[str, Optional[float]]:
    """The α mergekit's planner gives each output tensor under ``config``, by the tensor
    names mergekit plans (transformers' model layout); None where no aligned model or
    checkpoint is an input (a slice of the SFT model alone: its values are copied).

    The config is planned as ``mergekit-yaml`` plans it (architecture, layer count,
    gradients over layers, filters, slices, precedence) and never executed; the α is read
    from the planned merge tasks, so what is described or scored is what the merge writes.
    """
    alphas: Dict[str, Optional[float]] = {}
    # Planned, never executed: nothing is read or written at this path.
    for task in merge_planner(config, trust_remote_code=trust_remote_code).plan_to_disk(
            out_path="/nonexistent/expo-plan"):
        merge = getattr(task, "tensor_task", None)
        if merge is not None:
            alphas[task.tensor_name] = _alpha_of(merge)
    return alphas


def _alpha_of(merge) -> Optional[float]:
    shared = getattr(merge, "parameters", None)
    if shared is not None and "alpha" in shared:  # expo_trajectory: one α for the fit, a shared parameter
        return float(shared["alpha"])
    parameters = getattr(merge, "input_parameters", None)  # expo: α per aligned model
    if parameters is None:  # mergekit 0.1.4: our own tasks (hosts.task_api), expo_trajectory's too
        alpha = getattr(merge, "alpha", None)  # expo's of the SFT model alone (no aligned model): none
        return None if alpha is None or getattr(merge, "aligned_model", True) is None else float(alpha)
    values = [p["alpha"] for model, p in parameters.items() if model != merge.base_model and "alpha" in p]
    return float(values[0]) if values else None


def planned_alphas(config: dict, *, trust_remote_code: bool = False) -> Dict[str, float]:
    """The α of each tensor the aligned model is an input of (see planned_tensor_alphas)."""
    planned = planned_tensor_alphas(config, trust_remote_code=trust_remote_code)
    return {name: alpha for name, alpha in planned.items() if alpha is not None}


class CandidateResolver:
    """Candidate -> α of every checkpoint tensor of the aligned model (a run's last
    checkpoint), through mergekit."""

    def __init__(self, space: "Space", models, *, checkpoint_names: Sequence[str],
                 model_type: Optional[str], dtype: Optional[str] = None, trust_remote_code: bool = False):
        """``models``: the :class:`~.searched_models.SearchedModels`, planned against by their
        folders; configs name them as ``models.named`` does."""
        self.space, self.models, self.dtype = space, models, dtype
        self.trust_remote_code = trust_remote_code
        # checkpoint tensor name -> the model-layout name mergekit plans it under. mergekit reads
        # checkpoints through transformers' conversion mapping (Mixtral's and Qwen-MoE's per-expert
        # tensors become one fused ``mlp.experts.gate_up_proj``); the same mapping, applied in the
        # same order, says which planned tensor each checkpoint tensor feeds. ExPO is elementwise,
        # so extrapolating the sources with their target's α and fusing them gives the target's bits.
        rename = checkpoint_renamer(model_type)
        self.layout = {name: rename(name) for name in checkpoint_names}
        self._resolved: Dict[tuple, Dict[str, float]] = {}  # a raced α is set once per block

    def config(self, candidate: Mapping[str, float], *, folders: bool = False) -> dict:
        """The mergekit config of a candidate, as best.yml holds it (``folders``: naming the
        models by their local folders, as the planner reads them)."""
        return self.models.config(self.space.alpha_setting(candidate), self.dtype, folders=folders)

    def __call__(self, candidate: Mapping[str, float]) -> Dict[str, float]:
        key = tuple(sorted(candidate.items()))
        if key not in self._resolved:
            self._resolved[key] = self._resolve(candidate)
        return dict(self._resolved[key])

    def _resolve(self, candidate: Mapping[str, float]) -> Dict[str, float]:
        planned = planned_alphas(self.config(candidate, folders=True),
                                 trust_remote_code=self.trust_remote_code)
        alphas = {}
        for name, target in self.layout.items():
            alpha = planned.get(target, planned.get(name))
            if alpha is None:
                raise ExpoInputError(
                    f"tensor {name} of the aligned model is not in mergekit's merge plan for this "
                    "architecture (mergekit-yaml would not write it), so the search cannot score what "
                    "the merge writes: merge with mergekit-expo run and score the result")
            alphas[name] = alpha
        return alphas
