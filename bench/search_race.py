"""Full vs raced vs curve α search (`mergekit-expo search` with each `--strategy`) on the same data.

Each case is searched three times by the real command (the same grid, data and scorer): every
candidate on every row (`full`), `--race`, and `--strategy curve`:

- tiny pair, preference scorer: preference rows labelled by the pair's ExPO model at α = 3
  (the answer it gives the higher log-probability is "chosen"), 21 α over [0, 4];
- tiny pair, reward-model scorer (a tiny random reward model as in bench/search_engines.py,
  greedy answers): every scored row is one generation;
- the 113M bench pair (bench/search_engines.py's shapes), preference rows labelled by its
  α = 2 model, 11 α over [0, 4] (its reward-model search takes minutes per α on 2 cores);
- flat peak: held-out preference rows labelled by the α = 2 model with a share of the labels
  flipped (annotators disagree), 21 α over [0, 4]: the score is flat near its top;
- held-out, peak inside: new rows labelled by the α = 2.4 model, 10% flipped, 21 α over [0, 4];
- held-out, short peak and long tail: new rows labelled by the α = 1 model, 10% flipped, 21 α over
  [0, 10]: the peak near the start, then a long fall.

Per case and strategy: candidates scored, rows scored, generations, wall time, weight updates
(units of work: each sets the weights once) and their seconds, the pick, and whether its
full-data score lies inside the full search's 95% interval of its best.

The floor is the wall time of the full search's command run again on its finished --out: it
starts, opens the study, finds every candidate scored and writes the reports, scoring nothing.
Every strategy pays it (imports, study, reports), so floor/full is the least wall/full any
strategy can reach on the case; "beyond floor" is the share of the full search's wall above the
floor that the strategy took, (wall - floor) / (wall full - floor).

One row order is one draw: the command runs with ``--seed 0`` (``--seed`` in the reward-model
case). Race and curve search are then replayed offline (the strategies' own code,
:mod:`mergekit_expo.search.strategies.offline`) on the full search's per-row scores under
``--orders`` seeds from the command's, giving the share of rows and whether the pick is inside
the interval over many orders; the replay under the command's seed is checked against the
command's run (the same rows per candidate), which holds exactly for scorers whose per-row
score does not depend on the batch (preference).

Usage: python bench/search_race.py [--rows 256] [--rm-prompts 128] [--hidden 768 --layers 12]
       python bench/search_race.py --reward-model-only --rm-prompts 512 [--seed 1]
       python bench/search_race.py --held-out-only --held-out-seeds 12,13   (new held-out rows)
"""

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from mergekit_expo.search.hf_engine import HFEngine
from mergekit_expo.search.prompts import encode_answer, encode_prompt
from mergekit_expo.search.strategies.offline import run_offline
from mergekit_expo.synthetic import PairSpec, write_pair

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


def parameter_count(folder) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def grid(count: int, top: float) -> list:
    return [round(top * i / (count - 1), 4) for i in range(count)]


def words(rng, n):
    return " ".join(f"w{rng.randrange(60)}" for _ in range(n))


def labelled_preferences(path: Path, sft, aligned, teacher: float, rows: int, flip: float, seed: int) -> Path:
    """Rows whose chosen answer is the one the α = ``teacher`` model prefers; ``flip`` of the
    labels swapped at random."""
    rng = random.Random(seed)
    items = [(words(rng, rng.randrange(6, 16)), words(rng, 8), words(rng, 8)) for _ in range(rows)]
    engine = HFEngine(str(sft), str(aligned), dtype="float32")
    try:
        engine.set_alpha(teacher)
        tokenizer = engine.tokenizer
        contexts = [encode_prompt(tokenizer, p) for p, _, _ in items for _ in (0, 1)]
        answers = [encode_answer(tokenizer, a) for _, x, y in items for a in (x, y)]
        totals = engine.answer_logprobs(contexts, answers)
    finally:
        engine.close()
    lines = []
    for i, (prompt, x, y) in enumerate(items):
        chosen, rejected = (x, y) if totals[2 * i] > totals[2 * i + 1] else (y, x)
        if rng.random() < flip:
            chosen, rejected = rejected, chosen
        lines.append(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    path.write_text("".join(lines))
    return path


def reward_inputs(work: Path, prompts: int, seed: int = 0):
    """A tiny random reward model and prompts, as bench/search_engines.py makes them (``seed``
    draws other ones)."""
    import transformers

    from mergekit_expo.synthetic import model_config

    torch.manual_seed(1 + seed)
    config = model_config(PairSpec(hidden_size=64, num_layers=2), vocab_size=64)
    config.num_labels = 1
    transformers.LlamaForSequenceClassification(config).save_pretrained(work / "rm")
    transformers.AutoTokenizer.from_pretrained(work / "pair" / "aligned").save_pretrained(work / "rm")
    rng = random.Random(seed)
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": words(rng, rng.randrange(8, 24))}) + "\n"
                            for _ in range(prompts)))
    return path


