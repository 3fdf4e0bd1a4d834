"""What ``expo_trajectory`` is called and accepts, for every host: the SFT base plus a run's
checkpoints, each at its training step.

Host-free (no torch, no mergekit): each host's declaration checks its inputs here, so the
messages are the same everywhere. ``planned_fit`` runs while a host plans (mergekit 0.1.4,
mergekitty) or on the first tensor (mergekit 0.1.5, whose planner checks parameters one by
one), before any tensor is written; it is cached, so every later tensor costs a look-up.
"""

import functools
from pathlib import Path
from typing import Hashable, List, Optional, Sequence, Tuple

from mergekit_expo.contract import same_files
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hub import cached_snapshot, is_hub_id
from mergekit_expo.preflight import check_same_network, load_config
from mergekit_expo.trajectory.fit import TrajectoryFit, fit_coefficients
from mergekit_expo.trajectory.steps import NAME, NO_CHECKPOINT, check_schedule, resolve_step

__all__ = ["NAME", "PRETTY_NAME", "REFERENCE_URL", "MISSING_BASE", "check_inputs", "planned_fit"]

# mergekit's own card reads these: "merged using the [<pretty name>](<url>) merge method".
PRETTY_NAME = "Trajectory ExPO (least-squares line through the alignment checkpoints, extrapolated)"
REFERENCE_URL = "https://arxiv.org/abs/2404.16792"
MISSING_BASE = (f"{NAME} needs base_model: set it to the SFT checkpoint the run started from "
                "(step 0 of the fit)")


def check_inputs(input_ids: Sequence[Hashable], base_id: Optional[Hashable]) -> List[Hashable]:
    """The checkpoints' ids in ``models:`` order, or ExpoConfigError: the base is the SFT
    model, at least one checkpoint, and none of them is the SFT model itself."""
    if base_id is None or base_id not in input_ids:
        raise ExpoConfigError(MISSING_BASE)
    checkpoints = [i for i in input_ids if i != base_id]
    if not checkpoints:
        raise ExpoConfigError(NO_CHECKPOINT)
    for checkpoint in checkpoints:
        if same_files(base_id, checkpoint):
            raise ExpoConfigError(
                f"{checkpoint} holds the same weights as base_model {base_id} (the SFT model, step 0): "
                "list the run's checkpoints under models:, not the SFT model")
        same_network(_local_path(base_id), _local_path(checkpoint))
    return checkpoints


@functools.lru_cache(maxsize=None)
def same_network(sft: Optional[str], checkpoint: Optional[str]) -> None:
    """Where both are local folders: their config.json describe the same network (another
    architecture or size is refused here, before a tensor is read; vocabularies are
    mergekit's to align or refuse, with ``tokenizer:``)."""
    if sft is None or checkpoint is None:
        return
    if not (Path(sft) / "config.json").is_file() or not (Path(checkpoint) / "config.json").is_file():
        return  # mergekit says what is missing
    check_same_network(sft, checkpoint, load_config(Path(sft)), load_config(Path(checkpoint)),
                       tokenizer_aligned=True, role="checkpoint")


@functools.lru_cache(maxsize=64)
def planned_fit(checkpoints: Tuple[Tuple[Hashable, Optional[int]], ...],
                window: Optional[int]) -> TrajectoryFit:
    """The fit for checkpoints given as (id, written step or None), in ``models:`` order."""
    labels = [str(i) for i, _ in checkpoints]
    steps = [resolve_step(text, _local_path(i), written) for text, (i, written) in zip(labels, checkpoints)]
    check_schedule(labels, steps, window)
    return fit_coefficients([0, *steps], window=window)


def _local_path(input_id: Hashable) -> Optional[str]:
    # mergekit's ids are ModelReferences; a checkpoint with a LoRA has no folder of its own.
    model = getattr(input_id, "model", None)
    if model is None or getattr(input_id, "lora", None) is not None:
        return input_id if isinstance(input_id, str) else None
    path, revision = getattr(model, "path", None), getattr(model, "revision", None)
    if path and not Path(path).is_dir() and is_hub_id(path):  # what mergekit read: the cached snapshot
        return cached_snapshot(f"{path}@{revision}" if revision else path)
    return path
