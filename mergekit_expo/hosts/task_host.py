"""``expo`` and ``expo_trajectory`` declared for the hosts that keep mergekit 0.1.4's method API:
mergekit 0.1.4, and mergekitty 0.3 (allura-org's fork of it, the same classes under
``mergekitty.*``). One adapter for both: the host's own classes are found by its package name,
and subclassed with the mixins of :mod:`.task_api`."""

import functools
import importlib
from typing import Optional, Tuple

from mergekit_expo.hosts import task_api

TASK_MODULE = {"mergekit": "graph", "mergekitty": "task"}  # where each keeps its Task class


def register(registry) -> None:
    """Declare both methods in ``registry``, the method registry of mergekit 0.1.4 or mergekitty."""
    task_api.register(registry, methods(registry.__name__.split(".")[0]))


@functools.lru_cache(maxsize=None)
def methods(package: str) -> tuple:
    """(expo, expo_trajectory) as ``package``'s ``MergeMethod`` instances."""
    import torch

    def of(module: str, name: str):
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    reference, weight = of("common", "ModelReference"), of("architecture", "WeightInfo")
    tensors, method = of("merge_methods.base", "MergeTensorInput"), of("merge_methods.base", "MergeMethod")
    parameter = of("merge_methods.base", "ConfigParameterDef")
    task = of(TASK_MODULE[package], "Task")[torch.Tensor]
    expo_task = type("ExpoTask", (task_api.ExpoTaskBody, task), {"__module__": __name__, "__annotations__": {
        "gather_tensors": tensors, "base_model": reference, "aligned_model": Optional[reference],
        "alpha": float, "weight_info": weight}})
    trajectory_task = type("TrajectoryTask", (task_api.TrajectoryTaskBody, task), {
        "__module__": __name__, "__annotations__": {
            "gather_tensors": tensors, "base_model": reference, "checkpoints": Tuple[reference, ...],
            "steps": Tuple[int, ...], "window": int, "alpha": float, "weight_info": weight}})
    expo = type("ExpoMerge", (task_api.ExpoMethodBody, method),
                {"task_class": expo_task, "parameter_class": parameter})
    trajectory = type("TrajectoryMerge", (task_api.TrajectoryMethodBody, method),
                      {"task_class": trajectory_task, "parameter_class": parameter})
    return expo(), trajectory()