STRATEGIES = {"full": ["--strategy", "full"], "race": ["--race"], "curve": ["--strategy", "curve"]}


def timed(command: list, name: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} search failed:\n{result.stderr[-3000:]}")
    return seconds


def search(work: Path, name: str, sft, aligned, alphas, options, strategy: str, seed: int = 0) -> dict:
    out = work / f"search-{name}-{strategy}"
    shutil.rmtree(out, ignore_errors=True)
    command = [str(BIN / "mergekit-expo"), "search", str(sft), str(aligned), "--out", str(out),
               "--alphas", ",".join(map(str, alphas[1:])), *options, *STRATEGIES[strategy], "--seed", str(seed)]
    seconds = timed(command, name)
    # Run again on the finished --out: nothing left to score, so this is what every strategy pays.
    floor = timed(command, name) if strategy == "full" else None
    found = json.loads((out / "results.json").read_text())
    rows = found["results"]
    alive = [r for r in rows if r.get("dropped_in") is None and r.get("retired_in") is None]
    pick = max(alive, key=lambda r: (r["score"], -r["alphas"]["alpha"]))
    return {"seconds": seconds, "floor": floor, "rows": rows, "race": found.get("race"),
            "pick": pick["alphas"]["alpha"],
            "scored": sum(r["n"] for r in rows), "out": out, "units": units_of(out),
            "update_seconds": sum(r.get("update_seconds") or 0.0 for r in rows)}


def units_of(out: Path) -> int:
    """Units of work the study scored: each set the weights once."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="expo-search", storage=f"sqlite:///{out / 'study.db'}")
    return sum("row" in trial.user_attrs for trial in study.get_trials(deepcopy=False))


def compare(name: str, full: dict, other: dict, strategy: str, generating: bool) -> dict:
    by_alpha = {r["alphas"]["alpha"]: r for r in full["rows"]}
    best = by_alpha[full["pick"]]
    picked_full = by_alpha[other["pick"]]["score"]
    within = [a for a, r in by_alpha.items() if best["low"] <= r["score"] <= best["high"]]
    record = other["race"] or {}
    return {"case": name, "strategy": strategy, "candidates": len(full["rows"]),
            "scored_candidates": len(other["rows"]), "rows_full": full["scored"], "rows": other["scored"],
            "share": other["scored"] / full["scored"], "generating": generating,
            "seconds_full": full["seconds"], "seconds": other["seconds"], "floor": full["floor"],
            "units_full": full["units"],
            "units": other["units"], "update_seconds_full": full["update_seconds"],
            "update_seconds": other["update_seconds"], "pick_full": full["pick"], "pick": other["pick"],
            "best": best["score"], "best_ci": (best["low"], best["high"]), "pick_full_score": picked_full,
            "inside": best["low"] <= picked_full <= best["high"], "flat": len(within),
            "rounds": record.get("rounds"), "ended": record.get("ended")}


def per_row_scores(out: Path) -> dict:
    """α -> its score on every row, from a full search's answers/<candidate>.jsonl."""
    scores = {}
    for path in (out / "answers").glob("*.jsonl"):
        records = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["row"])
        scores[float(path.stem.split("=")[1])] = [record["score"] for record in records]
    return dict(sorted(scores.items()))


