"""The model card of an ExPO output, built with huggingface_hub's ModelCard.

The metadata is a ``ModelCardData`` (what the Hub reads: ``base_model`` and
``base_model_relation`` for the model tree, the ``merge`` tag for leaderboards); the
text is ``template.md`` filled from the config, the α setting and the α search.
"""

from pathlib import Path
from typing import Dict, List, Mapping, Optional

from mergekit_expo.card.alpha_words import alpha_in_words
from mergekit_expo.card.files import README, kept_search_section, marked, publish
from mergekit_expo.card.lineage import Lineage, lineage_of_config, lineage_of_pipeline, method_markdown
from mergekit_expo.card.pipeline_check import CONFIG, as_merged, stages_folder
from mergekit_expo.card.search_section import check_same_models, search_section
from mergekit_expo.card.trajectory_words import trajectory_stage
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.search.results import PLOT, SearchResults  # PLOT: copied beside the card as it is

TEMPLATE = Path(__file__).with_name("template.md")
PAPER = "https://arxiv.org/abs/2404.16792"
MERGEKIT = "https://github.com/arcee-ai/mergekit"
TAGS = ("mergekit", "merge", "expo")
UNCHECKED = " as its pipeline configures it (not checked against what was merged)"
COUNTS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")  # ExPO stages of a pipeline


def write_card(folder, source: str, *, hub_ids: Optional[Mapping[str, str]] = None,
               search=None, pipeline: Optional[str] = None) -> None:
    """Write the model card (README.md, and the search's plot) into the output ``folder``.

    ``source`` is the merge's YAML (as saved in mergekit_config.yml); ``hub_ids`` maps
    the folders Hub ids were read from to the ids; ``search`` is the --out folder of the
    α search that chose α; ``pipeline`` the mergekit-multi config that wrote ``folder``.

    >>> write_card("./out", Path("./out/mergekit_config.yml").read_text(), search="./expo-search")
    """
    folder = Path(folder)
    publish(folder, card_files(folder, source, hub_ids=hub_ids, search=search, pipeline=pipeline))


def check_card_inputs(source: str, *, hub_ids: Optional[Mapping[str, str]] = None, search=None) -> None:
    """What write_card would refuse, checked before a merge is computed."""
    if search is None:
        return
    lineage = lineage_of_config(source, hub_ids=hub_ids)
    if lineage.expo_stages or lineage.trajectory_stages:
        _searched_stage(SearchResults.load(search), lineage)


def card_files(folder: Path, source: str, *, hub_ids: Optional[Mapping[str, str]] = None,
               search=None, pipeline: Optional[str] = None,
               unchecked: Optional[Mapping[str, str]] = None) -> Dict[str, bytes]:
    """The files of the card, by name, without writing anything.

    ``unchecked``: the pipeline's stages that could not be compared with what was merged
    (name -> why): the card says so, and gives their settings as configured.
    """
    if pipeline is not None:
        lineage = lineage_of_pipeline(pipeline, folder.name, where="the mergekit-multi config")
    else:
        lineage = lineage_of_config(source, hub_ids=hub_ids, where=f"{folder}/{CONFIG}")
    if not lineage.expo_stages and not lineage.trajectory_stages:
        return _hub_ids_named(folder, lineage, hub_ids or {})
    files = {}
    section, kept = None, None
    if search is None:
        kept = kept_search_section(folder)  # a card of ours rewritten without --search keeps its search
    else:
        results = SearchResults.load(search)
        plot = results.folder / PLOT
        if plot.is_file():
            files[PLOT] = plot.read_bytes()
        section = search_section(results, _searched_stage(results, lineage),
                                 plot=PLOT if PLOT in files else None)
    card = _card(folder, lineage, section, kept, unchecked or {}, _as_merged(folder, source, lineage))
    files[README] = marked(str(card)).encode("utf-8")
    return files


def _card(folder: Path, lineage: Lineage, section: Optional[dict], kept: Optional[str],
          unchecked: Mapping[str, str], merged: Mapping[Optional[str], dict]):
    """``merged``: a stage's config as mergekit-multi merged it, where it differs from the pipeline's."""
    from huggingface_hub import ModelCard

    stages = [{"name": stage.name, "sft": stage.sft.markdown,
               "aligned": " and ".join(model.markdown for model in stage.aligned),
               "alpha": alpha_in_words(merged.get(stage.name, stage.data)),
               "unchecked": unchecked.get(stage.name)}
              for stage in lineage.expo_stages]
    trajectories = [trajectory_stage(stage, merged.get(stage.name, stage.data))
                    for stage in lineage.trajectory_stages]
    return ModelCard.from_template(
        _card_data(folder, lineage), template_path=str(TEMPLATE), name=folder.name,
        summary=_summary(lineage, stages, trajectories), paper=PAPER,
        expo_stages=stages, trajectory_stages=trajectories,
        pipeline=_pipeline_lines(lineage, unchecked) if lineage.pipeline else None, search=section,
        kept_search=kept, config_yaml=lineage.source.rstrip("\n"))


