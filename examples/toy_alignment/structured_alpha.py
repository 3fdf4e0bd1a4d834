"""Protocol v3: does α beyond one number pay? Scalar vs per-module vs per-module-and-depth α.

For each seed: SFT and DPO exactly as protocol v2 (progress_map.py's code), checkpoints
at 5, 10, 20, 50 and 100% of the DPO steps. For each checkpoint, three searches by
`mergekit-expo search` with the same budget of scored candidates and the sampled dev
reward as scorer: (a) the scalar grid, (b) `--space module`, (c) `--space module+depth`
(TPE). Then (d) FusionBench's rule (attention at 0.5 × the scalar α) and (e) the
checkpoint itself, and the test reward of every arm's chosen candidate. The protocol,
its hypothesis and its decision rule are in README.md ("Protocol v3"), committed before
this script first ran.

Usage: python examples/toy_alignment/structured_alpha.py [--seeds 0,1,2] [--out DIR]
       python examples/toy_alignment/structured_alpha.py --quick   (smoke test)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import task  # noqa: E402
from progress_map import DPO_LR, train_checkpoints  # noqa: E402
from run import FULL, QUICK  # noqa: E402
from structured_report import report  # noqa: E402

BIN = Path(sys.executable).parent
PROGRESS = (0.05, 0.10, 0.20, 0.50, 1.00)
V2_ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
BUDGET = 41  # scored candidates per searched arm and checkpoint, α = 0 included
QUICK_PROGRESS, QUICK_BUDGET = (0.25, 1.0), 5
ALPHA_MAX = 2.0
SEARCHED = {"a": "scalar", "b": "module", "c": "module+depth"}


def run_search(folder: Path, sft: Path, checkpoint: Path, arm: str, seed: int, budget: int) -> list:
    """One arm's search with the real command; its rows, in the order they were scored."""
    command = [BIN / "mergekit-expo", "search", sft, checkpoint, "--scorer", "task:dev_reward_sampled",
               "--dtype", "float32", "--out", folder]
    if arm == "a":
        step = ALPHA_MAX / (budget - 1)
        command += ["--alphas", ",".join(f"{i * step:.4g}" for i in range(1, budget))]
    else:
        command += ["--space", SEARCHED[arm], "--sampler", "tpe", "--seed", str(seed),
                    "--alpha-range", f"0,{ALPHA_MAX:g}", "--trials", str(budget - 1)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([str(c) for c in command], cwd=HERE, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"search for arm ({arm}) failed:\n{result.stderr[-3000:]}")
    rows = json.loads((folder / "results.json").read_text())["results"]
    if len(rows) != budget:
        raise SystemExit(f"arm ({arm}) scored {len(rows)} candidates, not {budget}: see {folder}")
    return rows


def chosen(rows: list, allowed=None) -> dict:
    """The protocol's selection: best dev score; ties to the smaller mean coordinate, then
    to the earlier candidate."""
    order = [(i, r) for i, r in enumerate(rows) if allowed is None or allowed(r)]
    index, row = max(order, key=lambda item: (item[1]["score"], -statistics.mean(item[1]["alphas"].values()),
                                              -item[0]))
    return row


def resolvers(sft: Path, checkpoint: Path) -> dict:
    """Per-tensor α of a candidate of each space, through mergekit's planner (as the search)."""
    from mergekit_expo.search.command import model_space
    from mergekit_expo.search.settings import SearchSettings

    return {space: model_space(SearchSettings(space=space, dtype="float32"), str(sft), str(checkpoint),
                               str(sft), str(checkpoint))[1]
            for space in ("scalar", "module", "module+depth")}


def score_candidates(sft: Path, checkpoint: Path, candidates: dict, test_prompts, test_seeds) -> dict:
    """Sampled dev reward and per-prompt test rewards of each arm's candidate, in place."""
    from mergekit_expo.search.hf_engine import HFEngine

    resolve = resolvers(sft, checkpoint)
    engine = HFEngine(str(sft), str(checkpoint), dtype="float32")
    scored = {}
    try:
        greedy = {}
        for alpha in V2_ALPHAS:  # v2's greedy dev metric, recorded, chooses nothing
            engine.set_alpha(alpha)
            greedy[alpha] = task.dev_reward(engine.model, engine.tokenizer)
        for arm, (space, candidate) in candidates.items():
            engine.set_alphas(resolve[space](candidate))
            dev = task.dev_rewards_sampled(engine.model, engine.tokenizer)
            per_prompt = task.test_rewards_per_prompt(engine.model, engine.tokenizer, test_prompts, test_seeds)
            scored[arm] = {"space": space, "candidate": candidate, "dev": sum(dev) / len(dev),  # as the scorer sums
                           "test_per_prompt": per_prompt}
    finally:
        engine.close()
    return {"greedy_dev": greedy, "arms": scored}


def arm_candidates(searches: dict) -> dict:
    """(space, candidate) per arm, from the three searches' rows."""
    best = {arm: chosen(rows) for arm, rows in searches.items()}
    alpha = best["a"]["alphas"]["alpha"]
    v2_grid = {round(a, 9) for a in V2_ALPHAS}
    a7 = chosen(searches["a"], allowed=lambda r: round(r["alphas"]["alpha"], 9) in v2_grid)
    return {
        "a": ("scalar", best["a"]["alphas"]),
        "a7": ("scalar", a7["alphas"]),
        "b": ("module", best["b"]["alphas"]),
        "c": ("module+depth", best["c"]["alphas"]),
        "d": ("module", {"attention": 0.5 * alpha, "mlp": alpha, "other": alpha}),
        "d'": ("module", {"attention": 0.5 * alpha, "mlp": alpha, "other": 0.0}),
        "e": ("scalar", {"alpha": 0.0}),
    }


def one_seed(out: Path, seed: int, settings, progress, budget: int) -> dict:
    started = time.perf_counter()
    sft, checkpoints, steps, trained = train_checkpoints(out, seed, settings, progress)
    test_prompts = task.prompts("test", settings["test_prompts"])
    points = {}
    for fraction, checkpoint in sorted(checkpoints.items()):
        searches = {arm: run_search(out / "search" / f"{fraction:.2f}-{arm}", sft, checkpoint, arm, seed, budget)
                    for arm in SEARCHED}
        candidates = arm_candidates(searches)
        scored = score_candidates(sft, checkpoint, candidates, test_prompts, settings["seeds"])
        for arm in SEARCHED:  # the search's dev score and this process's must agree
            scored["arms"][arm]["search_dev"] = chosen(searches[arm])["score"]
        points[fraction] = {"searches": searches, **scored}
        summary = " ".join(f"{arm}:{statistics.mean(v['test_per_prompt']):.3f}"
                           for arm, v in scored["arms"].items())
        print(f"seed {seed}, {100 * fraction:.0f}%: test {summary}  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return {"seed": seed, "dpo_steps": steps, "train_seconds": round(trained),
            "seconds": round(time.perf_counter() - started), "points": points}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="./toy-alignment-v3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    progress = QUICK_PROGRESS if args.quick else PROGRESS
    budget = QUICK_BUDGET if args.quick else BUDGET
    out = Path(args.out).absolute()
    if (out / "results.json").exists():
        raise SystemExit(f"{out} already holds results: choose a new --out")
    started = time.perf_counter()
    import optuna

    seeds = [one_seed(out / f"seed-{seed}", seed, settings, progress, budget)
             for seed in [int(s) for s in args.seeds.split(",")]]
    summary = {"settings": settings, "dpo_lr": DPO_LR, "progress": list(progress), "budget": budget,
               "alpha_max": ALPHA_MAX, "dev_sampling_seeds": list(task.DEV_SAMPLING_SEEDS),
               "optuna": optuna.__version__, "torch": torch.__version__, "quick": args.quick,
               "seconds": round(time.perf_counter() - started), "seeds": seeds}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    report(out, summary, v2=None if args.quick else HERE / "output-v2" / "results.json")


if __name__ == "__main__":
    main()
