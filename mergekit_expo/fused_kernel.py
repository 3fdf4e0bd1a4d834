"""ExPO for bf16 tensors on the CPU in one fused pass (numba), same bits as the fp64 stream.

Per element: widen both bf16 inputs to fp64 exactly, compute ``a + (a - s) * alpha``
with a separate multiply and add (no fused multiply-add, so every step rounds as the
fp64 stream does), then narrow to bf16 rounded once: to odd at two bits more than
bf16 keeps, then to nearest-even, the steps of :func:`mergekit_expo.numerics.narrowable`.
One pass instead of the stream's many, vectorised by LLVM, split into spans over as
many threads as torch uses.

numba is imported on the first call, never at start-up; without it, or where it cannot
compile, :func:`extrapolate_bf16` returns None and the caller streams through fp64.
"""

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

LOG = logging.getLogger("mergekit_expo")
_SPAN_ALIGNMENT = 64  # elements: spans start on cache-line boundaries


def extrapolate_bf16(sft: torch.Tensor, aligned: torch.Tensor, alpha: float) -> Optional[torch.Tensor]:
    """aligned + alpha * (aligned - sft) for contiguous CPU bf16 tensors, or None if unavailable."""
    kernel = _compiled()
    return None if kernel is None else run_in_spans(kernel, sft, aligned, alpha)


def run_in_spans(kernel, sft: torch.Tensor, aligned: torch.Tensor, alpha: float) -> torch.Tensor:
    """``kernel(sft_bits, aligned_bits, out_bits, alpha)`` over spans, one per torch thread."""
    out = torch.empty_like(aligned, memory_format=torch.contiguous_format)
    sft_bits, aligned_bits, out_bits = bf16_bits(sft), bf16_bits(aligned), bf16_bits(out)
    in_spans(lambda s: kernel(sft_bits[s], aligned_bits[s], out_bits[s], float(alpha)), out_bits.size)
    return out


def in_spans(work, size: int) -> None:
    """``work(span)`` for spans (slices) covering ``size`` elements, one span per torch thread."""
    threads = max(1, torch.get_num_threads())
    span = -(-size // threads // _SPAN_ALIGNMENT) * _SPAN_ALIGNMENT or _SPAN_ALIGNMENT
    spans = [slice(start, start + span) for start in range(0, size, span)]
    if len(spans) <= 1:
        work(slice(0, size))
        return
    pool = _pool(threads)
    for future in [pool.submit(work, s) for s in spans]:
        future.result()


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    # As many threads as torch uses, so OMP_NUM_THREADS / torch.set_num_threads apply here too.
    return ThreadPoolExecutor(threads, thread_name_prefix="expo-bf16")


def bf16_bits(tensor: torch.Tensor):
    """A bf16 tensor's bit patterns, as a flat uint16 numpy view (no copy when contiguous)."""
    import numpy as np

    return tensor.detach().reshape(-1).view(torch.int16).numpy().view(np.uint16)


@functools.lru_cache(maxsize=None)
def _compiled():
    try:
        from mergekit_expo._bf16_numba import expo_bf16
    except ImportError:
        return None
    try:
        _self_check(expo_bf16)
    except Exception as error:  # a numba/LLVM that cannot build or run this loop
        LOG.warning("the fused bf16 kernel is unavailable (%s): using the fp64 stream", error)
        return None
    return expo_bf16


def _self_check(kernel) -> None:
    # Compiles now, and refuses a build that rounds differently from the rule. With
    # aligned 1 + 2**-6 and sft 1 + 2**-7, alpha = 0.5 lands halfway between two bf16
    # numbers (even wins: down); alpha = 0.5 + 2**-30 lands just above that midpoint
    # (up), where rounding through fp32 to nearest first would make it a tie (down).
    sft = torch.tensor([1.0078125, -1.0078125, 0.0], dtype=torch.bfloat16)
    aligned = torch.tensor([1.015625, -1.015625, 1.0], dtype=torch.bfloat16)
    cases = ((0.5, [1.015625, -1.015625, 1.5]), (0.5 + 2.0 ** -30, [1.0234375, -1.0234375, 1.5]))
    for alpha, expected in cases:
        out = torch.empty_like(aligned)
        kernel(bf16_bits(sft), bf16_bits(aligned), bf16_bits(out), alpha)
        if out.tolist() != expected:
            raise RuntimeError(f"self-check at alpha={alpha!r} gave {out.tolist()}, expected {expected}")
