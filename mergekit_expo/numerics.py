"""The arithmetic of ExPO for one tensor: θ_aligned + α·(θ_aligned − θ_sft), rounded once.

Shared by the merge method, the Python API, the α search and the LoRA path so that
every route gives the same bits.
"""

import math
from typing import Optional, Sequence, Tuple

import torch

from mergekit_expo.errors import ExpoNumericsError
from mergekit_expo.fused_kernel import extrapolate_bf16

# fp64 scratch per step: large enough to stream, small enough to stay in cache on
# a CPU (measured: 256K elements runs ~4x faster than converting whole tensors).
_CPU_CHUNK = 1 << 18
_ACCELERATOR_CHUNK = 1 << 24
# Loading numba and the cached kernel costs ~0.75 s per process, which the fused pass
# wins back only over ~0.5B elements: tensors this large appear from ~0.5B models up
# (the embeddings), so merges of small models never load it.
_FUSED_MIN_ELEMENTS = 1 << 22
# fp64 significand bits (52 stored) to cut off when rounding to odd before narrowing:
# keep the target's stored bits plus two (bf16: 7 + 2, fp16: 10 + 2).
_ODD_ROUNDING_DROP = {torch.bfloat16: 52 - 9, torch.float16: 52 - 12}


def extrapolate_tensor(
    sft: torch.Tensor,
    aligned: torch.Tensor,
    alpha: float,
    *,
    name: Optional[str] = None,
    labels: Tuple[str, str] = ("the SFT model", "the aligned model"),
) -> torch.Tensor:
    """Return aligned + alpha * (aligned - sft) in aligned's dtype, rounded once.

    The arithmetic runs in fp64 (bf16 on the CPU: one fused pass, see
    :mod:`mergekit_expo.fused_kernel`; otherwise streamed through a small scratch
    buffer), so the result is the fp64 value rounded once to the input dtype, with ``alpha``
    exactly as given. fp32 accumulation is not enough even for bf16 outputs: with
    decimal alphas such as 0.3 about 1.5e-4 of results are exact ties in real
    arithmetic, and an fp32 alpha breaks them the wrong way.

    >>> extrapolate_tensor(torch.tensor([1.0]), torch.tensor([2.0]), 0.5)
    tensor([2.5000])
    """
    if alpha == 0:
        return aligned.clone()
    out = _fused(sft, aligned, alpha)
    if out is None:
        out = stream_fp64(sft, aligned, alpha)
    check_finite(out, (sft, aligned), labels, alpha, name)
    return out


def _fused(sft: torch.Tensor, aligned: torch.Tensor, alpha: float) -> Optional[torch.Tensor]:
    return extrapolate_bf16(sft, aligned, alpha) if fusable((sft, aligned)) else None


def fusable(tensors: Sequence[torch.Tensor]) -> bool:
    """Large contiguous CPU bf16 tensors of one shape: the fused pass is worth loading numba
    (expo's two inputs, or a trajectory's points)."""
    last = tensors[-1]
    return (last.numel() >= _FUSED_MIN_ELEMENTS
            and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" and t.is_contiguous()
                    and t.shape == last.shape for t in tensors))


def stream_fp64(sft: torch.Tensor, aligned: torch.Tensor, alpha: float) -> torch.Tensor:
    """The fp64 steps through a cache-sized scratch buffer: any dtype, any device."""
    out = torch.empty_like(aligned, memory_format=torch.contiguous_format)
    flat_out = out.view(-1)
    flat_aligned, flat_sft = aligned.reshape(-1), sft.reshape(-1)
    total = flat_out.numel()
    chunk = min(total, _CPU_CHUNK if out.device.type == "cpu" else _ACCELERATOR_CHUNK)
    if chunk:
        aligned64 = torch.empty(chunk, dtype=torch.float64, device=out.device)
        delta64 = torch.empty(chunk, dtype=torch.float64, device=out.device)
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            a, d = aligned64[: stop - start], delta64[: stop - start]
            a.copy_(flat_aligned[start:stop])
            d.copy_(flat_sft[start:stop])
            torch.sub(a, d, out=d)
            d.mul_(alpha).add_(a)
            flat_out[start:stop].copy_(narrowable(d, out.dtype, scratch=a))
    return out


def narrowable(values: torch.Tensor, dtype: torch.dtype, *, scratch: torch.Tensor) -> torch.Tensor:
    """fp64 ``values`` made safe for torch's conversion to ``dtype``: rounded once, not twice.

    torch narrows fp64 to bf16/fp16 through fp32, by nearest both times, and the first
    rounding can land on a midpoint of the target (a false tie). So each value is first
    rounded *to odd* at two bits more than the target keeps (toward zero, the last kept
    bit set if anything was cut off): fp32 then holds it exactly, down to the smallest
    values that still round to anything but zero, and the one remaining rounding, to
    nearest-even, gives the value rounded once (Boldo & Melquiond, "Emulation of FMA
    and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 2008).
    Nothing can overflow on the way: a value rounds to inf exactly when it should.
    Other dtypes come back as they are (fp64 -> fp32 is one rounding already).
    ``scratch`` is an fp64 buffer of ``values``' size; the result may be it.
    """
    dropped = _ODD_ROUNDING_DROP.get(dtype)
    if dropped is None:
        return values
    low = (1 << dropped) - 1  # the fp64 significand bits to cut off
    bits, odd = values.view(torch.int64), scratch.view(torch.int64)
    # (cut-off bits + low) carries into the last kept bit exactly when they are not all zero
    torch.bitwise_and(bits, low, out=odd).add_(low).bitwise_or_(bits).bitwise_and_(~low)
    return scratch


def check_finite(
    out: torch.Tensor,
    sources: Sequence[torch.Tensor],
    labels: Sequence[str],
    alpha: float,
    name: Optional[str],
) -> None:
    """Raise ExpoNumericsError naming the tensor, and the input at fault, if ``out`` holds NaN or inf."""
    if out.numel() == 0:
        return
    # aminmax is one fast pass and propagates NaN; the slow search below runs
    # only on the failure path.
    low, high = torch.aminmax(out)
    if math.isfinite(low.item()) and math.isfinite(high.item()):
        return
    tensor = name or "a tensor"
    for label, source in zip(labels, sources):
        if not bool(torch.isfinite(source).all()):
            bad = int((~torch.isfinite(source)).sum())
            raise ExpoNumericsError(
                f"{tensor} in {label} already holds {bad} NaN/inf value(s): "
                "repair or re-export that checkpoint before extrapolating"
            )
    largest = max(float(source.abs().max()) for source in sources)
    raise ExpoNumericsError(
        f"{tensor} overflows {str(out.dtype).removeprefix('torch.')} at alpha={alpha:g} "
        f"(inputs reach |{largest:.4g}|): merge with dtype: bfloat16 or float32, "
        "or use a smaller alpha"
    )
