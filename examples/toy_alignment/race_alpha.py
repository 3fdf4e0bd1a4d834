"""Protocols v4 to v7: can racing, or the curve search, choose α with a fraction of the dev
generations?

For each seed: SFT and DPO exactly as protocols v2 and v3 (progress_map.py's code),
checkpoints at 5, 10, 20, 50 and 100% of the DPO steps. For each checkpoint, two scalar
searches by `mergekit-expo search` over the same grid 0, 0.05, …, 2: (a) every candidate on
every dev prompt (v3's arm (a), `task:dev_reward_sampled`) and (r) the same grid with
`--race` (`task:dev_rewards_sampled_rows`, blocks of dev prompts in an order seeded by the
pipeline seed). Protocol v7 adds (s), the same grid with `--strategy curve`; protocol v9 (t), the
curve search at another `--race-tolerance` (``--curve-tolerance``). Then the test
reward of every pick. Each protocol, its hypothesis and its decision rule are in README.md,
committed before its first run.

Usage: python examples/toy_alignment/race_alpha.py [--seeds 0,1,2] [--arms a,r,s,t] [--out DIR]
       python examples/toy_alignment/race_alpha.py --quick   (smoke test)
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import task  # noqa: E402
from progress_map import DPO_LR, train_checkpoints  # noqa: E402
from race_report import report  # noqa: E402
from run import FULL, QUICK  # noqa: E402

BIN = Path(sys.executable).parent
PROGRESS = (0.05, 0.10, 0.20, 0.50, 1.00)
GRID = 41  # 0, 0.05, …, 2.00
QUICK_PROGRESS, QUICK_GRID = (0.25, 1.0), 5
ALPHA_MAX = 2.0
SCORERS = {"a": "task:dev_reward_sampled", "r": "task:dev_rewards_sampled_rows",
           "s": "task:dev_rewards_sampled_rows", "t": "task:dev_rewards_sampled_rows"}
# each with --seed S: the rows' order
STRATEGIES = {"r": ["--race"], "s": ["--strategy", "curve"], "t": ["--strategy", "curve"]}


def run_search(folder: Path, sft: Path, checkpoint: Path, arm: str, seed: int, grid: int,
               tolerance=None, curve_tolerance=None) -> dict:
    """One arm's search with the real command: its results.json and stderr's race line."""
    step = ALPHA_MAX / (grid - 1)
    command = [BIN / "mergekit-expo", "search", sft, checkpoint, "--scorer", SCORERS[arm],
               "--dtype", "float32", "--out", folder,
               "--alphas", ",".join(f"{i * step:.4g}" for i in range(1, grid))]
    if arm in STRATEGIES:
        command += [*STRATEGIES[arm], "--seed", str(seed)]
        command += ["--race-tolerance", str(tolerance)] if tolerance is not None and arm == "r" else []
        command += ["--race-tolerance", str(curve_tolerance)] if arm == "t" else []
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    result = subprocess.run([str(c) for c in command], cwd=HERE, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"search for arm ({arm}) failed:\n{result.stderr[-3000:]}")
    found = json.loads((folder / "results.json").read_text())
    unscored = len((found.get("race") or {}).get("unscored") or [])  # the curve search's
    if len(found["results"]) + unscored != grid:
        raise SystemExit(f"arm ({arm}) has {len(found['results'])} candidates, not {grid}: see {folder}")
    summary = [line for line in result.stderr.splitlines() if line.startswith(("race:", "curve:"))]
    return {"results": found["results"], "race": found.get("race"),
            "race_line": summary[-1] if summary else None, "seconds": round(time.perf_counter() - started, 1)}


def chosen(rows: list) -> dict:
    """The protocol's selection among the candidates still in (every one in arm (a)): the
    highest dev score; ties to the smaller α, then to the earlier candidate."""
    order = [(i, r) for i, r in enumerate(rows) if r.get("dropped_in") is None and r.get("retired_in") is None]
    return max(order, key=lambda item: (item[1]["score"], -item[1]["alphas"]["alpha"], -item[0]))[1]


def score_picks(sft: Path, checkpoint: Path, alphas: dict, test_prompts, test_seeds) -> dict:
    """Per-prompt test rewards of each pick, and (a)'s pick's per-prompt sampled dev reward
    (for the interval of its score), in place with the search's own engine."""
    from mergekit_expo.search.hf_engine import HFEngine

    engine = HFEngine(str(sft), str(checkpoint), dtype="float32")
    found = {}
    try:
        for arm, alpha in alphas.items():
            engine.set_alpha(alpha)
            per_prompt = task.test_rewards_per_prompt(engine.model, engine.tokenizer, test_prompts, test_seeds)
            found[arm] = {"alpha": alpha, "test_per_prompt": per_prompt}
        engine.set_alpha(alphas["a"])
        found["a"]["dev_per_prompt"] = task.dev_rewards_sampled(engine.model, engine.tokenizer)
    finally:
        engine.close()
    return found


