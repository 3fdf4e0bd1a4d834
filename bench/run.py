"""Speed, memory and fidelity of `expo` against the alternatives, in one run.

For each size, a synthetic Llama-shaped bf16 pair (aligned = SFT + small noise,
sharded like the Hub's) is generated into --cache, then these run interleaved,
--repeats times each, as separate process trees:

  expo             mergekit-yaml with merge_method: expo
  task_arithmetic  mergekit-yaml, task_arithmetic with weight 1+α (same formula)
  paper            the paper's released procedure (bench/paper_procedure.py)

Prints a table (median and min-max), ratios against expo, and writes CSV + PNG.
Usage: python bench/run.py [--sizes 0.1B,0.5B,1.5B,3B] [--repeats 3] [--scale]
"""

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from fp64_reference import round_once  # noqa: E402  (never torch's two-rounding conversion)

from mergekit_expo.checkpoint import read_tensor, shard_of  # noqa: E402
from mergekit_expo.synthetic import PairSpec  # noqa: E402
from process_tree import measure  # noqa: E402
from random_pair import write_random_pair  # noqa: E402

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent
SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "0.01B": (256, 704, 8, 4, 4, 8192),
    "0.1B": (768, 2048, 12, 12, 4, 16384),
    "0.5B": (1024, 2816, 32, 16, 4, 32000),
    "1.1B": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B's shape
    "1.5B": (2048, 5632, 24, 16, 4, 32000),
    "3B": (2560, 6912, 32, 20, 4, 32000),
    "7B": (4096, 11008, 32, 32, 32, 32000),
}
METHODS = ("expo", "task_arithmetic", "paper")  # also: passthrough, probe (bench/floor.py)


def pair_for(size: str, cache: Path):
    hidden, intermediate, layers, heads, kv_heads, vocab = SHAPES[size]
    root = cache / size
    if not (root / "aligned" / "model.safetensors.index.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        spec = PairSpec(hidden_size=hidden, intermediate_size=intermediate, num_layers=layers,
                        num_heads=heads, num_kv_heads=kv_heads, delta_scale=0.05, dtype=torch.bfloat16)
        print(f"generating the {size} pair in {root} ...", flush=True)
        write_random_pair(str(root), spec, vocab, shard_bytes=2_000_000_000)
    return root / "sft", root / "aligned"


def command_for(method, sft, aligned, alpha, out, work, shard_size):
    if method == "paper":
        return [sys.executable, str(HERE / "paper_procedure.py"), str(sft), str(aligned), str(alpha), str(out)]
    if method == "expo":
        config = {"merge_method": "expo", "base_model": str(sft),
                  "models": [{"model": str(aligned), "parameters": {"alpha": alpha}}], "dtype": "bfloat16"}
    elif method == "passthrough":  # the floor: read one checkpoint, write it through mergekit
        config = {"merge_method": "passthrough", "models": [{"model": str(aligned)}], "dtype": "bfloat16"}
    elif method == "probe":  # bench/floor_probe.py: both checkpoints, one fused torch pass
        config = {"merge_method": "one_pass_probe", "base_model": str(sft),
                  "models": [{"model": str(aligned)}], "dtype": "bfloat16"}
    else:
        config = {"merge_method": "task_arithmetic", "base_model": str(sft),
                  "models": [{"model": str(aligned), "parameters": {"weight": 1 + alpha}}],
                  "dtype": "bfloat16"}
    path = work / f"{method}.yml"
    path.write_text(yaml.safe_dump(config))
    shard = ["--out-shard-size", shard_size] if shard_size != "default" else []
    # the probe's method exists only in its own runner; everything else is plain mergekit-yaml
    runner = [sys.executable, str(HERE / "floor_probe.py")] if method == "probe" else [str(BIN / "mergekit-yaml")]
    return [*runner, str(path), str(out), *shard, "--no-copy-tokenizer", "--quiet"]


def fidelity(out: Path, sft: Path, aligned: Path, alpha: float) -> float:
    """Fraction of output elements equal to the fp64 result rounded once."""
    outputs, sfts, aligneds = shard_of(out), shard_of(sft), shard_of(aligned)
    equal = total = 0
    for name, file in outputs.items():
        result = read_tensor(file, name)
        s, a = read_tensor(sfts[name], name).double(), read_tensor(aligneds[name], name).double()
        exact = round_once(a + alpha * (a - s), result.dtype)
        equal += int((result == exact).sum())
        total += result.numel()
    return equal / total


