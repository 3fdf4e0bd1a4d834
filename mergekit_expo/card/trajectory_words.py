"""What a card says about an expo_trajectory stage: the SFT model, each checkpoint with its
training step, the window, and α per tensor as mergekit's planner resolves it."""

import logging
from pathlib import Path
from typing import Dict, List, Optional

from mergekit_expo.card.alpha_words import AS_CONFIGURED, describe
from mergekit_expo.hub import cached_snapshot, is_hub_id
from mergekit_expo.trajectory.steps import checked_step, stated_steps

LOG = logging.getLogger("mergekit_expo")
AT_THE_LAST_STEP = "the fit at the last checkpoint's step"  # what α = 0 gives


def trajectory_stage(stage) -> dict:
    """The template's fields for ``stage`` (a lineage Stage of an expo_trajectory merge)."""
    config = stage.config
    markdown = {model.text: model.markdown for model in stage.inputs}
    checkpoints = [{"model": markdown.get(str(holder.model), f"`{holder.model}`"), "step": _step(holder)}
                   for holder in checkpoint_holders(config)]
    window = (config.parameters or {}).get("window")
    return {"name": stage.name, "sft": stage.sft.markdown, "checkpoints": checkpoints,
            "points": len(checkpoints) + 1, "window": window, "alpha": fit_alpha_in_words(stage.data)}


def _step(holder) -> str:
    step = checkpoint_step(holder)
    return "not stated where this card was written" if step is None else str(step)


def checkpoint_step(holder) -> Optional[int]:
    """A checkpoint's step as the merge read it: its written ``step:``, else what its folder
    states (None where neither is readable here)."""
    written = checked_step((holder.parameters or {}).get("step"))
    if written is not None:
        return written
    path, revision = holder.model.model.path, holder.model.model.revision
    folder: Optional[str] = path if Path(path).is_dir() else None
    if folder is None and is_hub_id(path):
        folder = cached_snapshot(f"{path}@{revision}" if revision else path)
    stated = stated_steps(folder)
    return stated[0][1] if stated else None


def checkpoint_holders(config) -> list:
    """The entries of a trajectory config's checkpoints (``models:`` or a slice's sources), in order."""
    holders = config.models or (config.slices[0].sources if config.slices else [])
    return [holder for holder in holders if holder.model != config.base_model]


def fit_alpha_in_words(data: dict) -> List[str]:
    """α per group of tensors, read from mergekit's planned merge (one value for the fit)."""
    from mergekit_expo.errors import first_line
    from mergekit_expo.merge_config import cached_references
    from mergekit_expo.search.space import merge_planner

    try:
        planned: Dict[str, Optional[float]] = {}
        for task in merge_planner(cached_references(data)).plan_to_disk(out_path="/nonexistent/expo-plan"):
            merge = getattr(task, "tensor_task", None)
            if merge is not None:
                planned[task.tensor_name] = _alpha_of(merge)
    except Exception as error:  # noqa: BLE001 - an input not readable here only costs these words
        LOG.warning("α is described as configured, not per tensor: mergekit could not plan the merge "
                    "here (%s); run card from the folder the merge ran in", first_line(error))
        return [AS_CONFIGURED]
    return describe(planned, zero=AT_THE_LAST_STEP)


def _alpha_of(merge) -> Optional[float]:
    parameters = getattr(merge, "parameters", None)  # mergekit 0.1.5: the shared parameters
    if parameters is not None and "alpha" in parameters:
        return float(parameters["alpha"])
    alpha = getattr(merge, "alpha", None)  # mergekit 0.1.4: our own task (hosts.task_api)
    return None if alpha is None else float(alpha)
