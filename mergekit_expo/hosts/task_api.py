"""``expo`` in the method API of mergekit 0.1.4, which mergekitty 0.3 keeps.

There a method is a ``MergeMethod`` whose ``make_task`` returns one ``Task`` per output
tensor, and a registry dict maps names to methods. Each host module
(:mod:`.mergekit_014`, :mod:`.mergekitty`) subclasses its host's own classes with the
two mixins below. The arithmetic, the input checks and α's validation are the ones
mergekit 0.1.5's method uses: :func:`~mergekit_expo.numerics.extrapolate_tensor`,
:mod:`mergekit_expo.contract`, :func:`~mergekit_expo.alpha.checked_alpha`.
"""

from typing import Any, Dict, Hashable, Optional

from mergekit_expo.alpha import DEFAULT_ALPHA, checked_alpha
from mergekit_expo.compat.mergekit import register_method
from mergekit_expo.contract import NAME, PRETTY_NAME, REFERENCE_URL, check_inputs, label
from mergekit_expo.errors import ExpoInputError
from mergekit_expo.numerics import extrapolate_tensor


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


class ExpoMethodBody:
    """The method; the host's subclass sets ``task_class`` and ``parameter_class``."""

    task_class: type
    parameter_class: type

    def name(self) -> str:
        return NAME

    def pretty_name(self) -> Optional[str]:
        return PRETTY_NAME

    def reference_url(self) -> Optional[str]:
        return REFERENCE_URL

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


def register(registry, method) -> None:
    """Add ``method`` to the host's registry unless it is there."""
    register_method(registry, NAME, method)
