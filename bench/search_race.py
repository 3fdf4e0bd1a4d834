"""Full vs raced α search (`mergekit-expo search` with and without `--race`) on the same data.

Three cases, each searched twice by the real command (the same grid, data and scorer):

- tiny pair, preference scorer: preference rows labelled by the pair's ExPO model at α = 3
  (the answer it gives the higher log-probability is "chosen"), 21 α over [0, 4];
- tiny pair, reward-model scorer (a tiny random reward model as in bench/search_engines.py,
  greedy answers): every scored row is one generation;
- the 113M bench pair (bench/search_engines.py's shapes), preference rows labelled by its
  α = 2 model, 11 α over [0, 4] (its reward-model search takes minutes per α on 2 cores);
- flat peak: held-out preference rows labelled by the α = 2 model with a share of the labels
  flipped (annotators disagree), 21 α over [0, 4]: the score is flat near its top.

Per case: rows scored, generations, wall time of each search, whether the picks agree, and
whether the raced pick's full-data score lies inside the full search's 95% interval of its best.

One row order is one draw: the command races with ``--seed 0``. The race is then replayed
(the command's own rule, :func:`mergekit_expo.search.race.replay`) on the full search's
per-row scores under ``--orders`` other seeds, giving the share of rows and whether the pick
is inside the interval over many orders; seed 0's replay is checked against the command's
race (the same rows per candidate), which holds exactly for scorers whose per-row score does
not depend on the batch (preference).

Usage: python bench/search_race.py [--rows 256] [--rm-prompts 128] [--hidden 768 --layers 12]
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


def reward_inputs(work: Path, prompts: int):
    """A tiny random reward model and prompts, as bench/search_engines.py makes them."""
    import transformers

    from mergekit_expo.synthetic import model_config

    torch.manual_seed(1)
    config = model_config(PairSpec(hidden_size=64, num_layers=2), vocab_size=64)
    config.num_labels = 1
    transformers.LlamaForSequenceClassification(config).save_pretrained(work / "rm")
    transformers.AutoTokenizer.from_pretrained(work / "pair" / "aligned").save_pretrained(work / "rm")
    rng = random.Random(0)
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": words(rng, rng.randrange(8, 24))}) + "\n"
                            for _ in range(prompts)))
    return path


def search(work: Path, name: str, sft, aligned, alphas, options, race: bool) -> dict:
    out = work / f"search-{name}-{'race' if race else 'full'}"
    shutil.rmtree(out, ignore_errors=True)
    command = [str(BIN / "mergekit-expo"), "search", str(sft), str(aligned), "--out", str(out),
               "--alphas", ",".join(map(str, alphas[1:])), *options]
    if race:
        command += ["--race", "--seed", "0"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} search failed:\n{result.stderr[-3000:]}")
    found = json.loads((out / "results.json").read_text())
    rows = found["results"]
    alive = [r for r in rows if r.get("dropped_in") is None and r.get("retired_in") is None]
    pick = max(alive, key=lambda r: (r["score"], -r["alphas"]["alpha"]))
    return {"seconds": seconds, "rows": rows, "race": found.get("race"), "pick": pick["alphas"]["alpha"],
            "scored": sum(r["n"] for r in rows)}


def compare(name: str, full: dict, raced: dict, generating: bool) -> dict:
    by_alpha = {r["alphas"]["alpha"]: r for r in full["rows"]}
    best = by_alpha[full["pick"]]
    raced_full = by_alpha[raced["pick"]]["score"]
    within = [a for a, r in by_alpha.items() if best["low"] <= r["score"] <= best["high"]]
    return {"case": name, "candidates": len(full["rows"]), "rows_full": full["scored"],
            "rows_race": raced["scored"], "share": raced["scored"] / full["scored"], "generating": generating,
            "seconds_full": full["seconds"], "seconds_race": raced["seconds"], "pick_full": full["pick"],
            "pick_race": raced["pick"], "best": best["score"], "best_ci": (best["low"], best["high"]),
            "race_full_score": raced_full, "inside": best["low"] <= raced_full <= best["high"],
            "flat": len(within), "rounds": raced["race"]["rounds"], "ended": raced["race"]["ended"]}


def per_row_scores(out: Path) -> dict:
    """candidate -> {row: score} from a full search's answers/<candidate>.jsonl."""
    scores = {}  # in α order, as the command orders a race's candidates (a tie goes to the first)
    for path in sorted((out / "answers").glob("*.jsonl"), key=lambda p: float(p.stem.split("=")[1])):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        scores[path.stem] = {record["row"]: record["score"] for record in records}
    return scores


def replayed(work: Path, name: str, full: dict, raced: dict, orders: int) -> dict:
    """The race on the full search's per-row scores under ``orders`` row orders."""
    from mergekit_expo.search.race import RaceRule, replay, row_blocks
    from mergekit_expo.search.stats import fmean

    out = work / f"search-{name}-full"
    scores = per_row_scores(out)
    rows = len(next(iter(scores.values())))
    by_name = {r["candidate"]: r for r in full["rows"]}
    best = by_name[max(scores, key=lambda c: (fmean(list(scores[c].values())), -by_name[c]["alphas"]["alpha"]))]
    shares, inside, same_as_command = [], 0, None
    for seed in range(orders):
        blocks = row_blocks(rows, seed)
        race = replay(scores, blocks, RaceRule(candidates=len(scores), rounds=len(blocks), rows=rows))
        used = {c: sum(len(b) for b in blocks[:race.blocks_read[c]]) for c in scores}
        shares.append(sum(used.values()) / (rows * len(scores)))
        inside += best["low"] <= by_name[race.rounds[-1].leader]["score"] <= best["high"]
        if seed == 0:
            command = {r["candidate"]: r["n"] for r in raced["rows"]}
            same_as_command = command == {c: n for c, n in used.items() if n}
    return {"orders": orders, "mean_share": fmean(shares), "max_share": max(shares),
            "over_half": sum(share > 0.5 for share in shares), "inside_orders": inside,
            "replay_is_command": same_as_command}


