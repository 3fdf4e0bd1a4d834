"""The fp64 reference the numerics are judged against, written independently of the package."""

import torch


def expo_fp64(sft: torch.Tensor, aligned: torch.Tensor, alpha: float) -> torch.Tensor:
    sft, aligned = sft.double(), aligned.double()
    return aligned + alpha * (aligned - sft)


def ulp_at(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` numbers at magnitude ``scale`` (fp64 tensor)."""
    info = torch.finfo(dtype)
    mantissa_bits = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}[dtype]
    exponent = torch.floor(torch.log2(scale.clamp_min(info.tiny)))
    return torch.pow(2.0, exponent - mantissa_bits)


def fidelity(out, sft, aligned, alpha):
    """(fraction equal to the correctly rounded fp64 result, worst error in ulps).

    The ulp is the output dtype's at max(|aligned|, |sft|, |exact|), as the
    acceptance rule states.
    """
    exact = expo_fp64(sft, aligned, alpha)
    rounded = exact.to(out.dtype)
    equal = (out == rounded).double().mean().item()
    scale = torch.maximum(
        torch.maximum(sft.double().abs(), aligned.double().abs()), exact.abs()
    )
    ulps = (out.double() - exact).abs() / ulp_at(scale, out.dtype)
    return equal, ulps.max().item()
