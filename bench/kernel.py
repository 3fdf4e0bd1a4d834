"""Throughput of the ExPO kernel on one large tensor, against the alternatives.

Prints elements/s and the fraction of outputs equal to the fp64 result correctly
rounded, all measured in this one run. Usage: python bench/kernel.py [--elements N]
"""

import argparse
import time

import torch

from mergekit_expo.numerics import extrapolate_tensor

ALPHA = 0.3


def candidates(dtype: torch.dtype):
    label = str(dtype).removeprefix("torch.")
    return {
        "expo kernel (fp64 streamed, rounded once)": lambda b, t: extrapolate_tensor(b, t, ALPHA),
        f"plain {label} b + (1+a)(t - b)": lambda b, t: b + (1 + ALPHA) * (t - b),
        f"plain {label} t + a(t - b) (paper script)": lambda b, t: t + ALPHA * (t - b),
        "fp32 upcast, rounded once": lambda b, t: (t.float() + ALPHA * (t.float() - b.float())).to(dtype),
        "torch.lerp (fp32 inside)": lambda b, t: torch.lerp(t, b, -ALPHA),
    }


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
