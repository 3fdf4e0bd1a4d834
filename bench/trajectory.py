"""Memory and time of an expo_trajectory merge of a run's checkpoints against expo, in one run.

The pair is bench/run.py's synthetic Llama-shaped bf16 pair for --size; the run adds
--checkpoints − 1 checkpoints on the way from the SFT model to the aligned one (the update
growing with the step, plus noise), and the aligned model is the last checkpoint, so both
merges read the same SFT model and end at the same last point. Both run through plain
`mergekit-yaml` (same --out-shard-size as bench/run.py), interleaved --repeats times as
separate process trees. Reported: wall time, peak RSS and peak RssAnon, and the
trajectory/expo ratio of each, taken per repeat (medians, min–max).

Usage: python bench/trajectory.py [--size 0.5B] [--checkpoints 5] [--repeats 3]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from process_tree import measure  # noqa: E402
from run import machine, pair_for  # noqa: E402

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent
STEP = 100  # checkpoint k is at step 100·k, as a trainer with save_steps=100 writes it


def write_run(sft: Path, aligned: Path, count: int, root: Path):
    """checkpoint-100 ... checkpoint-100·count: the last is the aligned model (a link), the
    others written shard by shard, one tensor of each input in memory at a time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folders = [root / f"checkpoint-{STEP * k}" for k in range(1, count + 1)]
    if all((f / "trainer_state.json").is_file() for f in folders[:-1]) and folders[-1].exists():
        return folders
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    folders[-1].symlink_to(aligned.resolve(), target_is_directory=True)
    generator = torch.Generator().manual_seed(1)
    for k, folder in enumerate(folders[:-1], start=1):
        print(f"writing {folder} ...", flush=True)
        shutil.copytree(aligned, folder, ignore=shutil.ignore_patterns("*.safetensors"))
        for shard in sorted(aligned.glob("*.safetensors")):
            tensors = {}
            with safe_open(sft / shard.name, "pt") as s, safe_open(shard, "pt") as a:
                for name in a.keys():
                    base, end = s.get_tensor(name).float(), a.get_tensor(name).float()
                    noise = torch.randn(base.shape, generator=generator) * (0.3 * float((end - base).std()))
                    tensors[name] = (base + (k / count) * (end - base) + (k / count) * noise).to(torch.bfloat16)
            save_file(tensors, folder / shard.name, metadata={"format": "pt"})
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": STEP * k}))
    return folders


def command(method: str, sft: Path, checkpoints, alpha: float, out: Path, work: Path, shard: str):
    if method == "expo":
        config = {"merge_method": "expo", "base_model": str(sft),
                  "models": [{"model": str(checkpoints[-1]), "parameters": {"alpha": alpha}}]}
    else:  # the last checkpoint is a link to the aligned model: its step is written
        config = {"merge_method": "expo_trajectory", "base_model": str(sft),
                  "models": [{"model": str(c)} for c in checkpoints[:-1]]
                  + [{"model": str(checkpoints[-1]), "parameters": {"step": STEP * len(checkpoints)}}],
                  "parameters": {"alpha": alpha}}
    path = work / f"{method}.yml"
    path.write_text(yaml.safe_dump({**config, "dtype": "bfloat16"}))
    return [str(BIN / "mergekit-yaml"), str(path), str(out), "--out-shard-size", shard, "--no-copy-tokenizer",
            "--quiet"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="0.5B")
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--out-shard-size", default="500M")
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--work", default=str(HERE / "results" / "trajectory"))
    args = parser.parse_args()
    cache, work = Path(args.cache), Path(args.work)
    sft, aligned = pair_for(args.size, cache)
    checkpoints = write_run(sft, aligned, args.checkpoints, cache / args.size / f"run-{args.checkpoints}")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    print(f"{machine()}; {args.size} bf16, {args.checkpoints} checkpoints, alpha={args.alpha}, "
          f"mergekit --out-shard-size {args.out_shard_size}", flush=True)
    runs = []
    for repeat in range(args.repeats):
        pair = {}
        for method in ("expo", "expo_trajectory"):  # interleaved: the same machine state for both
            out = work / f"out-{method}"
            shutil.rmtree(out, ignore_errors=True)
            result = measure(command(method, sft, checkpoints, args.alpha, out, work, args.out_shard_size),
                             env=env)
            if result.returncode != 0:
                sys.exit(f"{method} failed: {result.stderr_tail.strip()}")
            pair[method] = result
            shutil.rmtree(out, ignore_errors=True)
            print(f"  #{repeat} {method:16} {result.seconds:7.2f} s  peak RSS {result.peak_rss / 1e9:5.2f} GB  "
                  f"peak anon {result.peak_anon / 1e9:5.2f} GB", flush=True)
        runs.append(pair)
    report(runs)


def report(runs):
    print(f"\n{'':16}{'wall s':>10}{'peak RSS GB':>13}{'peak anon GB':>14}")
    for method in ("expo", "expo_trajectory"):
        rss, anon = (max(getattr(r[method], field) for r in runs) / 1e9 for field in ("peak_rss", "peak_anon"))
        print(f"{method:16}{statistics.median(r[method].seconds for r in runs):10.2f}{rss:13.2f}{anon:14.2f}")
    for label, field in (("wall time", "seconds"), ("peak RSS", "peak_rss"), ("peak anon", "peak_anon")):
        ratios = [getattr(r["expo_trajectory"], field) / getattr(r["expo"], field) for r in runs]
        print(f"trajectory/expo {label:10} {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
