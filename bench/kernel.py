"""Throughput of the ExPO kernel on one large tensor, against the alternatives.

Prints elements/s and the fraction of outputs equal to the fp64 result rounded once
(judged by the tests' reference, which never uses torch's conversion), all measured
in this one run, the candidates timed in turns. Usage: python bench/kernel.py
[--elements N] [--alpha A] [--rounds R]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from mergekit_expo.fused_kernel import bf16_bits, run_in_spans
from mergekit_expo.numerics import check_finite, extrapolate_tensor, stream_fp64

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fp64_reference import round_once  # noqa: E402

ALPHA = 0.3
UNIT = 2.0 ** -24  # fp32's unit roundoff


def fp32_with_fp64_redo(sft, aligned, alpha, chunk=1 << 18):
    """Candidate exact kernel: fp32 arithmetic, and every element whose fp32 result lies
    within a safe error bound of a rounding boundary recomputed in fp64. Measured here to
    decide whether it should replace the fp64 kernel (it is slower in plain torch ops:
    the check costs more passes over memory than fp32 saves)."""
    out = torch.empty_like(aligned)
    flat_out, flat_aligned, flat_sft = out.view(-1), aligned.reshape(-1), sft.reshape(-1)
    scratch = [torch.empty(chunk) for _ in range(3)]
    low, high = (torch.empty(chunk, dtype=out.dtype) for _ in range(2))
    k = abs(alpha)
    for start in range(0, flat_out.numel(), chunk):
        stop = min(flat_out.numel(), start + chunk)
        a, s, r = (buffer[: stop - start] for buffer in scratch)
        lo, hi = low[: stop - start], high[: stop - start]
        a.copy_(flat_aligned[start:stop])
        s.copy_(flat_sft[start:stop])
        torch.sub(a, s, out=r)
        torch.add(a, r, alpha=alpha, out=r)
        # |fp32 result - fp64 result| <= ~6u(|a| + |α|(|a| + |s|)); 16u leaves room for the
        # rounding of r ± bound itself, 2^-140 for subnormals.
        bound = a.abs_().mul_((1 + k) * 16 * UNIT).add_(s.abs_(), alpha=k * 16 * UNIT).add_(2.0 ** -140)
        torch.sub(r, bound, out=s)
        lo.copy_(s)
        torch.add(r, bound, out=s)
        hi.copy_(s)
        flat_out[start:stop].copy_(lo)
        unsure = (lo != hi).nonzero().view(-1) + start
        if unsure.numel():
            flat_out[unsure] = extrapolate_tensor(flat_sft[unsure], flat_aligned[unsure], alpha)
    return out


def two_roundings_kernel():
    """The fused loop as it was before one rounding: narrowed to fp32 by nearest, then to bf16."""
    import numba
    import numpy as np

    from mergekit_expo._bf16_numba import _as_float32, _as_uint32

    @numba.njit(nogil=True)
    def expo_bf16_two_roundings(sft, aligned, out, alpha):
        for i in range(out.size):
            a = np.float64(_as_float32(np.uint32(aligned[i]) << np.uint32(16)))
            s = np.float64(_as_float32(np.uint32(sft[i]) << np.uint32(16)))
            result = np.float32(a + (a - s) * alpha)
            bits = _as_uint32(result)
            nearest_even = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            out[i] = np.uint16(0x7FC0) if result != result else np.uint16(nearest_even)

    return expo_bf16_two_roundings


def stream_two_roundings(sft, aligned, alpha, chunk=1 << 18):
    """The fp64 stream as it was before one rounding: torch's conversion (through fp32)."""
    out = torch.empty_like(aligned)
    flat_out, flat_aligned, flat_sft = out.view(-1), aligned.reshape(-1), sft.reshape(-1)
    a64, d64 = torch.empty(chunk, dtype=torch.float64), torch.empty(chunk, dtype=torch.float64)
    for start in range(0, flat_out.numel(), chunk):
        stop = min(flat_out.numel(), start + chunk)
        a, d = a64[: stop - start], d64[: stop - start]
        a.copy_(flat_aligned[start:stop])
        d.copy_(flat_sft[start:stop])
        torch.sub(a, d, out=d)
        d.mul_(alpha).add_(a)
        flat_out[start:stop].copy_(d)
    return out


