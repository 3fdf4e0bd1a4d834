"""``expo`` and ``expo_trajectory`` declared for mergekitty 0.3, allura-org's fork of mergekit 0.1.4
(see :mod:`.task_api`)."""

import functools
from typing import Optional, Tuple

import torch
from mergekitty.architecture import WeightInfo
from mergekitty.common import ModelReference
from mergekitty.merge_methods.base import ConfigParameterDef, MergeMethod, MergeTensorInput
from mergekitty.task import Task

from mergekit_expo import _autoregister
from mergekit_expo.hosts import task_api


class ExpoTask(task_api.ExpoTaskBody, Task[torch.Tensor]):
    gather_tensors: MergeTensorInput
    base_model: ModelReference
    aligned_model: Optional[ModelReference]
    alpha: float
    weight_info: WeightInfo


class ExpoMerge(task_api.ExpoMethodBody, MergeMethod):
    task_class = ExpoTask
    parameter_class = ConfigParameterDef


class TrajectoryTask(task_api.TrajectoryTaskBody, Task[torch.Tensor]):
    gather_tensors: MergeTensorInput
    base_model: ModelReference
    checkpoints: Tuple[ModelReference, ...]
    steps: Tuple[int, ...]
    window: int
    alpha: float
    weight_info: WeightInfo


class TrajectoryMerge(task_api.TrajectoryMethodBody, MergeMethod):
    task_class = TrajectoryTask
    parameter_class = ConfigParameterDef


# hosts.register calls it
register = functools.partial(task_api.register, methods=(ExpoMerge(), TrajectoryMerge()))


# Covers the case where importing this module is what first loaded mergekitty.
_autoregister.register_if_loaded()
