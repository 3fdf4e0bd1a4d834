"""``mergekit-expo run``'s checks of an expo_trajectory config, before any tensor is read:
every folder usable and of the SFT model's network, no checkpoint that is the SFT model,
each step known and the schedule and window sound."""

from typing import List, Optional, Tuple

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hub import is_hub_id
from mergekit_expo.preflight import check_input_folders, check_model_folder
from mergekit_expo.trajectory.contract import MISSING_BASE, check_inputs, planned_fit
from mergekit_expo.trajectory.steps import checked_step, checked_window, checkpoint_holders


def check_trajectory_inputs(config) -> None:
    """Refuse ``config`` (mergekit's MergeConfiguration) in one line if the merge would."""
    if config.base_model is None:
        raise ExpoConfigError(MISSING_BASE)
    sft = config.base_model
    entries = written_steps(config)
    if not is_hub_id(sft.model.path):
        check_model_folder(sft.model.path, "SFT (base_model)")
    check_input_folders(config, [model for model, _ in entries], "checkpoint")
    check_inputs([sft, *(model for model, _ in entries)], sft)
    planned_fit(tuple(entries), _window(config))


def written_steps(config) -> List[Tuple[object, Optional[int]]]:
    """(model, its written step or None) for each checkpoint, in the config's order."""
    entries = []
    for holder in checkpoint_holders(config):
        value = (holder.parameters or {}).get("step")
        try:
            entries.append((holder.model, checked_step(value)))
        except ExpoConfigError as error:
            raise ExpoConfigError(f"{holder.model}: {error}") from None
    return entries


def _window(config) -> Optional[int]:
    return checked_window((config.parameters or {}).get("window"))
