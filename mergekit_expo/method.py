"""The ``expo`` merge method: θ_expo = θ_aligned + α·(θ_aligned − θ_sft).

Zheng et al., "Model Extrapolation Expedites Alignment", ACL 2025 (arXiv 2404.16792).
``base_model`` is the SFT checkpoint; the single entry under ``models:`` is
the DPO/RLHF checkpoint trained from it.
"""

import functools
import logging
import os
from typing import Hashable, Optional, Sequence

import torch
from pydantic import BeforeValidator
from typing_extensions import Annotated

from mergekit.merge_methods.base import (
    BasePolicy,
    FunctionalGroupMergeMethod,
    InputContract,
    PerNonBase,
    TensorGroup,
)
from mergekit.merge_methods.easy_define import merge_method

from mergekit_expo import _autoregister
from mergekit_expo.alpha import DEFAULT_ALPHA, checked_alpha
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.numerics import extrapolate_tensor

LOG = logging.getLogger("mergekit_expo")
MISSING_BASE = (
    "expo needs base_model: set it to the SFT checkpoint the aligned model was trained from"
)

Alpha = Annotated[float, BeforeValidator(checked_alpha)]

# One input is allowed so that "aligned == SFT" degrades to a copy with a warning.
EXPO_CONTRACT = InputContract(
    base=BasePolicy.REQUIRED, min_inputs=1, max_inputs=2, max_non_base=1
)


def _expo_kernel(
    group: TensorGroup, alpha: PerNonBase[Alpha] = DEFAULT_ALPHA
) -> torch.Tensor:
    if not group.non_base:
        return group.base.tensor
    (aligned,) = group.non_base
    return extrapolate_tensor(
        group.base.tensor,
        aligned.tensor,
        alpha[aligned.id],
        name=group.metadata.name,
        labels=(_label("SFT model", group.base.id), _label("aligned model", aligned.id)),
    )


def _label(role: str, input_id: Hashable) -> str:
    # mergekit's ids are ModelReferences (paths); the Python API names its inputs.
    return input_id if isinstance(input_id, str) else f"{role} {input_id}"


class ExpoMergeMethod(FunctionalGroupMergeMethod):
    """The kernel above plus input checks worded for ExPO users."""

    def validate_inputs(
        self,
        input_ids: Sequence[Hashable],
        base_id: Optional[Hashable] = None,
        *,
        group_name: Optional[str] = None,
    ) -> None:
        try:
            super().validate_inputs(input_ids, base_id, group_name=group_name)
        except ValueError as error:
            raise ExpoConfigError(_explain(input_ids, base_id)) from error
        aligned = [i for i in input_ids if i != base_id]
        if not aligned:
            _warn_same_checkpoint(str(base_id))
        elif _same_files(base_id, aligned[0]):
            _warn_same_checkpoint(f"{base_id} and {aligned[0]} hold the same weights")


def _explain(input_ids: Sequence[Hashable], base_id: Optional[Hashable]) -> str:
    if base_id is None or base_id not in input_ids:
        return MISSING_BASE
    aligned = [str(i) for i in input_ids if i != base_id]
    return (
        f"expo takes exactly one aligned model under models:, got {len(aligned)} "
        f"({', '.join(aligned)}): run one expo merge per aligned model, and combine "
        "the results in a later mergekit-multi stage if you want"
    )


@functools.lru_cache(maxsize=None)
def _warn_same_checkpoint(model: str) -> None:
    LOG.warning(
        "base_model and the aligned model are the same checkpoint (%s): there is no "
        "alignment update to extrapolate, the output equals the aligned model",
        model,
    )


@functools.lru_cache(maxsize=None)
def _same_files(first: Hashable, second: Hashable) -> bool:
    from mergekit_expo.preflight import same_weights

    paths = [_local_path(i) for i in (first, second)]
    if None in paths:
        return False
    return os.path.realpath(paths[0]) == os.path.realpath(paths[1]) or same_weights(*paths)


def _local_path(input_id: Hashable) -> Optional[str]:
    # mergekit passes ModelReference ids; a reference with a LoRA is another model.
    model = getattr(input_id, "model", None)
    if model is None or getattr(input_id, "lora", None) is not None:
        return None
    path = getattr(model, "path", None)
    return path if path and os.path.isdir(path) else None


_spec_only = merge_method(
    name="expo",
    pretty_name="ExPO (model extrapolation)",
    reference_url="https://arxiv.org/abs/2404.16792",
    contract=EXPO_CONTRACT,
)(_expo_kernel)

expo_merge_method = ExpoMergeMethod(_spec_only.spec, _expo_kernel)

# Covers the case where importing this module is what first loaded mergekit.
_autoregister.register_if_loaded()
