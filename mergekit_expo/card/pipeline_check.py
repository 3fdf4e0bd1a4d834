"""Whether a mergekit-multi pipeline is what wrote an output, stage by stage.

A card describes every stage that leads to the output, so each one is compared with
what mergekit-multi ran: the final stage with ``OUT/mergekit_config.yml``, an earlier
stage with the ``mergekit_config.yml`` in its folder under ``--intermediate-dir``.
mergekit-multi saves a stage's config as planned (``models:`` become ``slices:``), so
both sides go through mergekit's own planner before they are compared. mergekit-multi
also skips a stage whose folder already holds a model (``--lazy``, its default): a
pipeline edited since can then differ from what its folder holds.
"""

import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import yaml

from mergekit_expo.card.lineage import Lineage, Stage, lineage_of_config
from mergekit_expo.errors import ExpoConfigError, ExpoError, ExpoInputError, first_line

CONFIG = "mergekit_config.yml"
STRUCTURE = ("modules", "slices", "sources", "parameters")  # how the planner nests a setting


class Unplannable(Exception):
    """mergekit could not plan a config here (an input it cannot read from this folder)."""


def check_pipeline(lineage: Lineage, source: str, *, out: str, pipeline: str) -> Dict[str, str]:
    """Refuse, in one line naming the stage, the setting and both values, unless every
    stage of ``lineage`` is what was merged; ``source`` is OUT's own config.

    Returns the earlier stages that could not be checked (their folder or config is
    gone, or mergekit cannot read their inputs from here), by name, with why.
    """
    written = lineage_of_config(source, where=f"{out}/{CONFIG}").final
    folder = stages_folder(lineage, source, out=out, pipeline=pipeline)
    expected = _loaded(lineage, folder, pipeline)
    # A stage folder that is gone is planned as OUT (same architecture, in the usual pipeline).
    gone = {os.path.join(folder, s.name): out for s in lineage.stages[:-1]
            if not (Path(folder) / s.name / "config.json").is_file()}
    try:
        difference = _difference(expected[lineage.final.name], written.config, gone)
    except Unplannable as error:
        raise ExpoInputError(f"cannot check that {out} was written by {pipeline}: mergekit could not plan "
                             f"its final stage here ({error}): run card from the folder mergekit-multi "
                             "ran in") from None
    if difference:
        raise ExpoConfigError(f"{out} was not written by the final stage of {pipeline}: "
                              f"{_words(difference, pipeline, f'{out}/{CONFIG}')}: pass the pipeline "
                              "that wrote it")
    unchecked = {}
    made = os.path.getmtime(os.path.join(out, CONFIG))
    for stage in lineage.stages[:-1]:
        why = _check_stage(stage, expected[stage.name], os.path.join(folder, stage.name), gone, pipeline,
                           after=(out, made))
        if why:
            unchecked[stage.name] = why
    return unchecked


def stages_folder(lineage: Lineage, source: str, *, out: str, pipeline: str) -> str:
    """The --intermediate-dir mergekit-multi was given, as OUT's config (``source``) names it
    ('' where the final stage uses no earlier stage's output)."""
    wrong = f"{out} was not written by the final stage of {pipeline}"
    final = lineage.final
    if not final.stages_used:
        return ""  # OUT's config names no stage folder; nor is one needed, no other stage leads to OUT
    written = lineage_of_config(source, where=f"{out}/{CONFIG}").final
    folders = set()
    for name in final.stages_used:
        paths = [path for model in written.inputs for path, _, _ in model.parts[:1]
                 if os.path.basename(path.rstrip("/")) == name]
        if not paths:
            raise ExpoConfigError(f"{wrong} (its config uses no output of stage `{name}`): pass the "
                                  "pipeline that wrote it")
        folders.add(os.path.dirname(paths[0].rstrip("/")))
    if len(folders) > 1:
        raise ExpoConfigError(f"{wrong} (its stage outputs lie in different folders): pass the pipeline "
                              "that wrote it")
    return folders.pop()


def as_merged(lineage: Lineage, folder: str, *, pipeline: str) -> Dict[Optional[str], dict]:
    """Each stage's config (by name) as mergekit-multi merges it: the names of earlier stages
    become their folders under --intermediate-dir ``folder``."""
    configs = _loaded(lineage, folder, pipeline)
    return {stage.name: yaml.safe_load(configs[stage.name].to_yaml()) for stage in lineage.stages}


