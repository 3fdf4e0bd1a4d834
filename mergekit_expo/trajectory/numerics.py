"""The arithmetic of trajectory ExPO for one tensor, in fp64, rounded once.

θ(α) = θ_last + (A + α·B)/m with A = Σ P_i·(θ_last − θ_i), B = Σ Q_i·(θ_last − θ_i)
(:class:`~mergekit_expo.trajectory.fit.Arithmetic`): each step one IEEE fp64 operation
(no fused multiply-add), streamed through a small scratch buffer, and the fp64 value
rounded once to the last checkpoint's dtype as expo rounds
(:func:`~mergekit_expo.numerics.narrowable`). With two points (the SFT model and one
checkpoint) these are expo's own operations, B = θ_1 − θ_0 then θ_1 + α·B, and the
tensor goes to expo's arithmetic itself (its fused bf16 kernel gives the same bits).
Large CPU bf16 tensors take one fused numba pass with the same steps in the same order
(``trajectory_bf16`` in :mod:`mergekit_expo._bf16_numba`), as expo's do.

For a caller that sets many α on one model (the α search): :func:`affine_parts` once per
tensor, then :func:`evaluate` per α, gives the merge's bits.
"""

import functools
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mergekit_expo.fused_kernel import bf16_bits, in_spans
from mergekit_expo.numerics import check_finite, extrapolate_tensor, fusable, narrowable
from mergekit_expo.trajectory.fit import Arithmetic, TrajectoryFit, fit_coefficients

LOG = logging.getLogger("mergekit_expo")

# Elements per step: six fp64 buffers of this size stay in a CPU's cache (see numerics.py).
_CPU_CHUNK = 1 << 18
_ACCELERATOR_CHUNK = 1 << 22


@dataclass
class AffineParts:
    """One tensor's θ(α) = last + (a + α·b)/m in fp64, and the dtype results round to."""

    last: torch.Tensor
    a: Optional[torch.Tensor]  # None: no such term (two points)
    b: torch.Tensor
    denominator: float
    dtype: torch.dtype


def fit_tensor(points: Sequence[torch.Tensor], fit: TrajectoryFit, alpha: float, *,
               name: Optional[str] = None, labels: Optional[Sequence[str]] = None) -> torch.Tensor:
    """The fit at s_last·(1 + α) of ``points`` (one tensor per step of ``fit``, the SFT
    model's first), in the last point's dtype, rounded once."""
    labels = labels or [f"the model at step {s}" for s in fit.steps]
    if fit.is_expo:
        return extrapolate_tensor(points[0], points[1], alpha, name=name, labels=(labels[0], labels[1]))
    out = fit_bf16(points, fit.arithmetic, alpha) if fusable(points) else None
    if out is None:
        out = stream(points, fit.arithmetic, alpha)
    labels = [f"{label} (step {step})" for label, step in zip(labels, fit.steps)]
    check_finite(out, points, labels, alpha, name)
    return out


def stream(points: Sequence[torch.Tensor], arithmetic: Arithmetic, alpha: float) -> torch.Tensor:
    """The fp64 steps through a cache-sized scratch buffer: any dtype, any device."""
    out = torch.empty_like(points[-1], memory_format=torch.contiguous_format)
    flat_points, flat_out = [p.reshape(-1) for p in points], out.view(-1)
    total = flat_out.numel()
    chunk = min(total, _CPU_CHUNK if out.device.type == "cpu" else _ACCELERATOR_CHUNK)
    if chunk:
        scratch = torch.empty((6, chunk), dtype=torch.float64, device=out.device)
        for start in range(0, total, chunk):
            last, a, b, value, spare, difference = scratch[:, : min(total, start + chunk) - start]
            parts = fill_parts(flat_points, arithmetic, slice(start, start + chunk), last=last, a=a, b=b,
                               scratch=(spare, difference))
            evaluate_into(parts, alpha, out=value)
            flat_out[start:start + chunk].copy_(narrowable(value, out.dtype, scratch=spare))
    return out


def fit_bf16(points, arithmetic: Arithmetic, alpha: float) -> Optional[torch.Tensor]:
    """The fused pass over contiguous CPU bf16 points of one shape, or None if numba is unavailable."""
    kernel = _compiled()
    if kernel is None:
        return None
    out = torch.empty_like(points[-1], memory_format=torch.contiguous_format)
    inputs, out_bits = tuple(bf16_bits(p) for p in points), bf16_bits(out)
    weights = kernel_weights(arithmetic)
    in_spans(lambda s: kernel(tuple(x[s] for x in inputs), *weights, float(alpha), out_bits[s]),
             out_bits.size)
    return out


