"""The curve search replayed offline at other ``--race-tolerance`` values on full searches already run.

Reads every ``search-*-full`` folder that ``bench/search_race.py`` left under ``--work`` folders
(the per-row scores in its ``answers/``), replays ``--strategy curve`` on them
(:mod:`mergekit_expo.search.strategies.offline`, the strategy's own code) under ``--orders`` row
orders at each tolerance, and prints per case: the share of the full search's rows read (mean and
largest over the orders), the units (each sets the weights once), and in how many orders the pick's
full-data score lies inside the full search's 95% interval of its best. No model is run.

Usage: python bench/curve_tolerance.py --work bench/results/search-race [--work ...]
       [--tolerances 3,4,5] [--orders 20]
"""

import argparse
import json
import statistics
from pathlib import Path

from mergekit_expo.search.registry import STRATEGIES
from mergekit_expo.search.rows import best as pick_of
from mergekit_expo.search.strategies.offline import run_offline
from search_race import per_row_scores  # bench/ is the script's folder: on sys.path


def cases(works) -> dict:
    found = {}
    for work in works:
        for out in sorted(Path(work).glob("*/search-*-full")):
            if (out / "answers").is_dir():
                name = f"{Path(work).name}: {out.name.removeprefix('search-').removesuffix('-full')}"
                rows = {r["alphas"]["alpha"]: r for r in json.loads((out / "results.json").read_text())["results"]}
                found[name] = (per_row_scores(out), rows)
    return found


def replay(table: dict, rows: dict, tolerance: float, orders: int) -> dict:
    best = rows[max(table, key=lambda a: (sum(table[a]) / len(table[a]), -a))]
    curve = STRATEGIES.get("curve").load()
    shares, units, inside = [], [], 0
    for seed in range(orders):
        found, record, asked = run_offline(curve, table, seed=seed, options={"tolerance": tolerance})
        shares.append(record["rows_scored"] / record["rows_full"])
        units.append(len(asked))
        inside += best["low"] <= rows[pick_of(found, None).alpha]["score"] <= best["high"]
    return {"mean": statistics.mean(shares), "max": max(shares), "units": statistics.mean(units),
            "inside": inside}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", action="append", required=True, help="a --work folder of bench/search_race.py")
    parser.add_argument("--tolerances", default="3,3.5,4,4.5,5")
    parser.add_argument("--orders", type=int, default=20)
    args = parser.parse_args()
    tolerances = [float(value) for value in args.tolerances.split(",")]
    found = cases(args.work)
    print(f"the curve search replayed on {len(found)} full searches, {args.orders} row orders each (seeds 0-"
          f"{args.orders - 1}): rows read / full search's (mean, max), units, picks inside the best's 95%")
    print(f"{'case':58s}" + "".join(f" | tolerance {t:<4g}          " for t in tolerances))
    totals = {t: [] for t in tolerances}
    for name, (table, rows) in found.items():
        cells = []
        for t in tolerances:
            result = replay(table, rows, t, args.orders)
            totals[t].append(result)
            cells.append(f" | {result['mean']:.3f} {result['max']:.3f} {result['units']:5.1f} "
                         f"{result['inside']:2d}/{args.orders}")
        print(f"{name[:58]:58s}" + "".join(cells))
    summary = []
    for t in tolerances:
        outside = sum(args.orders - r["inside"] for r in totals[t])
        summary.append(f" | {statistics.mean(r['mean'] for r in totals[t]):.3f}  outside {outside:3d}/"
                       f"{args.orders * len(totals[t]):<4d} ")
    print(f"{'all cases: mean share, picks outside':58s}" + "".join(summary))


if __name__ == "__main__":
    main()
