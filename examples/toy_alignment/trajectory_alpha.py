"""Protocol v8: does a fit through a run's last checkpoints beat ExPO from the last one?

For each of v7's trained runs (seeds 10, 11, 12: SFT, then DPO with checkpoints at 5, 10, 20, 50
and 100% of its 250 steps) and each stop (20, 50, 100%: the run as if it had stopped there), two
arms at the same search budget, each `mergekit-expo search --strategy full` over the grid
0, 0.05, …, 2 on the sampled dev reward: (e) ExPO from the stop's checkpoint (SFT and that
checkpoint); (t) `expo_trajectory` through the last three checkpoints up to the stop (SFT left out
of the fit: `--window 3`). Then the test reward of both picks. The protocol, its hypothesis and its
decision rule are in README.md ("Protocol v8"), committed before this script first ran.

Usage: python examples/toy_alignment/trajectory_alpha.py --from output-v7 --out output-v8
       python examples/toy_alignment/trajectory_alpha.py --quick --out DIR   (smoke test)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import task  # noqa: E402
from progress_map import train_checkpoints  # noqa: E402
from run import FULL, QUICK  # noqa: E402
from structured_report import interval, resample_sets  # noqa: E402

BIN = Path(sys.executable).parent
STOPS, QUICK_STOPS = (0.20, 0.50, 1.00), (0.50, 1.00)
GRID, QUICK_GRID, ALPHA_MAX, WINDOW = 41, 5, 2.0, 3
QUICK_PROGRESS = (0.25, 0.5, 0.75, 1.0)
SCORER = "task:dev_rewards_sampled_rows"


def steps_of(fraction: float, total: int) -> int:
    return max(1, round(fraction * total))  # as progress_map saves them


def run_search(folder: Path, sft: Path, points: list, steps: list, seed: int, grid: int) -> dict:
    """One arm's full search with the real command: its results.json rows and its pick."""
    step = ALPHA_MAX / (grid - 1)
    command = [BIN / "mergekit-expo", "search", sft, *points, "--scorer", SCORER, "--dtype", "float32",
               "--strategy", "full", "--seed", str(seed), "--out", folder,
               "--alphas", ",".join(f"{i * step:.4g}" for i in range(1, grid))]
    if len(points) > 1:
        command += ["--steps", ",".join(map(str, steps)), "--window", str(WINDOW)]
    started = time.perf_counter()
    result = subprocess.run([str(c) for c in command], cwd=HERE, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"search {folder.name} failed:\n{result.stderr[-3000:]}")
    rows = json.loads((folder / "results.json").read_text())["results"]
    pick = max(rows, key=lambda r: (r["score"], -r["alphas"]["alpha"]))
    return {"results": rows, "alpha": pick["alphas"]["alpha"], "seconds": round(time.perf_counter() - started, 1)}


def test_rewards(sft: Path, points: list, steps: list, alpha: float, settings) -> list:
    from mergekit_expo.search.hf_engine import HFEngine

    trajectory = dict(steps=steps, window=WINDOW) if len(points) > 1 else {}
    engine = HFEngine(str(sft), *map(str, points), dtype="float32", **trajectory)
    try:
        engine.set_alpha(alpha)
        return task.test_rewards_per_prompt(engine.model, engine.tokenizer,
                                            task.prompts("test", settings["test_prompts"]), settings["seeds"])
    finally:
        engine.close()


def one_point(out: Path, sft: Path, checkpoints: dict, total: int, stop: float, seed: int, grid: int,
              settings) -> dict:
    upto = sorted(f for f in checkpoints if f <= stop + 1e-9)
    arms = {"e": upto[-1:], "t": upto[-WINDOW:]}
    found = {}
    for arm, fractions in arms.items():
        points, steps = [checkpoints[f] for f in fractions], [steps_of(f, total) for f in fractions]
        search = run_search(out / f"{stop:.2f}-{arm}", sft, points, steps, seed, grid)
        found[arm] = dict(search, fractions=fractions, steps=steps,
                          test_per_prompt=test_rewards(sft, points, steps, search["alpha"], settings))
    return found