def replayed(full: dict, other: dict, strategy: str, orders: int, first: int = 0) -> dict:
    """The strategy offline on the full search's per-row scores under ``orders`` row orders
    (seeds from ``first``, the command's)."""
    from mergekit_expo.search.registry import STRATEGIES as REGISTERED
    from mergekit_expo.search.rows import best as pick_of

    table = per_row_scores(full["out"])
    by_alpha = {r["alphas"]["alpha"]: r for r in full["rows"]}
    best = by_alpha[max(table, key=lambda a: (sum(table[a]) / len(table[a]), -a))]
    kind = REGISTERED.get(strategy).load()
    shares, inside, same_as_command = [], 0, None
    for seed in range(first, first + orders):
        rows, record, _ = run_offline(kind, table, seed=seed)
        shares.append(record["rows_scored"] / record["rows_full"])
        inside += best["low"] <= by_alpha[pick_of(rows, None).alpha]["score"] <= best["high"]
        if seed == first:
            same_as_command = {r.alpha: r.n for r in rows} == {r["alphas"]["alpha"]: r["n"] for r in other["rows"]}
    return {"orders": orders, "mean_share": sum(shares) / len(shares), "max_share": max(shares),
            "over_fifth": sum(share > 0.2 for share in shares), "inside_orders": inside,
            "replay_is_command": same_as_command}


def run_case(work: Path, name, sft, aligned, alphas, options, generating, orders, seed: int = 0) -> list:
    runs = {strategy: search(work, name, sft, aligned, alphas, options, strategy, seed) for strategy in STRATEGIES}
    return [dict(compare(name, runs["full"], runs[strategy], strategy, generating),
                 **replayed(runs["full"], runs[strategy], strategy, orders, seed))
            for strategy in ("race", "curve")]


def beyond_floor(c: dict) -> float:
    """The strategy's wall above the floor, as a share of the full search's."""
    return (c["seconds"] - c["floor"]) / (c["seconds_full"] - c["floor"])