def trained_before(out: Path):
    """The SFT model and DPO checkpoints an earlier run of this seed trained in ``out`` (the
    same code and seed give the same weights): a run cut short resumes at its searches."""
    if not (out / "training.json").is_file():
        return None
    saved = json.loads((out / "training.json").read_text())
    checkpoints = {float(k): Path(v) for k, v in saved["checkpoints"].items()}
    print(f"reusing the models trained in {out} ({saved['seconds']:.0f} s of training)", flush=True)
    return Path(saved["sft"]), checkpoints, saved["steps"], saved["seconds"]


def one_seed(out: Path, seed: int, settings, progress, grid: int, tolerance=None, arms=("a", "r"),
             curve_tolerance=None) -> dict:
    started = time.perf_counter()
    sft, checkpoints, steps, trained = trained_before(out) or train_checkpoints(out, seed, settings, progress)
    (out / "training.json").write_text(json.dumps({"sft": str(sft), "steps": steps, "seconds": trained,
                                                   "checkpoints": {f"{k:.2f}": str(v) for k, v in
                                                                   checkpoints.items()}}))
    test_prompts = task.prompts("test", settings["test_prompts"])
    points = {}
    for fraction, checkpoint in sorted(checkpoints.items()):
        searches = {arm: run_search(out / "search" / f"{fraction:.2f}-{arm}", sft, checkpoint, arm, seed,
                                    grid, tolerance, curve_tolerance) for arm in arms}
        picks = {arm: chosen(search["results"])["alphas"]["alpha"] for arm, search in searches.items()}
        arms = score_picks(sft, checkpoint, picks, test_prompts, settings["seeds"])
        arms["a"]["search_dev"] = chosen(searches["a"]["results"])["score"]
        points[fraction] = {"searches": searches, "arms": arms}
        tests = " ".join(f"{arm}: α={v['alpha']:g} test {sum(v['test_per_prompt']) / len(test_prompts):.3f}"
                         for arm, v in arms.items())
        lines = "; ".join(searches[arm]["race_line"] or "" for arm in arms if arm != "a")
        print(f"seed {seed}, {100 * fraction:.0f}%: {tests}; {lines}  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return {"seed": seed, "dpo_steps": steps, "train_seconds": round(trained),
            "seconds": round(time.perf_counter() - started), "points": points}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="./toy-alignment-v4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    parser.add_argument("--race-tolerance", type=float, help="arm (r)'s --race-tolerance (default: the command's)")
    parser.add_argument("--arms", default="a,r", help="a: full grid, r: --race, s: --strategy curve, "
                                                      "t: --strategy curve --race-tolerance CURVE_TOLERANCE")
    parser.add_argument("--curve-tolerance", type=float, default=4.0, help="arm (t)'s --race-tolerance")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    progress = QUICK_PROGRESS if args.quick else PROGRESS
    grid = QUICK_GRID if args.quick else GRID
    out = Path(args.out).absolute()
    if (out / "results.json").exists():
        raise SystemExit(f"{out} already holds results: choose a new --out")
    started = time.perf_counter()
    seeds = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        seeds.append(one_seed(out / f"seed-{seed}", seed, settings, progress, grid, args.race_tolerance,
                              tuple(args.arms.split(",")), args.curve_tolerance))
        # a run cut short keeps every finished seed
        (out / "seeds-done.json").write_text(json.dumps(seeds, indent=1))
    summary = {"settings": settings, "dpo_lr": DPO_LR, "progress": list(progress), "grid": grid,
               "alpha_max": ALPHA_MAX, "dev_prompts": task.DEV_PROMPTS,
               "dev_sampling_seeds": list(task.DEV_SAMPLING_SEEDS), "torch": torch.__version__,
               "quick": args.quick, "race_tolerance": args.race_tolerance, "arms": args.arms.split(","),
               "curve_tolerance": args.curve_tolerance if "t" in args.arms.split(",") else None,
               "seconds": round(time.perf_counter() - started), "seeds": seeds}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    report(out, summary)


if __name__ == "__main__":
    main()
