"""The numba loops behind :mod:`mergekit_expo.fused_kernel` (imported on first use only).

Defined at module level so that numba can cache the compiled loop between runs.
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


def _bitcast(source, target):
    """An intrinsic reinterpreting the bits of a ``source`` value as ``target`` (same width)."""

    def cast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(source), codegen

    cast.__name__ = f"_as_{target}"  # numba names the intrinsic after its function
    return intrinsic(cast)


_as_float32 = _bitcast(types.uint32, types.float32)
_as_uint32 = _bitcast(types.float32, types.uint32)
_as_float64 = _bitcast(types.uint64, types.float64)
_as_uint64 = _bitcast(types.float64, types.uint64)


# As numerics.narrowable for bf16: cut 43 of fp64's 52 significand bits, rounding to odd.
_LOW = np.uint64((1 << 43) - 1)


def _jit(function):
    # nogil: the caller runs spans on several Python threads (no numba thread pool,
    # so nothing to clash with torch's OpenMP, with fork, or with concurrent callers).
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # no writable cache folder: compile in memory each run
        return numba.njit(nogil=True)(function)


@_jit
def _widen(bits):
    return np.float64(_as_float32(np.uint32(bits) << np.uint32(16)))


@_jit
def _to_bf16(result):
    # The steps of numerics.narrowable: round to odd at 9 stored bits (fp32 holds that
    # exactly), then to nearest-even bf16 on the fp32 bits; NaN stays a NaN.
    wide = _as_uint64(result)
    wide = (wide | ((wide & _LOW) + _LOW)) & ~_LOW
    narrow = np.float32(_as_float64(wide))  # exact
    bits = _as_uint32(narrow)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.uint16(0x7FC0) if narrow != narrow else np.uint16(rounded)


@_jit
def expo_bf16(sft, aligned, out, alpha):
    """out = aligned + (aligned - sft) * alpha on bf16 bit patterns (uint16 arrays), rounded once."""
    for i in range(out.size):
        a, s = _widen(aligned[i]), _widen(sft[i])
        out[i] = _to_bf16(a + (a - s) * alpha)


_BLOCK = 2048  # elements per pass over the points: fp64 buffers that stay in L1/L2


@_jit
def trajectory_bf16(points, last, indices, p_weights, q_weights, has_a, denominator, alpha, out):
    """out = θ[last] + (Σ P·(θ[last] − θ[i]) + α·Σ Q·(θ[last] − θ[i])) / denominator on bf16 bit
    patterns (``points``: a tuple of uint16 arrays), the fp64 steps of
    mergekit_expo.trajectory.numerics in its order, rounded once. Block by block, one point at a
    time, so that the inner loops vectorise."""
    top, a, b = np.empty(_BLOCK), np.empty(_BLOCK), np.empty(_BLOCK)
    copy = alpha == 0 and not has_a  # as expo: α = 0 gives the last point, −0.0 included
    for start in range(0, out.size, _BLOCK):
        stop = min(out.size, start + _BLOCK)
        n, target = stop - start, out[start:stop]  # views: indices from 0, which LLVM vectorises
        _widen_into(points[last][start:stop], top)
        started_a = started_b = False
        for t in range(indices.size):
            source = points[indices[t]][start:stop]
            if p_weights[t] != 0:
                _accumulate(top, source, p_weights[t], a, started_a)
                started_a = True
            if q_weights[t] != 0:
                _accumulate(top, source, q_weights[t], b, started_b)
                started_b = True
        if copy:
            for i in range(n):
                target[i] = _to_bf16(top[i])
        elif has_a:
            for i in range(n):
                target[i] = _to_bf16((b[i] * alpha + a[i]) / denominator + top[i])
        else:
            for i in range(n):
                target[i] = _to_bf16((b[i] * alpha) / denominator + top[i])


@_jit
def _widen_into(source, target):
    for i in range(source.size):
        target[i] = _widen(source[i])


@_jit
def _accumulate(top, source, weight, total, started):
    """total (+)= (top − source)·weight; the first term is stored as it is (signs of zero kept)."""
    if started:
        for i in range(source.size):
            total[i] = total[i] + (top[i] - _widen(source[i])) * weight
    else:
        for i in range(source.size):
            total[i] = (top[i] - _widen(source[i])) * weight
