"""The ``expo_trajectory`` merge method: the least-squares line through a run's checkpoints,
evaluated at s* = s_last·(1 + α).

``base_model`` is the SFT model (step 0); ``models:`` lists the run's checkpoints in
training order, each at its ``step`` (or the step its trainer folder states). ``alpha`` is
in units of the last checkpoint's update, as in expo, and ``window`` keeps the last points
only. With the SFT model and one checkpoint it is expo, bit for bit. Declared here in
the method API of mergekit 0.1.5; :mod:`mergekit_expo.hosts` declares it for mergekit
0.1.4 and mergekitty.
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
from mergekit_expo.contract import label
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.trajectory.contract import (
    NAME,
    PRETTY_NAME,
    REFERENCE_URL,
    check_inputs,
    planned_fit,
)
from mergekit_expo.trajectory.numerics import fit_tensor
from mergekit_expo.trajectory.steps import checked_step, checked_window

__all__ = ["trajectory_merge_method"]

Alpha = Annotated[float, BeforeValidator(checked_alpha)]
Step = Annotated[Optional[int], BeforeValidator(checked_step)]  # None: read from the folder
Window = Annotated[Optional[int], BeforeValidator(checked_window)]  # None: every point

TRAJECTORY_CONTRACT = InputContract(base=BasePolicy.REQUIRED, min_inputs=2, min_non_base=1)


def _trajectory_kernel(
    group: TensorGroup,
    alpha: Alpha = DEFAULT_ALPHA,
    window: Window = None,
    step: PerNonBase[Step] = None,
) -> torch.Tensor:
    checkpoints = group.non_base
    fit = planned_fit(tuple((c.id, step[c.id]) for c in checkpoints), window)
    return fit_tensor(
        (group.base.tensor, *(c.tensor for c in checkpoints)),
        fit,
        alpha,
        name=group.metadata.name,
        labels=(label("SFT model", group.base.id), *(label("checkpoint", c.id) for c in checkpoints)),
    )


class TrajectoryMergeMethod(FunctionalGroupMergeMethod):
    """The kernel above plus input checks worded for the user."""

    def validate_inputs(
        self,
        input_ids: Sequence[Hashable],
        base_id: Optional[Hashable] = None,
        *,
        group_name: Optional[str] = None,
    ) -> None:
        check_inputs(input_ids, base_id)
        try:
            super().validate_inputs(input_ids, base_id, group_name=group_name)
        except ValueError as error:  # what is left of mergekit's contract: an input listed twice
            raise ExpoConfigError(f"{NAME}: {error}: list each checkpoint once under models:") from error


_spec_only = merge_method(
    name=NAME,
    pretty_name=PRETTY_NAME,
    reference_url=REFERENCE_URL,
    contract=TRAJECTORY_CONTRACT,
)(_trajectory_kernel)

trajectory_merge_method = TrajectoryMergeMethod(_spec_only.spec, _trajectory_kernel)


def register(registry) -> None:
    """Add expo_trajectory to mergekit's registry unless it is there."""
    if not any(m.spec.name == NAME for m in registry.registered_methods()):
        registry.register(trajectory_merge_method)


# Covers the case where importing this module is what first loaded mergekit.
_autoregister.register_if_loaded()