def kernel_weights(arithmetic: Arithmetic) -> tuple:
    """The fused kernel's arguments before α: last, indices, P, Q, has_a, denominator."""
    import numpy as np

    indices = np.array([i for i, _, _ in arithmetic.terms], dtype=np.int64)
    p_weights, q_weights = (np.array([t[k] for t in arithmetic.terms], dtype=np.float64) for k in (1, 2))
    return arithmetic.last, indices, p_weights, q_weights, arithmetic.has_a, arithmetic.denominator


@functools.lru_cache(maxsize=None)
def _compiled():
    try:
        from mergekit_expo._bf16_numba import trajectory_bf16
    except ImportError:
        return None
    try:  # compiles now, and refuses a build whose bits differ from the stream's (ties included)
        generator = torch.Generator().manual_seed(0)
        base = torch.randn(4096, generator=generator, dtype=torch.float64)
        points = [(base + 0.02 * k + 0.005 * torch.randn(4096, generator=generator, dtype=torch.float64))
                  .to(torch.bfloat16) for k in range(4)]
        arithmetic = fit_coefficients([0, 100, 200, 300]).arithmetic
        for alpha in (0.5, 0.3, 0.0):
            out = torch.empty_like(points[-1])
            inputs = tuple(bf16_bits(p) for p in points)
            trajectory_bf16(inputs, *kernel_weights(arithmetic), alpha, bf16_bits(out))
            if not torch.equal(out.view(torch.int16), stream(points, arithmetic, alpha).view(torch.int16)):
                raise RuntimeError(f"self-check at alpha={alpha!r} differs from the fp64 stream")
    except Exception as error:  # a numba/LLVM that cannot build or run this loop
        LOG.warning("the fused bf16 trajectory kernel is unavailable (%s): using the fp64 stream", error)
        return None
    return trajectory_bf16


def fill_parts(flat_points, arithmetic: Arithmetic, span: slice, *, last, a, b, scratch) -> AffineParts:
    """The fp64 parts of elements ``span`` of the flattened points, into the given buffers."""
    spare, difference = scratch
    last.copy_(flat_points[arithmetic.last][span])
    started = set()
    for index, *weights in arithmetic.terms:
        torch.sub(last, difference.copy_(flat_points[index][span]), out=difference)
        for weight, total in zip(weights, (a, b)):
            if not weight:
                continue
            if id(total) in started:  # the first term is stored as it is: signs of zero kept
                total.add_(torch.mul(difference, weight, out=spare))
            else:
                torch.mul(difference, weight, out=total)
                started.add(id(total))
    return AffineParts(last, a if arithmetic.has_a else None, b, arithmetic.denominator, last.dtype)


def evaluate_into(parts: AffineParts, alpha: float, *, out: torch.Tensor) -> torch.Tensor:
    """out = last + (a + α·b)/m in fp64, one rounding per operation, in this order."""
    if alpha == 0 and parts.a is None:
        return out.copy_(parts.last)  # as expo: α = 0 gives the last point, −0.0 included
    torch.mul(parts.b, alpha, out=out)
    if parts.a is not None:
        out.add_(parts.a)
    if parts.denominator != 1:
        out.div_(parts.denominator)
    return out.add_(parts.last)


def affine_parts(points: Sequence[torch.Tensor], fit: TrajectoryFit) -> AffineParts:
    """The α-independent parts of one tensor's fit, whole (fp64, 24 bytes per element)."""
    flat_points = [p.reshape(-1) for p in points]
    total, shape = flat_points[-1].numel(), points[-1].shape
    device = points[-1].device
    last, a, b, *scratch = (torch.empty(total, dtype=torch.float64, device=device) for _ in range(5))
    parts = fill_parts(flat_points, fit.arithmetic, slice(0, total), last=last, a=a, b=b, scratch=scratch)
    return AffineParts(parts.last.view(shape), None if parts.a is None else parts.a.view(shape),
                       parts.b.view(shape), parts.denominator, points[-1].dtype)


def evaluate(parts: AffineParts, alpha: float) -> torch.Tensor:
    """The fit at ``alpha`` from :func:`affine_parts`: :func:`fit_tensor`'s bits."""
    value = evaluate_into(parts, alpha, out=torch.empty_like(parts.last))
    return narrowable(value, parts.dtype, scratch=torch.empty_like(value)).to(parts.dtype)
