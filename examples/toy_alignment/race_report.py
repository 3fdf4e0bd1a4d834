"""Table and verdict of protocol v4 (race_alpha.py), by its pre-stated rule."""

import json
import statistics
from pathlib import Path

from structured_report import interval, resample_sets

GOAL, STRETCH, MIN_DELTA = 0.35, 0.25, -0.002
BEFORE_PEAK = 0.5  # v2's earliest peak was at 30%: 5-20% before it, 50-100% at or after
SEEDS_PER_ROW = 2  # every scored dev row costs two generations (sampling seeds 100 and 101)


def generations(search: dict, dev_prompts: int, full: bool) -> int:
    """Dev generations of one search: every candidate on every dev prompt in arm (a) (its
    scorer returns one number, so its rows record no count), the rows scored in arm (r)."""
    rows = search["results"]
    return SEEDS_PER_ROW * (dev_prompts * len(rows) if full else sum(r["n"] for r in rows))


def point_metrics(point: dict, test_sets, dev_sets, dev_prompts: int) -> dict:
    arms, searches = point["arms"], point["searches"]
    a, r = arms["a"]["test_per_prompt"], arms["r"]["test_per_prompt"]
    difference = [x - y for x, y in zip(r, a)]
    full = {round(row["alphas"]["alpha"], 9): row["score"] for row in searches["a"]["results"]}
    low, high = interval(arms["a"]["dev_per_prompt"], dev_sets)
    raced_full = full[round(arms["r"]["alpha"], 9)]
    race = searches["r"].get("race") or {}
    return {"alpha_a": arms["a"]["alpha"], "alpha_r": arms["r"]["alpha"],
            "test_a": statistics.mean(a), "ci_a": interval(a, test_sets),
            "test_r": statistics.mean(r), "ci_r": interval(r, test_sets),
            "delta": statistics.mean(difference), "delta_ci": interval(difference, test_sets),
            "gens_a": generations(searches["a"], dev_prompts, full=True),
            "gens_r": generations(searches["r"], dev_prompts, full=False),
            "dev_best": full[round(arms["a"]["alpha"], 9)], "dev_best_ci": (low, high),
            "dev_r_full": raced_full, "inside": low <= raced_full <= high,
            "rounds": race.get("rounds"), "ended": race.get("ended"),
            "dev_check": abs(arms["a"]["search_dev"] - statistics.mean(arms["a"]["dev_per_prompt"]))}


def rule(rows: list) -> dict:
    """The protocol's decision rule over the given points."""
    mean_delta = statistics.mean(r["delta"] for r in rows)
    share = sum(r["gens_r"] for r in rows) / sum(r["gens_a"] for r in rows)
    reasons = [why for why, failed in (("test reward", mean_delta < MIN_DELTA), ("generations", share > GOAL))
               if failed]
    verdict = ("stretch goal met" if share <= STRETCH else "goal met") if not reasons else \
        f"not met ({' and '.join(reasons)})"
    return {"points": len(rows), "mean_delta": mean_delta, "generations_share": share,
            "agree": sum(r["alpha_a"] == r["alpha_r"] for r in rows),
            "outside": sum(not r["inside"] for r in rows), "verdict": verdict}


def verdicts(table: list) -> dict:
    parts = {"all": table, "before peak": [r for r in table if r["fraction"] < BEFORE_PEAK],
             "from peak on": [r for r in table if r["fraction"] >= BEFORE_PEAK]}
    return {part: rule(rows) for part, rows in parts.items() if rows}


def tables(summary: dict, table: list, found: dict) -> str:
    out = [f"# Protocol v4 results ({summary['seconds'] / 60:.1f} min; grid of {summary['grid']} α over "
           f"[0, {summary['alpha_max']:g}], {summary['dev_prompts']} dev prompts)", "",
           "(a) full grid, (r) raced grid. Dev generations: sampled answers to dev prompts "
           "(two per scored row). Inside: (r)'s pick's full-data dev score (from (a)'s table) "
           "lies in (a)'s 95% interval of its best.", "",
           "| seed | DPO progress | α (a) | α (r) | test (a) [95%] | test (r) [95%] | "
           "Δ = r − a [paired 95%] | dev generations (r) / (a) | rounds; ended | inside |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        out.append(f"| {r['seed']} | {100 * r['fraction']:.0f}% | {r['alpha_a']:.2f} | {r['alpha_r']:.2f} | "
                   f"{r['test_a']:.3f} [{r['ci_a'][0]:.3f}, {r['ci_a'][1]:.3f}] | "
                   f"{r['test_r']:.3f} [{r['ci_r'][0]:.3f}, {r['ci_r'][1]:.3f}] | {r['delta']:+.4f} "
                   f"[{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}] | {r['gens_r']} / {r['gens_a']} "
                   f"({r['gens_r'] / r['gens_a']:.0%}) | {r['rounds']}; {r['ended']} | "
                   f"{'yes' if r['inside'] else 'no'} |")
    out += ["", "## Verdict by the pre-stated rule", "", "| points | n | mean Δ | dev generations (r)/(a) | "
            "picks agree | (r) outside (a)'s interval | verdict |", "|---|---|---|---|---|---|---|"]
    for part, v in found.items():
        out.append(f"| {part} | {v['points']} | {v['mean_delta']:+.4f} | {v['generations_share']:.1%} | "
                   f"{v['agree']} | {v['outside']} | {v['verdict']} |")
    worst = max(r["dev_check"] for r in table)
    out += ["", f"**Verdict: {found['all']['verdict']}** (goal: mean Δ ≥ {MIN_DELTA} and (r)'s "
                f"dev generations ≤ {GOAL:.0%} of (a)'s; stretch goal: ≤ {STRETCH:.0%}).", "",
            "## Checks", "",
            f"- largest |(a)'s search dev score − this process's| for its pick: {worst:.2g}", ""]
    return "\n".join(out)


def report(out: Path, summary: dict) -> dict:
    table = []
    first = next(iter(summary["seeds"][0]["points"].values()))
    test_sets = resample_sets(len(first["arms"]["a"]["test_per_prompt"]))
    dev_sets = resample_sets(summary["dev_prompts"])
    for s in summary["seeds"]:
        for fraction, point in sorted(s["points"].items(), key=lambda item: float(item[0])):
            table.append({"seed": s["seed"], "fraction": float(fraction),
                          **point_metrics(point, test_sets, dev_sets, summary["dev_prompts"])})
    found = verdicts(table)
    text = tables(summary, table, found)
    (out / "results.md").write_text(text)
    (out / "verdict.json").write_text(json.dumps({"verdict": found, "points": table}, indent=1))
    print(text)
    return found


if __name__ == "__main__":  # the report again from a run's results.json: python race_report.py OUT
    import sys

    folder = Path(sys.argv[1])
    report(folder, json.loads((folder / "results.json").read_text()))