def candidates(dtype: torch.dtype, alpha: float):
    label = str(dtype).removeprefix("torch.")
    found = {"expo kernel (as merges run it)": lambda b, t: extrapolate_tensor(b, t, alpha)}
    if dtype == torch.bfloat16:
        from mergekit_expo.fused_kernel import _compiled

        now, before = _compiled(), two_roundings_kernel()

        def as_merges_ran_it(b, t):  # the previous loop, with the finite check a merge adds
            out = run_in_spans(before, b, t, alpha)
            check_finite(out, (b, t), ("sft", "aligned"), alpha, None)
            return out

        found["expo kernel before (as merges ran it)"] = as_merges_ran_it
        found["fused kernel alone, rounding once"] = lambda b, t: run_in_spans(now, b, t, alpha)
        found["fused kernel before, rounding twice via fp32"] = lambda b, t: run_in_spans(before, b, t, alpha)
        # the loop itself, one thread, into an output already touched: its arithmetic alone
        reused = {}

        def loop_only(kernel):
            def run(b, t):
                out = reused.setdefault("out", torch.empty_like(t))
                kernel(bf16_bits(b), bf16_bits(t), bf16_bits(out), float(alpha))
                return out
            return run

        found["fused loop only (1 thread, output reused)"] = loop_only(now)
        found["fused loop only before (1 thread, output reused)"] = loop_only(before)
    found.update({
        "fp64 stream (expo's path off the CPU or bf16)": lambda b, t: stream_fp64(b, t, alpha),
        "fp64 stream before, rounding twice via fp32": lambda b, t: stream_two_roundings(b, t, alpha),
        f"plain {label} b + (1+a)(t - b)": lambda b, t: b + (1 + alpha) * (t - b),
        f"plain {label} t + a(t - b) (paper script)": lambda b, t: t + alpha * (t - b),
        "fp32 + bound check, fp64 redo (candidate)": lambda b, t: fp32_with_fp64_redo(b, t, alpha),
        "fp32 upcast, rounded once": lambda b, t: (t.float() + alpha * (t.float() - b.float())).to(dtype),
        "torch.lerp (fp32 inside)": lambda b, t: torch.lerp(t, b, -alpha),
    })
    return found


def timed_in_turns(functions: dict, *args, rounds=5) -> dict:
    """Wall and CPU seconds of each function in every round, the functions timed in turns
    (a slow spell of the machine hits neighbours alike; CPU time, summed over threads,
    does not count waiting for a core that another process holds)."""
    for function in functions.values():
        function(*args)  # warm-up: compiles, first-touches
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            function(*args)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--elements", type=int, default=32_000_000)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", help="time only the methods whose name contains this text")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    sft64 = torch.randn(args.elements, generator=generator, dtype=torch.float64) * 0.02
    aligned64 = sft64 + torch.randn(args.elements, generator=generator, dtype=torch.float64) * 0.002
    sft, aligned = sft64.to(dtype), aligned64.to(dtype)
    exact = round_once(aligned.double() + args.alpha * (aligned.double() - sft.double()), dtype)

    print(f"{args.elements / 1e6:g}M {args.dtype} elements, alpha={args.alpha!r}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.rounds} rounds")
    print(f"{'method':48} {'Melem/s':>8} {'Melem/CPU-s':>11} {'vs first, median of rounds (min-max)':>37} "
          f"{'rounded once':>13}")
    functions = candidates(dtype, args.alpha)
    if args.methods:
        functions = {name: f for name, f in functions.items() if args.methods in name}
    times = timed_in_turns(functions, sft, aligned, rounds=args.rounds)
    first = times[next(iter(functions))]
    for name, function in functions.items():
        wall, cpu = min(t[0] for t in times[name]), min(t[1] for t in times[name])
        # speed relative to the first row, paired round by round (>1: faster than the first)
        ratios = sorted(a[0] / b[0] for a, b in zip(first, times[name]))
        spread = f"{statistics.median(ratios):.3f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"
        equal = (function(sft, aligned) == exact).double().mean().item()
        print(f"{name:48} {args.elements / wall / 1e6:8.0f} {args.elements / cpu / 1e6:11.0f} {spread:>37} "
              f"{equal:12.6%}")


if __name__ == "__main__":
    main()
