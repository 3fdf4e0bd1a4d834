"""What ``expo`` is called and accepts, for every host: the SFT base plus one aligned model.

Host-free (no torch, no mergekit), so that every host's adapter declares the same
method and words its errors the same way.
"""

import functools
import logging
import os
from typing import Hashable, Optional, Sequence

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.preflight import same_weights

LOG = logging.getLogger("mergekit_expo")
NAME = "expo"
# mergekit's own card (plain mergekit-yaml) reads the pretty name and the URL: "merged
# using the [<pretty name>](<url>) merge method using <base_model> as a base". The
# name says which input is which; `mergekit-expo card OUT` writes the full card.
PRETTY_NAME = "ExPO (extrapolating the aligned model away from its SFT base)"
REFERENCE_URL = "https://arxiv.org/abs/2404.16792"
MISSING_BASE = (
    "expo needs base_model: set it to the SFT checkpoint the aligned model was trained from"
)


def check_inputs(input_ids: Sequence[Hashable], base_id: Optional[Hashable]) -> Optional[Hashable]:
    """Return the aligned model's id (None when only the base is given) or raise
    ExpoConfigError; warn when the aligned model is the SFT checkpoint itself."""
    aligned = [i for i in input_ids if i != base_id]
    if base_id is None or base_id not in input_ids or len(aligned) > 1:
        raise ExpoConfigError(explain(input_ids, base_id))
    if not aligned:
        # One input is allowed so that "aligned == SFT" degrades to a copy with a warning.
        warn_same_checkpoint(str(base_id))
        return None
    if same_files(base_id, aligned[0]):
        warn_same_checkpoint(f"{base_id} and {aligned[0]} hold the same weights")
    return aligned[0]


def explain(input_ids: Sequence[Hashable], base_id: Optional[Hashable]) -> str:
    """The one-line reason why ``input_ids`` are not an SFT base plus one aligned model."""
    if base_id is None or base_id not in input_ids:
        return MISSING_BASE
    aligned = [str(i) for i in input_ids if i != base_id]
    return (
        f"expo takes exactly one aligned model under models:, got {len(aligned)} "
        f"({', '.join(aligned)}): run one expo merge per aligned model, and combine "
        "the results in a later mergekit-multi stage if you want"
    )


def label(role: str, input_id: Hashable) -> str:
    # mergekit's ids are ModelReferences (paths); the Python API names its inputs.
    return input_id if isinstance(input_id, str) else f"{role} {input_id}"


@functools.lru_cache(maxsize=None)
def warn_same_checkpoint(model: str) -> None:
    LOG.warning(
        "base_model and the aligned model are the same checkpoint (%s): there is no "
        "alignment update to extrapolate, the output equals the aligned model",
        model,
    )


@functools.lru_cache(maxsize=None)
def same_files(first: Hashable, second: Hashable) -> bool:
    paths = [_local_path(i) for i in (first, second)]
    return None not in paths and same_weights(*paths)


def _local_path(input_id: Hashable) -> Optional[str]:
    # mergekit passes ModelReference ids; a reference with a LoRA is another model.
    model = getattr(input_id, "model", None)
    if model is None or getattr(input_id, "lora", None) is not None:
        return None
    path = getattr(model, "path", None)
    return path if path and os.path.isdir(path) else None
