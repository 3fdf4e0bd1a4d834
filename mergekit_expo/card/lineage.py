"""Who is who in an ExPO output: the SFT and aligned models, their Hub ids, the pipeline.

Read from the YAML the merge was run with, never from resolved paths: a Hub id stays
``org/name`` (not the cache folder it was read from) and a local folder stays as written.
"""

from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Set, Tuple

import yaml
from pydantic import ValidationError

from mergekit_expo.errors import ExpoConfigError, first_line
from mergekit_expo.hosts import method_reference
from mergekit_expo.hub import cached_snapshot, is_hub_id

HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Input:
    """One model reference (a model, or a model plus a LoRA) as the config names it."""

    text: str
    parts: Tuple[Tuple[str, Optional[str], bool], ...]  # (path, revision, is a Hub id)
    stage: Optional[str] = None  # the output of an earlier pipeline stage, by name

    @property
    def markdown(self) -> str:
        if self.stage:
            return f"stage `{self.stage}`"
        return " + ".join(_link(*part) for part in self.parts)


@dataclass
class Stage:
    """One merge: a single config, or one document of a mergekit-multi pipeline."""

    name: Optional[str]
    config: object  # mergekit's MergeConfiguration
    inputs: List[Input]  # base_model first
    data: dict  # the YAML mapping it was read from

    @property
    def stages_used(self) -> List[str]:
        return [model.stage for model in self.inputs if model.stage]

    @property
    def is_expo(self) -> bool:
        return self.config.merge_method == "expo"

    @property
    def is_trajectory(self) -> bool:
        return self.config.merge_method == "expo_trajectory"

    @property
    def sft(self) -> Input:
        return self.inputs[0]

    @property
    def aligned(self) -> List[Input]:
        return self.inputs[1:]


@dataclass
class Lineage:
    stages: List[Stage]  # in the order they run; the last one wrote the output
    source: str  # the YAML to show: the config, or the whole pipeline
    pipeline: bool = False

    @property
    def expo_stages(self) -> List[Stage]:
        return [stage for stage in self.stages if stage.is_expo]

    @property
    def trajectory_stages(self) -> List[Stage]:
        return [stage for stage in self.stages if stage.is_trajectory]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def hub_ids(self) -> List[str]:
        """Every Hub id the output descends from: SFT and aligned models first."""
        ordered = [*self.expo_stages, *(s for s in self.stages if not s.is_expo)]
        found = [path for stage in ordered for model in stage.inputs for path, _, hub in model.parts if hub]
        return list(dict.fromkeys(found))

    def uncached_hub_ids(self) -> List[str]:
        """The Hub ids (as written) the Hugging Face cache does not hold."""
        found = [path if revision is None else f"{path}@{revision}" for stage in self.stages
                 for model in stage.inputs for path, revision, hub in model.parts if hub]
        return [reference for reference in dict.fromkeys(found) if cached_snapshot(reference) is None]


def lineage_of_config(source: str, *, hub_ids: Optional[Mapping[str, str]] = None,
                      where: str = "the config") -> Lineage:
    """The lineage of a single merge config (the text of mergekit_config.yml).

    ``hub_ids``: the folders the merge read Hub ids from -> those ids (``org/name@rev`` as
    written); without it a reference counts as a Hub id when it is no folder here.
    """
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError:
        raise ExpoConfigError(f"{where} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ExpoConfigError(f"{where} is not a mergekit config (a YAML mapping with merge_method:)")
    is_hub = is_hub_id if hub_ids is None else set(hub_ids.values()).__contains__
    return Lineage([_stage(None, data, is_hub, set(), where)], source)


def lineage_of_pipeline(text: str, output_name: str, *, where: str) -> Lineage:
    """The stages of a mergekit-multi pipeline that lead to its output.

    The output is the pipeline's unnamed document, or else the stage named like the
    output folder (mergekit-multi writes named stages to --intermediate-dir/NAME).
    """
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        raise ExpoConfigError(f"{where} is not valid YAML: pass the file given to mergekit-multi") from None
    if not documents or not all(isinstance(d, dict) for d in documents):
        raise ExpoConfigError(f"{where} is not a mergekit-multi config (YAML documents with merge_method:)")
    names = {d["name"] for d in documents if d.get("name")}
    stages = [_stage(d.get("name"), {k: v for k, v in d.items() if k != "name"},
                     is_hub_id, names, where) for d in documents]
    by_name = {stage.name: stage for stage in stages}
    target = next((s for s in stages if s.name is None), None) or by_name.get(output_name)
    if target is None:
        raise ExpoConfigError(
            f"{where} has no unnamed final stage and no stage named {output_name}: pass the "
            "pipeline that wrote this folder")
    needed, pending = set(), [target]
    while pending:
        stage = pending.pop()
        if id(stage) not in needed:
            needed.add(id(stage))
            pending.extend(by_name[name] for name in stage.stages_used)
    return Lineage([s for s in stages if id(s) in needed], text, pipeline=True)


def _stage(name, data: dict, is_hub: Callable[[str], bool], stage_names: Set[str], where: str) -> Stage:
    from mergekit.config import MergeConfiguration

    try:
        config = MergeConfiguration.model_validate(data)
    except (ValidationError, RuntimeError) as error:
        raise ExpoConfigError(f"{where} is not a valid mergekit config ({first_line(error)})") from None
    if config.merge_method in ("expo", "expo_trajectory") and config.base_model is None:
        raise ExpoConfigError(f"{where} has an {config.merge_method} merge without base_model (the SFT "
                              "model): it is not what such a merge ran with")
    inputs = [Input(str(model), (), stage=model.model.path)
              if model.model.path in stage_names and model.lora is None else _input(model, is_hub)
              for model in _in_order(config)]
    return Stage(name, config, inputs, data)


def _in_order(config) -> List:
    """The models a config references, base_model first, then as the config lists them
    (mergekit's referenced_models() is a set)."""
    found = [config.base_model] if config.base_model is not None else []
    holders = [config, *(config.modules or {}).values()]
    for holder in holders:
        found.extend(entry.model for entry in holder.models or [])
        found.extend(source.model for piece in holder.slices or [] for source in piece.sources)
    return list(dict.fromkeys(found))


def _input(model, is_hub: Callable[[str], bool]) -> Input:
    paths = [model.model] + ([model.lora] if model.lora is not None else [])
    parts = tuple((p.path, p.revision, is_hub(str(p))) for p in paths)
    return Input(str(model), parts)


def _link(path: str, revision: Optional[str], hub: bool) -> str:
    if not hub:
        return f"`{path}`"
    if revision:
        return f"[{path}@{revision}]({HUB}/{path}/tree/{revision})"
    return f"[{path}]({HUB}/{path})"


def method_markdown(name: str) -> str:
    """A merge method's name as mergekit's own cards write it: linked to its paper."""
    found = method_reference(name)
    if found is None:
        return f"`{name}`"
    pretty, url = found
    return f"[{pretty}]({url})" if url else pretty

