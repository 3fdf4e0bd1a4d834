"""What a card says about an expo_trajectory stage: the SFT model, each checkpoint with its
training step, the window, and α per tensor as mergekit's planner resolves it."""

from pathlib import Path
from typing import Optional

from mergekit_expo.card.alpha_words import alpha_in_words
from mergekit_expo.hub import cached_snapshot, is_hub_id
from mergekit_expo.trajectory.steps import checked_step, checkpoint_holders, stated_steps

AT_THE_LAST_STEP = "the fit at the last checkpoint's step"  # what α = 0 gives


def trajectory_stage(stage, data: dict) -> dict:
    """The template's fields for ``stage`` (a lineage Stage of an expo_trajectory merge);
    ``data``: its config as merged (in a pipeline, the names of earlier stages become their folders)."""
    config = stage.config
    markdown = {model.text: model.markdown for model in stage.inputs}
    checkpoints = [{"model": markdown.get(str(holder.model), f"`{holder.model}`"), "step": _step(holder)}
                   for holder in checkpoint_holders(config)]
    window = (config.parameters or {}).get("window")
    return {"name": stage.name, "sft": stage.sft.markdown, "checkpoints": checkpoints,
            "points": len(checkpoints) + 1, "window": window,
            "alpha": alpha_in_words(data, zero=AT_THE_LAST_STEP)}


def _step(holder) -> str:
    step = checkpoint_step(holder)
    return "not stated where this card was written" if step is None else str(step)


def checkpoint_step(holder) -> Optional[int]:
    """A checkpoint's step as the merge read it: its written ``step:``, else what its folder
    states (None where neither is readable here)."""
    written = checked_step((holder.parameters or {}).get("step"))
    if written is not None:
        return written
    model = holder.model.model  # a mergekit ModelPath: str() writes it as path@revision
    folder: Optional[str] = model.path if Path(model.path).is_dir() else None
    if folder is None and is_hub_id(model.path):
        folder = cached_snapshot(str(model))
    stated = stated_steps(folder)
    return stated[0][1] if stated else None

