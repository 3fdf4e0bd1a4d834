"""Where the time of one `mergekit-yaml` merge goes: import, plan, load, kernel, write.

Runs mergekit-yaml's own entry point under cProfile in this process and buckets the
cumulative time of the functions that own each phase.
Usage: python bench/profile_expo.py [--size 0.5B] [--method expo|task_arithmetic]
"""

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

HERE = Path(__file__).parent
PHASES = {  # phase: (file suffix, function name) whose cumulative time it is
    "plan": [("mergekit/plan.py", "plan_to_disk"), ("mergekit/merge.py", "get_architecture_info")],
    "load": [("mergekit/io/tasks.py", "execute@LoadTensor")],
    "kernel": [("mergekit/merge_methods/task_adapter.py", "execute"),
               ("mergekit/merge_methods/passthrough.py", "execute")],
    "write": [("mergekit/io/tasks.py", "execute@SaveTensor"), ("mergekit/io/tasks.py", "execute@FinalizeModel"),
              ("transformers/configuration_utils.py", "save_pretrained")],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="0.5B")
    parser.add_argument("--method", default="expo", choices=["expo", "task_arithmetic", "passthrough"])
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--out-shard-size", default="500M")
    parser.add_argument("--work", default=str(HERE / "results" / "profile"))
    args = parser.parse_args()

    started = time.perf_counter()
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    import mergekit_expo  # noqa: F401
    imported = time.perf_counter() - started
    from run import pair_for

    sft, aligned = pair_for(args.size, Path(args.cache))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = work / f"{args.method}.yml"
    if args.method == "passthrough":  # the floor: one checkpoint read and written by the same writer
        document = {"merge_method": "passthrough", "dtype": "bfloat16", "models": [{"model": str(aligned)}]}
    else:
        parameters = {"alpha": 0.3} if args.method == "expo" else {"weight": 1.3}
        document = {"merge_method": args.method, "base_model": str(sft), "dtype": "bfloat16",
                    "models": [{"model": str(aligned), "parameters": parameters}]}
    config.write_text(yaml.safe_dump(document))
    shard = ["--out-shard-size", args.out_shard_size] if args.out_shard_size != "default" else []
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        mergekit_yaml([str(config), str(work / "out"), *shard, "--no-copy-tokenizer", "--quiet"],
                      standalone_mode=False)
    finally:
        profiler.disable()
    merged = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats
    print(f"{args.size} {args.method}: import {imported:.1f} s, merge {merged:.1f} s")
    accounted = 0.0
    for phase, owners in PHASES.items():
        seconds = sum(_cumulative(stats, file, function) for file, function in owners)
        accounted += seconds
        print(f"  {phase:8} {seconds:7.2f} s  {seconds / merged:6.1%}")
    print(f"  {'other':8} {merged - accounted:7.2f} s  {(merged - accounted) / merged:6.1%}")
    details = {
        "expo arithmetic (extrapolate_tensor)": ("mergekit_expo/numerics.py", "extrapolate_tensor"),
        "finite check (check_finite)": ("mergekit_expo/numerics.py", "check_finite"),
        "safetensors serialization (save_file)": ("safetensors/torch.py", "save_file"),
    }
    for label, (file, function) in details.items():
        seconds = _cumulative(stats, file, function)
        if seconds:
            print(f"  of which {label}: {seconds:.2f} s")


def _cumulative(stats, file_suffix, function):
    name, _, owner = function.partition("@")
    total = 0.0
    for (file, line, func), (_, _, _, cumulative, _) in stats.items():
        if file.endswith(file_suffix) and func == name:
            if owner and not _defined_in_class(file, line, owner):
                continue
            total += cumulative
    return total


def _defined_in_class(file, line, owner):
    lines = Path(file).read_text().splitlines()[:line]
    for text in reversed(lines):
        if text.startswith("class "):
            return text.startswith(f"class {owner}")
    return False


if __name__ == "__main__":
    main()