def report(out: Path, summary: dict) -> dict:
    rows = [(s["seed"], float(stop), point) for s in summary["seeds"] for stop, point in s["points"].items()]
    sets = resample_sets(len(rows[0][2]["e"]["test_per_prompt"]))
    lines = ["# Protocol v8 results", "", "| seed | stop | α (e) | α (t) | test (e) | test (t) | "
             "Δ = t − e [paired 95%] |", "|---|---|---|---|---|---|---|"]
    deltas = []
    for seed, stop, point in sorted(rows, key=lambda r: (r[0], r[1])):
        e, t = point["e"]["test_per_prompt"], point["t"]["test_per_prompt"]
        difference = [b - a for a, b in zip(e, t)]
        deltas.append(difference)
        low, high = interval(difference, sets)
        lines.append(f"| {seed} | {100 * stop:.0f}% | {point['e']['alpha']:.2f} | {point['t']['alpha']:.2f} | "
                     f"{statistics.mean(e):.4f} | {statistics.mean(t):.4f} | {statistics.mean(difference):+.4f} "
                     f"[{low:+.4f}, {high:+.4f}] |")
    pooled = [statistics.mean(column) for column in zip(*deltas)]  # per prompt, the mean Δ over the points
    low, high = interval(pooled, sets)
    mean = statistics.mean(pooled)
    verdict = "trajectory better" if low > 0 else "trajectory worse" if high < 0 else "no difference shown"
    per_stop = {}
    for stop in sorted({r[1] for r in rows}):
        part = [d for d, r in zip(deltas, sorted(rows, key=lambda r: (r[0], r[1]))) if r[1] == stop]
        per_stop[stop] = statistics.mean(statistics.mean(d) for d in part)
    lines += ["", f"**Verdict by the pre-stated rule: {verdict}** (mean Δ over the {len(rows)} points "
                  f"{mean:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}] from a paired bootstrap over test prompts).",
              "", "Mean Δ per stop: " + ", ".join(f"{100 * s:.0f}%: {d:+.4f}" for s, d in per_stop.items()), ""]
    found = {"verdict": verdict, "mean_delta": mean, "interval": [low, high],
             "per_stop": {f"{s:.2f}": d for s, d in per_stop.items()}}
    (out / "results.md").write_text("\n".join(lines))
    (out / "verdict.json").write_text(json.dumps(found, indent=1))
    print("\n".join(lines))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="trained", help="a race_alpha.py --out whose seed-*/training.json to reuse")
    parser.add_argument("--seeds", default="10,11,12")
    parser.add_argument("--out", default="./toy-alignment-v8")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    stops, grid = (QUICK_STOPS, QUICK_GRID) if args.quick else (STOPS, GRID)
    out = Path(args.out).absolute()
    if (out / "results.json").exists():
        raise SystemExit(f"{out} already holds results: choose a new --out")
    started, seeds = time.perf_counter(), []
    for seed in [int(s) for s in args.seeds.split(",")]:
        folder = out / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        if args.trained:
            trained = json.loads((Path(args.trained) / f"seed-{seed}" / "training.json").read_text())
            sft, total = Path(trained["sft"]), trained["steps"]
            checkpoints = {float(k): Path(v) for k, v in trained["checkpoints"].items()}
        else:
            sft, checkpoints, total, _ = train_checkpoints(folder, seed, settings, QUICK_PROGRESS)
        points = {f"{stop:.2f}": one_point(folder, sft, checkpoints, total, stop, seed, grid, settings)
                  for stop in stops}
        seeds.append({"seed": seed, "points": points})
    summary = {"settings": settings, "grid": grid, "alpha_max": ALPHA_MAX, "window": WINDOW,
               "stops": list(stops), "quick": args.quick, "from": args.trained,
               "seconds": round(time.perf_counter() - started), "seeds": seeds}
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    report(out, summary)


if __name__ == "__main__":
    main()