def machine() -> str:
    memory = next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]
    cpu = next((line.split(":")[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return (f"{os.cpu_count()} cores ({cpu}), {int(memory) / 2**20:.0f} GiB RAM, torch "
            f"{torch.__version__}, Python {platform.python_version()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.1B,0.5B,1.5B,3B")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--out-shard-size", default="500M",
                        help="mergekit's --out-shard-size for expo and task_arithmetic")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--scale", action="store_true",
                        help="one 7B-shaped pair whose two checkpoints exceed 80%% of RAM, one repeat")
    args = parser.parse_args()
    sizes = ["7B"] if args.scale else args.sizes.split(",")
    repeats = 1 if args.scale else args.repeats
    methods = args.methods.split(",")
    cache, out = Path(args.cache), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    print(machine(), flush=True)

    if args.scale:
        model_bytes = 6.7e9 * 2 * 1.05  # one bf16 7B checkpoint
        cached = (cache / "7B" / "aligned" / "model.safetensors.index.json").exists()
        need = model_bytes * (1 if cached else 3)  # the output, plus the pair if not cached
        free = shutil.disk_usage(cache if cache.exists() else cache.parent).free
        if free < need:
            sys.exit(f"Error: --scale needs about {need / 1e9:.0f} GB of free disk in {cache}, "
                     f"{free / 1e9:.0f} GB are free: free space or pass --cache elsewhere")

    rows = []
    for size in sizes:
        sft, aligned = pair_for(size, cache)
        work = out / f"work-{size}"
        work.mkdir(exist_ok=True)
        for repeat in range(repeats):
            for method in methods:  # interleaved: A B C A B C ...
                target = work / f"out-{method}"
                shutil.rmtree(target, ignore_errors=True)
                result = measure(command_for(method, sft, aligned, args.alpha, target, work,
                                             args.out_shard_size), env=env)
                row = {"size": size, "method": method, "repeat": repeat,
                       "seconds": round(result.seconds, 2),
                       "peak_rss_gb": round(result.peak_rss / 1e9, 2),
                       "peak_anon_gb": round(result.peak_anon / 1e9, 2),
                       "completed": result.returncode == 0, "fidelity": None}
                if result.returncode == 0 and repeat == 0:
                    row["fidelity"] = round(fidelity(target, sft, aligned, args.alpha), 6)
                elif result.returncode != 0:
                    print(f"  {method} failed: {result.stderr_tail.strip().splitlines()[-1:]}")
                rows.append(row)
                print(f"  {size} {method} #{repeat}: {row}", flush=True)
                shutil.rmtree(target, ignore_errors=True)
    report(rows, out, machine(), args)


def report(rows, out: Path, machine_text: str, args):
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "machine.json").write_text(json.dumps({"machine": machine_text, "alpha": args.alpha,
                                                  "out_shard_size": args.out_shard_size}, indent=2))
    print(f"\n{machine_text}; alpha={args.alpha}; mergekit --out-shard-size {args.out_shard_size}")
    header = (f"{'size':>6} {'method':>16} {'wall s (median, min-max)':>26} {'vs expo':>8} "
              f"{'peak anon GB':>13} {'vs expo':>8} {'peak RSS GB':>12} {'fidelity':>9}")
    print(header)
    summary = {}
    for size in dict.fromkeys(r["size"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            done = [r for r in rows if r["size"] == size and r["method"] == method and r["completed"]]
            if not done:
                print(f"{size:>6} {method:>16} {'did not complete':>26}")
                continue
            seconds = [r["seconds"] for r in done]
            anon = max(r["peak_anon_gb"] for r in done)
            rss = max(r["peak_rss_gb"] for r in done)
            fid = next((r["fidelity"] for r in done if r["fidelity"] is not None), None)
            summary[size, method] = (statistics.median(seconds), anon)
            base = summary.get((size, "expo"))
            ratio_t = f"{statistics.median(seconds) / base[0]:.2f}x" if base else "-"
            ratio_m = f"{anon / base[1]:.2f}x" if base and base[1] else "-"
            print(f"{size:>6} {method:>16} {statistics.median(seconds):9.1f} ({min(seconds):.1f}-{max(seconds):.1f})"
                  f"{'':>8} {ratio_t:>8} {anon:13.2f} {ratio_m:>8} {rss:12.2f} "
                  f"{'' if fid is None else f'{fid:.4%}':>9}")
    chart(rows, out / "results.png")
    print(f"wrote {out / 'results.csv'}, {out / 'results.png'}")


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        xs, times, mems = [], [], []
        for size in sizes:
            done = [r for r in rows if r["size"] == size and r["method"] == method and r["completed"]]
            if done:
                xs.append(size)
                times.append(statistics.median(r["seconds"] for r in done))
                mems.append(max(r["peak_anon_gb"] for r in done))
        left.plot(xs, times, marker="o", label=method)
        right.plot(xs, mems, marker="o", label=method)
    left.set(title="wall time (median)", xlabel="model size", ylabel="seconds")
    right.set(title="peak anonymous memory", xlabel="model size", ylabel="GB")
    left.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
