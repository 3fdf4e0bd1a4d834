"""Throughput of the ExPO kernel on one large tensor, against the alternatives.

Prints elements/s and the fraction of outputs equal to the fp64 result correctly
rounded, all measured in this one run. Usage: python bench/kernel.py [--elements N]
"""

import argparse
import time

import torch

from mergekit_expo.numerics import extrapolate_tensor, stream_fp64

ALPHA = 0.3
UNIT = 2.0 ** -24  # fp32's unit roundoff


def fp32_with_fp64_redo(sft, aligned, alpha=ALPHA, chunk=1 << 18):
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


def candidates(dtype: torch.dtype):
    label = str(dtype).removeprefix("torch.")
    found = {
        "expo kernel (as merges run it)": lambda b, t: extrapolate_tensor(b, t, ALPHA),
        "fp64 stream (expo's path off the CPU or bf16)": lambda b, t: stream_fp64(b, t, ALPHA),
        f"plain {label} b + (1+a)(t - b)": lambda b, t: b + (1 + ALPHA) * (t - b),
        f"plain {label} t + a(t - b) (paper script)": lambda b, t: t + ALPHA * (t - b),
        "fp32 + bound check, fp64 redo (candidate)": lambda b, t: fp32_with_fp64_redo(b, t),
        "fp32 upcast, rounded once": lambda b, t: (t.float() + ALPHA * (t.float() - b.float())).to(dtype),
        "torch.lerp (fp32 inside)": lambda b, t: torch.lerp(t, b, -ALPHA),
    }
    return found


def best_seconds(function, *args, repeats=5):
    function(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--elements", type=int, default=32_000_000)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    sft64 = torch.randn(args.elements, generator=generator, dtype=torch.float64) * 0.02
    aligned64 = sft64 + torch.randn(args.elements, generator=generator, dtype=torch.float64) * 0.002
    sft, aligned = sft64.to(dtype), aligned64.to(dtype)
    exact = (aligned.double() + ALPHA * (aligned.double() - sft.double())).to(dtype)

    print(f"{args.elements / 1e6:.0f}M {args.dtype} elements, alpha={ALPHA}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'method':48} {'Melem/s':>9} {'vs expo':>8} {'correctly rounded':>18}")
    rows = []
    for name, function in candidates(dtype).items():
        seconds = best_seconds(function, sft, aligned)
        equal = (function(sft, aligned) == exact).double().mean().item()
        rows.append((name, args.elements / seconds / 1e6, equal))
    reference = rows[0][1]
    for name, rate, equal in rows:
        print(f"{name:48} {rate:9.0f} {rate / reference:7.2f}x {equal:18.6%}")


if __name__ == "__main__":
    main()