def _as_merged(folder: Path, source: str, lineage: Lineage) -> Dict[Optional[str], dict]:
    """The ExPO stages that read an earlier stage's output, as mergekit-multi merged them: the
    stage's name is no model mergekit can plan with (nor a Hub id), its folder under
    --intermediate-dir is."""
    reading = [stage for stage in [*lineage.expo_stages, *lineage.trajectory_stages] if stage.stages_used]
    if not reading:
        return {}
    where = "the mergekit-multi config"
    stages = stages_folder(lineage, source, out=str(folder), pipeline=where)
    merged = as_merged(lineage, stages, pipeline=where)
    return {stage.name: merged[stage.name] for stage in reading}


def _card_data(folder: Path, lineage: Lineage):
    """mergekit's metadata, kept, with the lineage the Hub reads."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(**_existing_metadata(folder))
    hub_ids = lineage.hub_ids()
    data.base_model = hub_ids or None  # local folders are no Hub metadata: the text names them
    data.base_model_relation = "merge" if hub_ids else None
    data.tags = list(dict.fromkeys([*TAGS, *(data.tags or [])]))
    data.library_name = data.library_name or "transformers"
    return data


def _existing_metadata(folder: Path) -> dict:
    from huggingface_hub import ModelCard

    path = folder / README
    if not path.is_file():
        return {}
    try:
        return ModelCard.load(path, ignore_metadata_errors=True).data.to_dict()
    except ValueError:  # a README whose front matter is no mapping
        return {}


def _summary(lineage: Lineage, stages: List[dict], trajectories: List[dict]) -> str:
    described = [("ExPO", _expo_words(stage), stage) for stage in stages]
    described += [("trajectory ExPO", _trajectory_words(stage), stage) for stage in trajectories]
    if not lineage.pipeline:
        method, expo, _ = described[0]
        kind = "An ExPO model" if method == "ExPO" else "A trajectory-ExPO model"
        return f"{kind}: {expo}, made with [mergekit]({MERGEKIT}) and mergekit-expo."
    pipeline = f"A merge made with [mergekit]({MERGEKIT})'s `mergekit-multi`"
    methods = " or ".join(dict.fromkeys(method for method, _, _ in described))
    if len(described) == 1:
        said = UNCHECKED if stages and stages[0]["unchecked"] else ""
        return f"{pipeline}, one of whose stages is {methods}{said}: {described[0][1]}."
    each = [f"{_label(stage['name'])}{UNCHECKED if stage.get('unchecked') else ''}: {expo}"
            for _, expo, stage in described]
    return f"{pipeline}, {_count(len(described))} of whose stages are {methods}: {'; '.join(each)}."


def _expo_words(stage: dict) -> str:
    return f"the aligned model {stage['aligned']} extrapolated away from its SFT model {stage['sft']}"


def _trajectory_words(stage: dict) -> str:
    return (f"the least-squares line through {stage['points'] - 1} checkpoint(s) of one run from the "
            f"SFT model {stage['sft']}, extrapolated past the last one")


def _label(name: Optional[str]) -> str:
    return f"stage `{name}`" if name else "the final stage"


def _count(number: int) -> str:
    return COUNTS[number - 2] if number - 2 < len(COUNTS) else str(number)


def _pipeline_lines(lineage: Lineage, unchecked: Mapping[str, str]):
    lines = []
    for stage in lineage.stages:
        label = _label(stage.name)
        note = " (as configured: **not checked** against what was merged)" if stage.name in unchecked else ""
        if stage.is_expo or stage.is_trajectory:
            lines.append(f"{label}: {'ExPO' if stage.is_expo else 'trajectory ExPO'}{note} (below)")
            continue
        base = stage.config.base_model
        inputs = [f"{model.markdown} (base)" if base is not None and model.text == str(base)
                  else model.markdown
                  for model in stage.inputs]
        lines.append(f"{label}: {method_markdown(stage.config.merge_method)} of {', '.join(inputs)}{note}"
                     + (f": {unchecked[stage.name]}" if note else ""))
    return lines


def _searched_stage(results, lineage: Lineage):
    """The expo stage whose SFT and aligned models the search scored, or the expo_trajectory
    stage whose checkpoints it scored."""
    stages = [*lineage.expo_stages, *lineage.trajectory_stages]
    for stage in stages:
        try:
            check_same_models(results, stage)
            return stage
        except ExpoConfigError:
            continue
    check_same_models(results, stages[0])  # raises, naming the first stage's models


def _hub_ids_named(folder: Path, lineage: Lineage, hub_ids: Mapping[str, str]) -> Dict[str, bytes]:
    """Another method's card (mergekit's): Hub ids, not the cache folders they were read from."""
    from huggingface_hub import ModelCard

    path = folder / README
    if not hub_ids or not path.is_file():
        return {}
    card = ModelCard.load(path, ignore_metadata_errors=True)
    for cache_folder, repo in sorted(hub_ids.items(), key=lambda item: -len(item[0])):
        card.text = card.text.replace(cache_folder, repo)
    card.data.base_model = lineage.hub_ids() or card.data.base_model
    if card.data.base_model:
        card.data.base_model_relation = "merge"
    return {README: str(card).encode("utf-8")}