def _loaded(lineage: Lineage, folder: str, pipeline: str) -> dict:
    from mergekit.scripts.multimerge import load_config

    try:
        return load_config(lineage.source, folder)[0]  # stage names as mergekit-multi makes them paths
    except Exception as error:  # noqa: BLE001 - a pipeline mergekit-multi could not have run
        raise ExpoConfigError(f"{pipeline} is not a pipeline mergekit-multi can run ({first_line(error)}): "
                              "pass the file given to mergekit-multi") from None


def _check_stage(stage: Stage, expected, folder: str, gone: Dict[str, str], pipeline: str, *,
                 after: Tuple[str, float]) -> Optional[str]:
    """None if the stage's folder holds what it configures; why not checked; or refuse.

    ``after``: the output and when its config was written; a stage folder written later
    (mergekit-multi run again, with --no-lazy or after deleting it) no longer shows what
    went into that output.
    """
    config = os.path.join(folder, CONFIG)
    if not os.path.isfile(config):
        return (f"{folder if not os.path.isdir(folder) else config} is not there (deleted, or card is run "
                "from another folder than mergekit-multi was)")
    out, made = after
    if os.path.getmtime(config) > made:
        return f"{folder} was merged again after {out}, so it no longer shows what went into {out}"
    try:
        merged = lineage_of_config(Path(config).read_text(encoding="utf-8"), where=config).final
        difference = _difference(expected, merged.config, gone)
    except ExpoError as error:
        return f"{config} cannot be read: {error}"
    except Unplannable as error:
        return f"mergekit cannot plan it from here: {error}"
    if difference:
        raise ExpoConfigError(
            f"stage `{stage.name}` of {pipeline} is not what was merged into {folder}: "
            f"{_words(difference, pipeline, config)} (mergekit-multi keeps a stage folder that holds a "
            "model: rerun it with --no-lazy, or pass the pipeline that wrote it)")
    return None


def _difference(expected, written, gone: Dict[str, str]) -> Optional[Tuple[str, object, object]]:
    """The first setting where the two configs plan differently: (setting, expected, written)."""
    planned = [_planned(config, gone) for config in (expected, written)]
    return None if planned[0] == planned[1] else _first_difference(*planned)


def _planned(config, gone: Dict[str, str]) -> dict:
    from mergekit_expo.merge_config import cached_references
    from mergekit_expo.search.space import merge_planner

    data = _replaced(yaml.safe_load(config.to_yaml()), gone)
    try:
        planner = merge_planner(cached_references(data))
        planner.normalize_config()
    except ExpoError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. an input mergekit cannot read from here
        raise Unplannable(first_line(error)) from None
    return _replaced(yaml.safe_load(planner.config.to_yaml()), {v: k for k, v in gone.items()})


def _replaced(node, paths: Dict[str, str]):
    if isinstance(node, dict):
        return {key: _replaced(value, paths) for key, value in node.items()}
    if isinstance(node, list):
        return [_replaced(value, paths) for value in node]
    return paths.get(node, node) if isinstance(node, str) else node


def _first_difference(first, second, path: Tuple[str, ...] = ()) -> Tuple[str, object, object]:
    if isinstance(first, dict) and isinstance(second, dict):
        for key in [*first, *(k for k in second if k not in first)]:
            if first.get(key) != second.get(key):
                return _first_difference(first.get(key), second.get(key), (*path, str(key)))
    if isinstance(first, list) and isinstance(second, list) and len(first) == len(second):
        for one, other in zip(first, second):
            if one != other:
                model = one.get("model") if isinstance(one, dict) and isinstance(other, dict) else None
                label = (f"@{model}",) if model and model == other.get("model") else ()
                return _first_difference(one, other, (*path, *label))
    return _setting(path), first, second


def _setting(path: Tuple[str, ...]) -> str:
    """``alpha of ./models/aligned``: the keys below the last model named on the way, without
    the planner's structure (modules, slices, sources)."""
    models = [i for i, part in enumerate(path) if part.startswith("@")]
    below = path[models[-1] + 1:] if models else path
    keys = [part for i, part in enumerate(below) if part not in STRUCTURE
            and not (i and below[i - 1] == "modules")]
    setting = ".".join(keys) or "the models"
    return f"{setting} of {path[models[-1]][1:]}" if models else setting


def _words(difference: Tuple[str, object, object], pipeline: str, merged: str) -> str:
    setting, expected, written = difference
    return f"{setting} is {_shown(expected)} in {pipeline}, {_shown(written)} in {merged}"


def _shown(value) -> str:
    if value is None:
        return "not set"
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= 80 else text[:77] + "..."
