"""The ``expo`` merge method: θ_expo = θ_aligned + α·(θ_aligned − θ_sft).

Zheng et al., "Model Extrapolation Expedites Alignment", ACL 2025 (arXiv 2404.16792).
``base_model`` is the SFT checkpoint; the single entry under ``models:`` is
the DPO/RLHF checkpoint trained from it. Declared here in the method API of
mergekit 0.1.5 (specs, contracts, ``TensorGroup`` kernels); :mod:`mergekit_expo.hosts`
declares the same method for mergekit 0.1.4 and mergekitty.
"""

from typing import Hashable, Optional, Sequence

import torch
from mergekit.merge_methods.base import (
    BasePolicy,
    FunctionalGroupMergeMethod,
    InputContract,
    PerNonBase,
    TensorGroup,
)
from mergekit.merge_methods.easy_define import merge_method
from pydantic import BeforeValidator
from typing_extensions import Annotated

from mergekit_expo import _autoregister
from mergekit_expo.alpha import DEFAULT_ALPHA, checked_alpha
from mergekit_expo.contract import (
    NAME,
    PRETTY_NAME,
    REFERENCE_URL,
    check_inputs,
    explain,
    label,
)
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.numerics import extrapolate_tensor

__all__ = ["expo_merge_method"]

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
        labels=(label("SFT model", group.base.id), label("aligned model", aligned.id)),
    )


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
            raise ExpoConfigError(explain(input_ids, base_id)) from error
        check_inputs(input_ids, base_id)


_spec_only = merge_method(
    name=NAME,
    pretty_name=PRETTY_NAME,
    reference_url=REFERENCE_URL,
    contract=EXPO_CONTRACT,
)(_expo_kernel)

expo_merge_method = ExpoMergeMethod(_spec_only.spec, _expo_kernel)


def register(registry) -> None:
    """Add expo to mergekit's registry (``mergekit.merge_methods.registry``) unless it is there."""
    if not any(m.spec.name == NAME for m in registry.registered_methods()):
        registry.register(expo_merge_method)


# Covers the case where importing this module is what first loaded mergekit.
_autoregister.register_if_loaded()
