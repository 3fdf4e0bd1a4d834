"""The merge against its floor: `expo` / `passthrough` through the same `mergekit-yaml`.

`merge_method: passthrough` of the aligned model alone pays every fixed cost of a merge
(imports, planning, reading, mergekit's writer); only the second read and the
arithmetic are missing from it. For each writer setting, the two run as a pair
(passthrough, then expo, then the next pair...), so both see the same machine state;
the ratio is taken per pair and its median reported.

Usage: python bench/floor.py [--size 1.1B] [--repeats 3]
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
    args = parser.parse_args()
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
            for method in ("passthrough", "expo"):
                out = work / f"out-{method}"
                shutil.rmtree(out, ignore_errors=True)
                command = command_for(method, sft, aligned, args.alpha, out, work, shard) + flags
                result = measure(command, env=env)
                if result.returncode != 0:
                    sys.exit(f"{method} failed: {result.stderr_tail.strip()}")
                pair[method] = result
                shutil.rmtree(out, ignore_errors=True)
            rows.append((setting, pair["passthrough"], pair["expo"]))
            print(f"  {setting:24} #{repeat}: passthrough {pair['passthrough'].seconds:6.2f} s, "
                  f"expo {pair['expo'].seconds:6.2f} s, "
                  f"ratio {pair['expo'].seconds / pair['passthrough'].seconds:.2f}", flush=True)
    print(f"\n{'writer setting':24} {'passthrough s':>14} {'expo s':>8} {'expo/passthrough':>17} "
          f"{'expo peak anon GB':>18}")
    for setting in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == setting]
        ratios = [e.seconds / p.seconds for _, p, e in mine]
        print(f"{setting:24} {statistics.median(p.seconds for _, p, _ in mine):14.2f} "
              f"{statistics.median(e.seconds for _, _, e in mine):8.2f} "
              f"{statistics.median(ratios):11.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
              f"{max(e.peak_anon for _, _, e in mine) / 1e9:12.2f}")


if __name__ == "__main__":
    main()
