"""One search worker against two on one --out, and what a structured candidate costs.

Same synthetic Llama-shaped pair, same preference data, same --alphas grid:

- one worker: `mergekit-expo search` alone (one thread: OMP_NUM_THREADS=1)
- two workers: the same command twice, started together on one --out (one thread each)

Reported: wall time of each run, the speed-up, candidates scored twice (duplicates; the
study must have none), trials closed unscored, each worker's share and idle time (waiting
for the other's last candidate).

Then, in this process, the per-candidate cost of a structured candidate (module+depth:
filters and gradient lists planned by mergekit) against a scalar one: resolving the
candidate's per-tensor α through mergekit's planner, and setting the weights in place.

Usage: python bench/search_workers.py [--hidden 256 --layers 8] [--rows 32] [--candidates 12]
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else (shutil.which(name) or name)


def make_inputs(work: Path, hidden: int, layers: int, rows: int):
    from mergekit_expo.synthetic import PairSpec, write_pair

    sft, aligned = write_pair(str(work / "pair"), PairSpec(hidden_size=hidden, intermediate_size=2 * hidden,
                                                           num_layers=layers, delta_scale=0.3))
    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(60)}" for _ in range(n))  # noqa: E731
    (work / "prefs.jsonl").write_text("".join(
        json.dumps({"prompt": words(rng.randrange(8, 24)), "chosen": words(24), "rejected": words(24)}) + "\n"
        for _ in range(rows)))
    return sft, aligned


def run_workers(work: Path, out: str, count: int, sft, aligned, alphas: str):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [tool("mergekit-expo"), "search", sft, aligned, "--data", "prefs.jsonl", "--alphas", alphas,
               "--out", out]
    start = time.perf_counter()
    workers = [subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(count)]
    logs = []
    for worker in workers:
        _, stderr = worker.communicate()
        if worker.returncode:
            sys.exit(stderr[-3000:])
        logs.append(next(line for line in stderr.splitlines() if line.startswith("this worker scored")))
    return time.perf_counter() - start, logs


def study_counts(folder: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="expo-search", storage=f"sqlite:///{folder / 'study.db'}").get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    scored = [json.dumps(t.user_attrs["candidate"], sort_keys=True) for t in complete]
    # The scoring phase: first candidate started to last one scored (start-up excluded).
    phase = (max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)).total_seconds()
    return len(scored), len(scored) - len(set(scored)), sum(t.state.name == "PRUNED" for t in trials), phase


def candidate_costs(sft, aligned, repeats: int):
    import torch

    from mergekit_expo.search.command import model_space
    from mergekit_expo.search.hf_engine import HFEngine
    from mergekit_expo.search.settings import SearchSettings

    torch.set_num_threads(1)
    engine = HFEngine(sft, aligned)
    costs = {}
    for name in ("scalar", "module+depth"):
        space, resolve = model_space(SearchSettings(space=name), sft, aligned, sft, aligned)
        plan, update = [], []
        for repeat in range(repeats + 1):
            candidate = {c: 0.1 + 0.05 * ((i + repeat) % 7) for i, c in enumerate(space.coordinates)}
            start = time.perf_counter()
            alphas = resolve(candidate)
            planned = time.perf_counter()
            engine.set_alphas(alphas)
            if repeat:  # the first call imports and warms up
                plan.append(planned - start)
                update.append(time.perf_counter() - planned)
        costs[name] = (statistics.median(plan), statistics.median(update))
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", default="./bench-search-workers")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sft, aligned = make_inputs(work, args.hidden, args.layers, args.rows)
    alphas = ",".join(f"{i / args.candidates:.4g}" for i in range(args.candidates))
    print(f"pair: hidden {args.hidden}, {args.layers} layers; {args.rows} preference rows; "
          f"{args.candidates} candidates (α = 0 included); one thread per worker; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    one, one_logs = run_workers(work, "./one", 1, sft, aligned, alphas)
    two, two_logs = run_workers(work, "./two", 2, sft, aligned, alphas)
    phases = []
    for label, seconds, logs, folder in (("1 worker", one, one_logs, "one"), ("2 workers", two, two_logs, "two")):
        scored, duplicates, pruned, phase = study_counts(work / folder)
        phases.append(phase)
        print(f"{label:>10}: {seconds:6.1f} s wall, {phase:6.1f} s scoring; {scored} scored, "
              f"{duplicates} duplicates, {pruned} trials closed unscored")
        for log in logs:
            print(f"{'':>12}{log.replace('this worker', 'worker')}")
    print(f"speed-up of 2 workers: {one / two:.2f}x wall, {phases[0] / phases[1]:.2f}x scoring phase")
    costs = candidate_costs(sft, aligned, args.repeats)
    print("per candidate (median, one thread): resolve α through mergekit's planner + set weights in place")
    for name, (plan, update) in costs.items():
        print(f"{name:>14}: plan {plan * 1000:7.1f} ms, update {update * 1000:7.1f} ms")
    scalar, structured = costs["scalar"], costs["module+depth"]
    print(f"structured / scalar: {sum(structured) / sum(scalar):.2f}x "
          f"(plan {structured[0] / scalar[0]:.2f}x, update {structured[1] / scalar[1]:.2f}x)")


if __name__ == "__main__":
    main()
