"""The numba loop behind :mod:`mergekit_expo.fused_kernel` (imported on first use only).

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
def expo_bf16(sft, aligned, out, alpha):
    """out = aligned + (aligned - sft) * alpha on bf16 bit patterns (uint16 arrays), rounded once."""
    for i in range(out.size):
        a = np.float64(_as_float32(np.uint32(aligned[i]) << np.uint32(16)))
        s = np.float64(_as_float32(np.uint32(sft[i]) << np.uint32(16)))
        result = a + (a - s) * alpha
        # The steps of numerics.narrowable: round to odd at 9 stored bits (fp32 holds
        # that exactly), then to nearest-even bf16 on the fp32 bits.
        wide = _as_uint64(result)
        wide = (wide | ((wide & _LOW) + _LOW)) & ~_LOW
        narrow = np.float32(_as_float64(wide))  # exact
        bits = _as_uint32(narrow)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        # NaN never reaches a checkpoint (check_finite raises); keep it a NaN.
        out[i] = np.uint16(0x7FC0) if narrow != narrow else np.uint16(rounded)
