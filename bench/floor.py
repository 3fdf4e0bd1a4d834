"""The merge against its floor: `expo` / `passthrough` through the same `mergekit-yaml`.

`merge_method: passthrough` of the aligned model alone pays every fixed cost of a merge
(imports, planning, reading, mergekit's writer); only the second read and the
arithmetic are missing from it. Between the two runs the one-pass probe
(`bench/floor_probe.py`): a merge of both checkpoints whose kernel is a single fused
torch pass, i.e. the second read and a fresh output with almost no arithmetic. So
probe/passthrough is what any two-checkpoint merge pays on this machine, and
expo/probe what the ExPO arithmetic adds. For each writer setting the three run
together (passthrough, probe, expo, then the next repeat...), so they see the same
machine state; ratios are taken per repeat and their medians reported.

Usage: python bench/floor.py [--size 1.1B] [--repeats 3] [--no-probe]
       [--settings "default;500M;500M --async-write"]
"""

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from process_tree import measure  # noqa: E402
from run import command_for, machine, pair_for  # noqa: E402

HERE = Path(__file__).parent
DEFAULT_SETTINGS = "default;500M;500M --async-write;1B --async-write"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.1B")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--work", default=str(HERE / "results" / "floor"))
    parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help="';'-separated: an --out-shard-size ('default' = mergekit's 5B) and extra flags")
    parser.add_argument("--no-probe", action="store_true", help="skip the one-pass probe merge")
    args = parser.parse_args()
    methods = ("passthrough", "expo") if args.no_probe else ("passthrough", "probe", "expo")
    sft, aligned = pair_for(args.size, Path(args.cache))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    print(machine(), f"; {args.size} bf16 pair, alpha={args.alpha}", flush=True)
    rows = []
    for setting in args.settings.split(";"):
        shard, *flags = setting.split()
        for repeat in range(args.repeats):
            pair = {}
            for method in methods:
                out = work / f"out-{method}"
                shutil.rmtree(out, ignore_errors=True)
                command = command_for(method, sft, aligned, args.alpha, out, work, shard) + flags
                result = measure(command, env=env)
                if result.returncode != 0:
                    sys.exit(f"{method} failed: {result.stderr_tail.strip()}")
                pair[method] = result
                shutil.rmtree(out, ignore_errors=True)
            rows.append((setting, pair))
            print(f"  {setting:24} #{repeat}: " + ", ".join(f"{m} {pair[m].seconds:6.2f} s" for m in methods)
                  + f", expo/passthrough {pair['expo'].seconds / pair['passthrough'].seconds:.2f}", flush=True)
    report(rows, methods)


def report(rows, methods):
    ratios = [("expo", "passthrough")] + ([("probe", "passthrough"), ("expo", "probe")] if "probe" in methods else [])
    print(f"\n{'writer setting':24}" + "".join(f"{m + ' s':>14}" for m in methods)
          + "".join(f"{a + '/' + b:>28}" for a, b in ratios) + f"{'expo peak anon GB':>19}")
    for setting in dict.fromkeys(r[0] for r in rows):
        mine = [pair for s, pair in rows if s == setting]
        line = f"{setting:24}" + "".join(f"{statistics.median(p[m].seconds for p in mine):14.2f}" for m in methods)
        for a, b in ratios:
            values = [p[a].seconds / p[b].seconds for p in mine]
            line += f"{statistics.median(values):15.2f} ({min(values):.2f}-{max(values):.2f})"
        print(line + f"{max(p['expo'].peak_anon for p in mine) / 1e9:19.2f}")


if __name__ == "__main__":
    main()
