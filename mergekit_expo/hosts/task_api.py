"""``expo`` and ``expo_trajectory`` in the method API of mergekit 0.1.4, which mergekitty 0.3 keeps.

There a method is a ``MergeMethod`` whose ``make_task`` returns one ``Task`` per output
tensor, and a registry dict maps names to methods. :mod:`.task_host` subclasses each host's
own classes with the mixins below. The arithmetic, the input checks and the parameters' validation are the
ones mergekit 0.1.5's methods use: :func:`~mergekit_expo.numerics.extrapolate_tensor`,
:mod:`mergekit_expo.contract`, :func:`~mergekit_expo.alpha.checked_alpha`, and for the
trajectory :mod:`mergekit_expo.trajectory` (here every check runs while the host plans).
"""

from types import ModuleType
from typing import Any, Dict, Hashable, Optional

from mergekit_expo import contract as expo_contract
from mergekit_expo import trajectory
from mergekit_expo.alpha import DEFAULT_ALPHA, checked_alpha
from mergekit_expo.compat.mergekit import register_method
from mergekit_expo.contract import check_inputs, label
from mergekit_expo.errors import ExpoInputError
from mergekit_expo.numerics import extrapolate_tensor
from mergekit_expo.trajectory import contract as trajectory_contract
from mergekit_expo.trajectory.numerics import fit_tensor
from mergekit_expo.trajectory.steps import checked_step, checked_window


class ExpoTaskBody:
    """One output tensor. Fields (declared by the host's subclass): gather_tensors,
    base_model, aligned_model (None: the SFT model alone), alpha, weight_info."""

    def arguments(self) -> Dict[str, Any]:
        return {"tensors": self.gather_tensors}

    def uses_accelerator(self) -> bool:
        return True  # --cuda / --compute-device move the arithmetic

    def group_label(self) -> Optional[str]:
        return self.gather_tensors.group_label()

    def execute(self, tensors: Dict[Hashable, Any], **_kwargs):
        name = self.weight_info.name
        sft_label = label("SFT model", self.base_model)
        if self.base_model not in tensors:
            raise ExpoInputError(
                f"{name} is missing from {sft_label}: the aligned model must be trained "
                "from this SFT model (same tensor names)"
            )
        sft = tensors[self.base_model]
        if self.aligned_model is None:
            return sft
        aligned = tensors[self.aligned_model]
        aligned_label = label("aligned model", self.aligned_model)
        if sft.shape != aligned.shape:
            # mergekit 0.1.5 refuses this itself; these hosts would pass it on.
            raise ExpoInputError(
                f"{name} has shape {tuple(sft.shape)} in {sft_label} and "
                f"{tuple(aligned.shape)} in {aligned_label}: if the aligned model added "
                "tokens, set tokenizer_source: union (rows the SFT model lacks keep "
                "the aligned values)"
            )
        return extrapolate_tensor(sft, aligned, self.alpha, name=name,
                                  labels=(sft_label, aligned_label))


class MethodBody:
    """A method, named as its host-free ``contract`` module says; the host's subclass sets
    ``task_class`` and ``parameter_class``."""

    contract: ModuleType
    task_class: type
    parameter_class: type

    def name(self) -> str:
        return self.contract.NAME

    def pretty_name(self) -> Optional[str]:
        return self.contract.PRETTY_NAME

    def reference_url(self) -> Optional[str]:
        return self.contract.REFERENCE_URL


class ExpoMethodBody(MethodBody):
    contract = expo_contract

    def parameters(self) -> list:
        return []

    def tensor_parameters(self) -> list:
        # Per model, falling back to the top-level parameters: (filters, gradients).
        return [self.parameter_class(name="alpha", required=False, default_value=DEFAULT_ALPHA)]

    def make_task(self, *, output_weight, tensors, tensor_parameters, base_model, **_kwargs):
        # Runs while the host plans, before any tensor is read: errors come first.
        aligned = check_inputs(list(tensor_parameters.keys()), base_model)
        alpha = DEFAULT_ALPHA if aligned is None else checked_alpha(tensor_parameters[aligned]["alpha"])
        return self.task_class(gather_tensors=tensors, base_model=base_model,
                               aligned_model=aligned, alpha=alpha, weight_info=output_weight)


class TrajectoryTaskBody(ExpoTaskBody):
    """One output tensor of expo_trajectory. Fields (declared by the host's subclass):
    gather_tensors, base_model, checkpoints (in step order), steps (the SFT model's 0
    first), window, alpha, weight_info."""

    def execute(self, tensors: Dict[Hashable, Any], **_kwargs):
        name = self.weight_info.name
        models = (self.base_model, *self.checkpoints)
        labels = (label("SFT model", self.base_model), *(label("checkpoint", c) for c in self.checkpoints))
        for model, text in zip(models, labels):
            if model not in tensors:
                raise ExpoInputError(f"{name} is missing from {text}: the checkpoints must come from a run "
                                     "that started from this SFT model (same tensor names)")
        points = [tensors[model] for model in models]
        for point, text in zip(points[1:], labels[1:]):
            if point.shape != points[0].shape:
                # mergekit 0.1.5 refuses this itself; these hosts would pass it on.
                raise ExpoInputError(
                    f"{name} has shape {tuple(points[0].shape)} in {labels[0]} and {tuple(point.shape)} in "
                    f"{text}: if the run added tokens, set tokenizer: {{source: union}}")
        fit = trajectory.fit_coefficients(self.steps, window=self.window)
        return fit_tensor(points, fit, self.alpha, name=name, labels=labels)


class TrajectoryMethodBody(MethodBody):
    contract = trajectory_contract

    def parameters(self) -> list:
        # One value for the whole fit (gradients and filters apply per tensor).
        return [self.parameter_class(name="alpha", required=False, default_value=DEFAULT_ALPHA),
                self.parameter_class(name="window", required=False, default_value=None)]

    def tensor_parameters(self) -> list:
        return [self.parameter_class(name="step", required=False, default_value=None)]

    def make_task(self, *, output_weight, tensors, parameters, tensor_parameters, base_model, **_kwargs):
        # Runs while the host plans, before any tensor is read: every check comes first.
        checkpoints = trajectory_contract.check_inputs(list(tensor_parameters.keys()), base_model)
        alpha, window = checked_alpha(parameters["alpha"]), checked_window(parameters["window"])
        written = tuple((c, checked_step(tensor_parameters[c]["step"])) for c in checkpoints)
        fit = trajectory_contract.planned_fit(written, window)
        return self.task_class(gather_tensors=tensors, base_model=base_model, checkpoints=tuple(checkpoints),
                               steps=fit.steps, window=fit.window, alpha=alpha, weight_info=output_weight)


def register(registry, methods) -> None:
    """Add ``methods`` to the host's registry unless they are there."""
    for method in methods:
        register_method(registry, method.name(), method)
