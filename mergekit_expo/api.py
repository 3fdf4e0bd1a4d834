"""Python API: ExPO on in-memory state dicts or modules, same numerics as the merge method."""

from typing import Dict, Mapping, Optional, Union

import torch
from mergekit.merge_methods import merge_state_dicts

from mergekit_expo.alpha import DEFAULT_ALPHA
from mergekit_expo.errors import ExpoConfigError, ExpoInputError
from mergekit_expo.merge_config import DTYPES
from mergekit_expo.method import expo_merge_method

StateDictLike = Union[Mapping[str, torch.Tensor], torch.nn.Module]


def extrapolate(
    sft: StateDictLike,
    aligned: StateDictLike,
    alpha: float = DEFAULT_ALPHA,
    *,
    dtype: Optional[torch.dtype] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Dict[str, torch.Tensor]:
    """Return the ExPO state dict θ_aligned + α·(θ_aligned − θ_sft).

    ``sft`` and ``aligned`` are state dicts or ``nn.Module`` objects with the same
    tensor names and shapes. ``dtype`` converts inputs before the arithmetic (as
    mergekit's ``dtype:``); ``out_dtype`` casts the result.

    >>> merged = extrapolate(sft_model, dpo_model, alpha=0.3)
    >>> dpo_model.load_state_dict(merged)
    """
    dtype, out_dtype = _torch_dtype(dtype, "dtype"), _torch_dtype(out_dtype, "out_dtype")
    sft_tensors, aligned_tensors = _state_dict(sft), _state_dict(aligned)
    _check_compatible(sft_tensors, aligned_tensors)
    with torch.no_grad():
        return merge_state_dicts(
            {"the SFT state dict": sft_tensors, "the aligned state dict": aligned_tensors},
            expo_merge_method,
            parameters={"alpha": alpha},
            base="the SFT state dict",
            dtype=dtype,
            out_dtype=out_dtype,
        )


def _torch_dtype(value, argument: str) -> Optional[torch.dtype]:
    """A torch dtype, or the name of one mergekit reads (``"bfloat16"``)."""
    if value is None or (isinstance(value, torch.dtype) and value.is_floating_point):
        return value
    if isinstance(value, str) and value in DTYPES:
        return getattr(torch, value)
    raise ExpoConfigError(
        f"{argument}={value!r} is not a floating-point dtype: pass torch.bfloat16, "
        f"torch.float16, torch.float32 or one of the names {', '.join(DTYPES)}"
    )


def _state_dict(model: StateDictLike) -> Mapping[str, torch.Tensor]:
    if isinstance(model, torch.nn.Module):
        return model.state_dict()
    if isinstance(model, Mapping):
        return model
    raise ExpoInputError(
        f"expected a state dict or torch.nn.Module, got {type(model).__name__}: "
        "pass model.state_dict() or the model itself"
    )


def _check_compatible(
    sft: Mapping[str, torch.Tensor], aligned: Mapping[str, torch.Tensor]
) -> None:
    only_sft = sorted(set(sft) - set(aligned))
    only_aligned = sorted(set(aligned) - set(sft))
    if only_sft or only_aligned:
        name, side = (only_sft[0], "SFT") if only_sft else (only_aligned[0], "aligned")
        raise ExpoInputError(
            f"tensor {name} exists only in the {side} model: the aligned model must "
            "be trained from this SFT model (same architecture and tensor names)"
        )
    for name, tensor in sft.items():
        if tensor.shape != aligned[name].shape:
            raise ExpoInputError(
                f"tensor {name} has shape {tuple(tensor.shape)} in the SFT model and "
                f"{tuple(aligned[name].shape)} in the aligned model: ExPO needs "
                "identical shapes (for added tokens, resize the SFT embeddings first)"
            )
        floating = (tensor.is_floating_point(), aligned[name].is_floating_point())
        if floating != (True, True) and not (tensor.dtype == aligned[name].dtype
                                             and torch.equal(tensor, aligned[name])):
            first, second = _dtype_name(tensor), _dtype_name(aligned[name])
            problem = (f"is {first}, not floating point, and differs between the models" if first == second
                       else f"is {first} in the SFT model and {second} in the aligned model")
            raise ExpoInputError(
                f"tensor {name} {problem}: ExPO extrapolates floating-point tensors and copies the "
                "others only when both models agree; make them equal (e.g. take the aligned one) "
                "or leave it out"
            )


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")