def run_case(work: Path, name, sft, aligned, alphas, options, generating, orders) -> dict:
    full = search(work, name, sft, aligned, alphas, options, race=False)
    raced = search(work, name, sft, aligned, alphas, options, race=True)
    return dict(compare(name, full, raced, generating), **replayed(work, name, full, raced, orders))


def print_table(found: list) -> None:
    print(f"{'case':22} {'cands':>5} {'rows full':>9} {'rows race':>9} {'share':>6} {'gens full':>9} "
          f"{'gens race':>9} {'wall full s':>11} {'wall race s':>11} {'wall race/full':>14} "
          f"{'α full':>6} {'α race':>6} {'same':>4} {'inside 95%':>10} {'rounds':>6}  ended")
    for c in found:
        gens = (f"{c['rows_full']:9d} {c['rows_race']:9d}" if c["generating"] else f"{'-':>9} {'-':>9}")
        print(f"{c['case']:22} {c['candidates']:5d} {c['rows_full']:9d} {c['rows_race']:9d} "
              f"{c['share']:6.1%} "
              f"{gens} {c['seconds_full']:11.1f} {c['seconds_race']:11.1f} "
              f"{c['seconds_race'] / c['seconds_full']:13.2f}x {c['pick_full']:6g} {c['pick_race']:6g} "
              f"{'yes' if c['pick_full'] == c['pick_race'] else 'no':>4} "
              f"{'yes' if c['inside'] else 'no':>10} "
              f"{c['rounds']:6d}  {c['ended']}")
    print("\nthe same race replayed on each full search's per-row scores over other row orders (seeds)")
    print(f"{'case':22} {'orders':>6} {'mean share':>10} {'max share':>9} {'orders > 50%':>12} "
          f"{'pick inside 95%':>15} {'seed 0 replay = command':>23}")
    for c in found:
        print(f"{c['case']:22} {c['orders']:6d} {c['mean_share']:10.1%} {c['max_share']:9.1%} "
              f"{c['over_half']:12d} {c['inside_orders']:9d} of {c['orders']:<3d} "
              f"{'yes' if c['replay_is_command'] else 'no':>23}")
    for c in found:
        low, high = c["best_ci"]
        print(f"{c['case']}: full best {c['best']:.4f} [95% {low:.4f}, {high:.4f}], {c['flat']} of "
              f"{c['candidates']} candidates inside it; raced pick's full-data score "
              f"{c['race_full_score']:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256, help="preference rows (tiny and flat-peak cases)")
    parser.add_argument("--grid", type=int, default=21, help="α values over [0, 4] (tiny pair)")
    parser.add_argument("--flip", type=float, default=0.3, help="share of flipped labels (flat-peak case)")
    parser.add_argument("--rm-prompts", type=int, default=128, help="prompts of the reward-model case")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--big-rows", type=int, default=256, help="preference rows of the 113M case")
    parser.add_argument("--big-grid", type=int, default=11, help="α values over [0, 4] (113M case)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--orders", type=int, default=40, help="row orders the race is replayed under")
    parser.add_argument("--work", default=str(HERE / "results" / "search-race"))
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "tiny").mkdir(parents=True)
    (work / "big").mkdir()
    sft, aligned = write_pair(str(work / "tiny" / "pair"), PairSpec(delta_scale=0.3))
    alphas, found = grid(args.grid, 4.0), []
    for name, teacher, flip, seed in (("tiny, preference", 3.0, 0.0, 0), ("flat peak, preference", 2.0,
                                                                           args.flip, 1)):
        data = labelled_preferences(work / "tiny" / f"prefs-{seed}.jsonl", sft, aligned, teacher, args.rows,
                                    flip, seed)
        found.append(run_case(work / "tiny", name, sft, aligned, alphas,
                              ["--scorer", "preference", "--data", str(data), "--dtype", "float32"], False,
                              args.orders))
    prompts = reward_inputs(work / "tiny", args.rm_prompts)
    found.insert(1, run_case(work / "tiny", "tiny, reward-model", sft, aligned, alphas,
                             ["--scorer", "reward-model", "--data", str(prompts), "--reward-model",
                              str(work / "tiny" / "rm"), "--max-new-tokens", str(args.new_tokens),
                              "--dtype", "float32"], True, args.orders))
    spec = PairSpec(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_layers=args.layers,
                    num_heads=max(1, args.hidden // 64), num_kv_heads=max(1, args.hidden // 64),
                    delta_scale=0.05)
    sft, aligned = write_pair(str(work / "big" / "pair"), spec)
    data = labelled_preferences(work / "big" / "prefs.jsonl", sft, aligned, 2.0, args.big_rows, 0.0, 2)
    name = f"{parameter_count(aligned) / 1e6:.3g}M, preference"
    found.insert(2, run_case(work / "big", name, sft, aligned, grid(args.big_grid, 4.0),
                             ["--scorer", "preference", "--data", str(data), "--dtype", "float32"], False,
                             args.orders))
    print(f"full vs raced `mergekit-expo search` (--race defaults, --seed 0), {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, one run; {args.rows} preference rows, {args.rm_prompts} "
          f"prompts × {args.new_tokens} new tokens; "
          f"{args.big_rows} rows on the {args.hidden}x{args.layers} pair")
    print_table(found)
    (work / "results.json").write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