def print_table(found: list) -> None:
    print(f"{'case':32} {'strategy':8} {'cands':>5} {'scored':>6} {'rows full':>9} {'rows':>6} {'share':>6} "
          f"{'gens full':>9} {'gens':>6} {'wall full s':>11} {'wall s':>7} {'wall/full':>9} {'floor s':>7} "
          f"{'floor/full':>10} {'beyond floor':>12} "
          f"{'units full':>10} {'units':>5} {'update s full':>13} {'update s':>8} {'α full':>6} {'α':>5} "
          f"{'same':>4} {'inside 95%':>10}  ended")
    for c in found:
        gens = f"{c['rows_full']:9d} {c['rows']:6d}" if c["generating"] else f"{'-':>9} {'-':>6}"
        print(f"{c['case']:32} {c['strategy']:8} {c['candidates']:5d} {c['scored_candidates']:6d} "
              f"{c['rows_full']:9d} {c['rows']:6d} {c['share']:6.1%} {gens} {c['seconds_full']:11.1f} "
              f"{c['seconds']:7.1f} {c['seconds'] / c['seconds_full']:8.2f}x {c['floor']:7.1f} "
              f"{c['floor'] / c['seconds_full']:9.2f}x {beyond_floor(c):11.2f}x {c['units_full']:10d} {c['units']:5d} "
              f"{c['update_seconds_full']:13.1f} {c['update_seconds']:8.1f} {c['pick_full']:6g} {c['pick']:5g} "
              f"{'yes' if c['pick_full'] == c['pick'] else 'no':>4} {'yes' if c['inside'] else 'no':>10}  "
              f"{c['ended']}")
    print("\neach strategy replayed on each full search's per-row scores over other row orders (seeds)")
    print(f"{'case':32} {'strategy':8} {'orders':>6} {'mean share':>10} {'max share':>9} {'orders > 20%':>12} "
          f"{'pick inside 95%':>15} {'first replay = command':>23}")
    for c in found:
        print(f"{c['case']:32} {c['strategy']:8} {c['orders']:6d} {c['mean_share']:10.1%} {c['max_share']:9.1%} "
              f"{c['over_fifth']:12d} {c['inside_orders']:9d} of {c['orders']:<3d} "
              f"{'yes' if c['replay_is_command'] else 'no':>23}")
    for c in found:
        low, high = c["best_ci"]
        print(f"{c['case']}, {c['strategy']}: full best {c['best']:.4f} [95% {low:.4f}, {high:.4f}], {c['flat']} of "
              f"{c['candidates']} candidates inside it; the pick's full-data score {c['pick_full_score']:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256, help="preference rows (tiny and flat-peak cases)")
    parser.add_argument("--grid", type=int, default=21, help="α values of the tiny pair's grids")
    parser.add_argument("--flip", type=float, default=0.3, help="share of flipped labels (flat-peak case)")
    parser.add_argument("--rm-prompts", type=int, default=128, help="prompts of the reward-model case")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--big-rows", type=int, default=256, help="preference rows of the 113M case")
    parser.add_argument("--big-grid", type=int, default=11, help="α values over [0, 4] (113M case)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--orders", type=int, default=40, help="row orders each strategy is replayed under")
    parser.add_argument("--work", default=str(HERE / "results" / "search-race"))
    parser.add_argument("--seed", type=int, default=0,
                        help="the reward-model case's reward model, prompts and row order (--seed of the command)")
    parser.add_argument("--held-out-seeds", default="10,11",
                        help="the label seeds of the two held-out cases (peak inside; short peak, long tail)")
    parser.add_argument("--held-out-only", action="store_true", help="only the two held-out cases")
    parser.add_argument("--reward-model-only", action="store_true",
                        help="only the reward-model case (e.g. with more --rm-prompts, where scoring outweighs "
                             "the start-up)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "tiny").mkdir(parents=True)
    (work / "big").mkdir()
    sft, aligned = write_pair(str(work / "tiny" / "pair"), PairSpec(delta_scale=0.3))
    preference = ["--scorer", "preference", "--dtype", "float32", "--data"]
    inside, tail = (int(seed) for seed in args.held_out_seeds.split(","))
    held_out = [("held-out, peak inside", 2.4, 0.1, inside, 4.0),
                ("held-out, short peak, long tail", 1.0, 0.1, tail, 10.0)]
    cases = [("tiny, preference", 3.0, 0.0, 0, 4.0), ("flat peak, preference", 2.0, args.flip, 1, 4.0), *held_out]
    found = []
    for name, teacher, flip, seed, top in [] if args.reward_model_only else held_out if args.held_out_only else cases:
        data = labelled_preferences(work / "tiny" / f"prefs-{seed}.jsonl", sft, aligned, teacher, args.rows,
                                    flip, seed)
        found += run_case(work / "tiny", name, sft, aligned, grid(args.grid, top), [*preference, str(data)],
                          False, args.orders)
    if args.held_out_only:
        print(f"full vs raced vs curve `mergekit-expo search` (defaults, --seed 0), {os.cpu_count()} CPU cores, "
              f"torch {torch.__version__}, one run; held-out label seeds {args.held_out_seeds}, {args.rows} rows")
        print_table(found)
        return
    prompts = reward_inputs(work / "tiny", args.rm_prompts, args.seed)
    found[2:2] = run_case(work / "tiny", "tiny, reward-model", sft, aligned, grid(args.grid, 4.0),
                          ["--scorer", "reward-model", "--data", str(prompts), "--reward-model",
                           str(work / "tiny" / "rm"), "--max-new-tokens", str(args.new_tokens),
                           "--dtype", "float32"], True, args.orders, args.seed)
    if args.reward_model_only:
        print(f"full vs raced vs curve `mergekit-expo search` (defaults, --seed {args.seed}), {os.cpu_count()} "
              f"CPU cores, torch {torch.__version__}, one run; {args.rm_prompts} prompts × {args.new_tokens} "
              "new tokens")
        print_table(found)
        return
    spec = PairSpec(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_layers=args.layers,
                    num_heads=max(1, args.hidden // 64), num_kv_heads=max(1, args.hidden // 64),
                    delta_scale=0.05)
    sft, aligned = write_pair(str(work / "big" / "pair"), spec)
    data = labelled_preferences(work / "big" / "prefs.jsonl", sft, aligned, 2.0, args.big_rows, 0.0, 2)
    name = f"{parameter_count(aligned) / 1e6:.3g}M, preference"
    found[4:4] = run_case(work / "big", name, sft, aligned, grid(args.big_grid, 4.0), [*preference, str(data)],
                          False, args.orders)
    print(f"full vs raced vs curve `mergekit-expo search` (defaults, --seed 0), {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, one run; {args.rows} preference rows, {args.rm_prompts} "
          f"prompts × {args.new_tokens} new tokens; "
          f"{args.big_rows} rows on the {args.hidden}x{args.layers} pair")
    print_table(found)
    (work / "results.json").write_text(json.dumps(found, indent=1, default=str))


if __name__ == "__main__":
    main()
