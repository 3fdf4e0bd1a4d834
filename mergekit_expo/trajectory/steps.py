"""Each checkpoint's training step, and the checks on a run's schedule, in the user's terms.

A checkpoint's step is its ``step:`` parameter when written; otherwise the trainer's own
record in its folder: ``trainer_state.json``'s ``global_step``, else the folder name
``checkpoint-N`` (what transformers' and TRL's trainers write every ``save_steps``).
Whatever the folder states must agree with a written ``step:`` and with itself, so a
mistyped step or a renamed folder is refused, never fitted. ``base_model`` (the SFT
model) is step 0 by definition and its folder is not read.
"""

import json
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from mergekit_expo.errors import ExpoConfigError

CHECKPOINT_FOLDER = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"
NAME = "expo_trajectory"
NO_CHECKPOINT = (f"{NAME} needs at least one checkpoint under models: besides base_model (the SFT model, "
                 "step 0): list the run's checkpoints in training order")


def checked_step(value) -> Optional[int]:
    """A written ``step:``: None (read it from the folder) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isdigit() else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExpoConfigError(f"step must be a whole number (the checkpoint's training step), got {value!r}: "
                              "write e.g. 'step: 500'")
    if value <= 0:
        raise ExpoConfigError(f"step must be at least 1, got {value}: base_model (the SFT model) is step 0; "
                              "give each checkpoint its trainer's global_step")
    return value


def checked_window(value) -> Optional[int]:
    """A written ``window:``: None (every point) or an integer of at least 2."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ExpoConfigError(f"window must be a whole number of at least 2 (a line needs two points), got "
                              f"{value!r}: leave it out to fit every point")
    return value


def checkpoint_holders(config) -> list:
    """The entries of a trajectory config's checkpoints (``models:`` or a slice's sources), in order."""
    holders = config.models or (config.slices[0].sources if config.slices else [])
    return [holder for holder in holders if holder.model != config.base_model]


def stated_steps(path: Optional[str]) -> List[Tuple[str, int]]:
    """(where, step) for each step a checkpoint folder states about itself."""
    if path is None or not Path(path).is_dir():
        return []
    stated = []
    state = Path(path) / TRAINER_STATE
    if state.is_file():
        stated.append((f"{TRAINER_STATE} (global_step)", _global_step(state)))
    match = CHECKPOINT_FOLDER.fullmatch(Path(path).resolve().name) or CHECKPOINT_FOLDER.fullmatch(
        Path(path).name)
    if match:
        stated.append((f"its folder name {match.group(0)}", int(match.group(1))))
    return stated


def resolve_step(label: str, path: Optional[str], written: Optional[int]) -> int:
    """The step of checkpoint ``label`` (at ``path`` when local); one line on any doubt."""
    stated = stated_steps(path)
    for where, step in stated:
        if written is not None and step != written:
            raise ExpoConfigError(f"{label} has step: {written}, but {where} says {step}: fix step: "
                                  f"(or leave it out to use {step})")
        if step != stated[0][1]:
            raise ExpoConfigError(f"{label}: {stated[0][0]} says step {stated[0][1]}, {where} says {step}: "
                                  "write its true training step as step: under its parameters:")
    if written is not None:
        return written
    if not stated:
        raise ExpoConfigError(f"{label} has no step: write its training step under its parameters: "
                              "(e.g. 'step: 500'), or merge the trainer's checkpoint-N folder as saved")
    if stated[0][1] <= 0:
        raise ExpoConfigError(f"{label} is at step {stated[0][1]} by {stated[0][0]}: base_model (the SFT "
                              "model) is step 0; list only checkpoints saved after training began")
    return stated[0][1]


def check_schedule(labels: Sequence[str], steps: Sequence[int], window: Optional[int]) -> None:
    """The checkpoints' steps (in ``models:`` order) increase, and ``window`` fits the points."""
    if not labels:
        raise ExpoConfigError(NO_CHECKPOINT)
    seen = {}
    for label, step in zip(labels, steps):
        if step in seen:
            raise ExpoConfigError(f"{seen[step]} and {label} both have step {step}: each checkpoint of a run "
                                  "has its own step; remove the duplicate or fix its step:")
        seen[step] = label
    for (a, sa), (b, sb) in zip(zip(labels, steps), zip(labels[1:], steps[1:])):
        if sb < sa:
            raise ExpoConfigError(f"steps must increase down models:, but {b} (step {sb}) comes after {a} "
                                  f"(step {sa}): list the checkpoints in training order")
    points = len(labels) + 1
    if window is not None and window > points:
        raise ExpoConfigError(f"window is {window}, but there are only {points} points (base_model and "
                              f"{len(labels)} checkpoint(s)): use at most {points}, or leave window out")


def _global_step(state: Path) -> int:
    try:
        step = json.loads(state.read_text())["global_step"]
    except (ValueError, KeyError, TypeError, OSError):
        raise ExpoConfigError(f"{state} has no readable global_step: write the checkpoint's step as step: "
                              "under its parameters:") from None
    if isinstance(step, bool) or not isinstance(step, int):
        raise ExpoConfigError(f"{state}: global_step is {step!r}, not a whole number: write the checkpoint's "
                              "step as step: under its parameters:")
    return step
