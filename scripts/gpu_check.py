"""GPU check: merge a ~1B synthetic pair with `--cuda` and without, compare, time.

Both runs must equal the fp64 result rounded once (the numerics rule of the `expo`
method) and therefore each other. Usage: python scripts/gpu_check.py [--work DIR]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from mergekit_expo.checkpoint import load_all as load
from mergekit_expo.synthetic import PairSpec, write_pair

ONE_B = dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8)


def merge(config, out, *flags):
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "mergekit-yaml"), str(config), str(out),
                    "--out-shard-size", "1B", *flags], check=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="./gpu-check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("Error: no CUDA device is visible: run this on a GPU machine")
    work = Path(args.work).absolute()
    sft, aligned = write_pair(str(work / "models"), PairSpec(**ONE_B, max_shard_size="2GB"))
    config = work / "expo.yml"
    config.write_text(yaml.safe_dump({"merge_method": "expo", "base_model": sft,
                                      "models": [{"model": aligned, "parameters": {"alpha": 0.3}}]}))
    cpu_seconds = merge(config, work / "out-cpu")
    gpu_seconds = merge(config, work / "out-cuda", "--cuda")
    s, a, cpu, gpu = load(sft), load(aligned), load(work / "out-cpu"), load(work / "out-cuda")
    elements = sum(t.numel() for t in a.values())
    agree = all(torch.equal(cpu[k], gpu[k]) for k in a)
    equal = sum(int((gpu[k] == (a[k].double() + 0.3 * (a[k].double() - s[k].double())).to(a[k].dtype)).sum())
                for k in a) / elements
    print(f"{elements / 1e9:.2f}B bf16 parameters on {torch.cuda.get_device_name()}")
    print(f"mergekit-yaml (CPU arithmetic): {cpu_seconds:.1f} s")
    print(f"mergekit-yaml --cuda:           {gpu_seconds:.1f} s ({cpu_seconds / gpu_seconds:.2f}x)")
    print(f"--cuda output equals CPU output bit for bit: {agree}; equal to fp64 rounded once: {equal:.6%}")
    sys.exit(0 if agree and equal >= 0.9999 else 1)


if __name__ == "__main__":
    main()
