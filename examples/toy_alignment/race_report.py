"""Tables and verdicts of protocols v4 to v7 (race_alpha.py), by their pre-stated rules: each
arm against the full search (a); v7's verdict is (s)'s, v4-v6's (r)'s."""

import json
import statistics
from pathlib import Path

from structured_report import interval, resample_sets

MIN_DELTA = -0.002
# arm -> (goal, stretch or moonshot share of (a)'s dev generations, every pick inside (a)'s interval)
RULES = {"r": (0.35, 0.25, False), "s": (0.15, 0.10, True), "t": (0.15, 0.10, True)}
NAMES = {"r": "raced grid (`--race`)", "s": "curve search (`--strategy curve`)",
         "t": "curve search at another tolerance (`--strategy curve --race-tolerance T`)"}
BEFORE_PEAK = 0.5  # v2's earliest peak was at 30%: 5-20% before it, 50-100% at or after
SEEDS_PER_ROW = 2  # every scored dev row costs two generations (sampling seeds 100 and 101)


def generations(search: dict, dev_prompts: int, full: bool) -> int:
    """Dev generations of one search: every candidate on every dev prompt in arm (a) (its
    scorer returns one number, so its rows record no count), the rows scored in arm (r)."""
    rows = search["results"]
    return SEEDS_PER_ROW * (dev_prompts * len(rows) if full else sum(r["n"] for r in rows))


def point_metrics(point: dict, arm: str, test_sets, dev_sets, dev_prompts: int) -> dict:
    arms, searches = point["arms"], point["searches"]
    a, x = arms["a"]["test_per_prompt"], arms[arm]["test_per_prompt"]
    difference = [y - z for y, z in zip(x, a)]
    full = {round(row["alphas"]["alpha"], 9): row["score"] for row in searches["a"]["results"]}
    low, high = interval(arms["a"]["dev_per_prompt"], dev_sets)
    picked_full = full[round(arms[arm]["alpha"], 9)]
    race = searches[arm].get("race") or {}
    return {"alpha_a": arms["a"]["alpha"], "alpha_r": arms[arm]["alpha"],
            "test_a": statistics.mean(a), "ci_a": interval(a, test_sets),
            "test_r": statistics.mean(x), "ci_r": interval(x, test_sets),
            "delta": statistics.mean(difference), "delta_ci": interval(difference, test_sets),
            "gens_a": generations(searches["a"], dev_prompts, full=True),
            "gens_r": generations(searches[arm], dev_prompts, full=False),
            "dev_best": full[round(arms["a"]["alpha"], 9)], "dev_best_ci": (low, high),
            "dev_r_full": picked_full, "inside": low <= picked_full <= high,
            "rounds": race.get("rounds"), "ended": race.get("ended"),
            "unscored": len(race.get("unscored") or []),
            "dev_check": abs(arms["a"]["search_dev"] - statistics.mean(arms["a"]["dev_per_prompt"]))}


def rule(rows: list, arm: str = "r") -> dict:
    """The protocol's decision rule for ``arm`` over the given points."""
    goal, stretch, inside = RULES[arm]
    mean_delta = statistics.mean(r["delta"] for r in rows)
    share = sum(r["gens_r"] for r in rows) / sum(r["gens_a"] for r in rows)
    outside = sum(not r["inside"] for r in rows)
    reasons = [why for why, failed in (("test reward", mean_delta < MIN_DELTA), ("generations", share > goal),
                                       ("picks outside (a)'s interval", inside and outside > 0)) if failed]
    top = "moonshot met" if arm in ("s", "t") else "stretch goal met"
    verdict = (top if share <= stretch else "goal met") if not reasons else f"not met ({' and '.join(reasons)})"
    return {"points": len(rows), "mean_delta": mean_delta, "generations_share": share,
            "agree": sum(r["alpha_a"] == r["alpha_r"] for r in rows), "outside": outside, "verdict": verdict}


def verdicts(table: list, arm: str = "r") -> dict:
    parts = {"all": table, "before peak": [r for r in table if r["fraction"] < BEFORE_PEAK],
             "from peak on": [r for r in table if r["fraction"] >= BEFORE_PEAK]}
    return {part: rule(rows, arm) for part, rows in parts.items() if rows}


def arm_tables(arm: str, table: list, found: dict) -> list:
    """One arm against (a): a row per point, then the verdict by its rule."""
    goal, stretch, inside = RULES[arm]
    x = arm  # short, for the headers
    out = [f"## ({x}) {NAMES[x]} against (a)", "",
           f"| seed | DPO progress | α (a) | α ({x}) | test (a) [95%] | test ({x}) [95%] | "
           f"Δ = {x} − a [paired 95%] | dev generations ({x}) / (a) | α not scored | rounds; ended | inside |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        out.append(f"| {r['seed']} | {100 * r['fraction']:.0f}% | {r['alpha_a']:.2f} | {r['alpha_r']:.2f} | "
                   f"{r['test_a']:.3f} [{r['ci_a'][0]:.3f}, {r['ci_a'][1]:.3f}] | "
                   f"{r['test_r']:.3f} [{r['ci_r'][0]:.3f}, {r['ci_r'][1]:.3f}] | {r['delta']:+.4f} "
                   f"[{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}] | {r['gens_r']} / {r['gens_a']} "
                   f"({r['gens_r'] / r['gens_a']:.0%}) | {r['unscored']} | {r['rounds']}; {r['ended']} | "
                   f"{'yes' if r['inside'] else 'no'} |")
    out += ["", "### Verdict by the pre-stated rule", "",
            f"| points | n | mean Δ | dev generations ({x})/(a) | picks agree | ({x}) outside (a)'s "
            "interval | verdict |", "|---|---|---|---|---|---|---|"]
    for part, v in found.items():
        out.append(f"| {part} | {v['points']} | {v['mean_delta']:+.4f} | {v['generations_share']:.1%} | "
                   f"{v['agree']} | {v['outside']} | {v['verdict']} |")
    top = "moonshot" if x in ("s", "t") else "stretch goal"
    out += ["", f"**({x}): {found['all']['verdict']}** (goal: mean Δ ≥ {MIN_DELTA}"
                + (", no pick outside (a)'s interval" if inside else "")
                + f" and ({x})'s dev generations ≤ {goal:.0%} of (a)'s; {top}: ≤ {stretch:.0%}).", ""]
    return out


def tables(summary: dict, by_arm: dict, found: dict) -> str:
    out = [f"# Protocol results ({summary['seconds'] / 60:.1f} min; grid of {summary['grid']} α over "
           f"[0, {summary['alpha_max']:g}], {summary['dev_prompts']} dev prompts)", "",
           "(a) full grid; (r) raced grid; (s) curve search; (t) curve search at --race-tolerance "
           f"{summary.get('curve_tolerance')}. Dev generations: sampled answers to dev "
           "prompts (two per scored row). Inside: the pick's full-data dev score (from (a)'s table) lies "
           "in (a)'s 95% interval of its best.", ""]
    for arm, table in by_arm.items():
        out += arm_tables(arm, table, found[arm])
    worst = max(r["dev_check"] for table in by_arm.values() for r in table)
    out += ["## Checks", "", f"- largest |(a)'s search dev score − this process's| for its pick: {worst:.2g}", ""]
    return "\n".join(out)


def report(out: Path, summary: dict) -> dict:
    first = next(iter(summary["seeds"][0]["points"].values()))
    test_sets = resample_sets(len(first["arms"]["a"]["test_per_prompt"]))
    dev_sets = resample_sets(summary["dev_prompts"])
    by_arm = {}
    for arm in [arm for arm in summary.get("arms", ["a", "r"]) if arm != "a"]:
        by_arm[arm] = [{"seed": s["seed"], "fraction": float(fraction),
                        **point_metrics(point, arm, test_sets, dev_sets, summary["dev_prompts"])}
                       for s in summary["seeds"]
                       for fraction, point in sorted(s["points"].items(), key=lambda item: float(item[0]))]
    found = {arm: verdicts(table, arm) for arm, table in by_arm.items()}
    text = tables(summary, by_arm, found)
    primary = next(arm for arm in ("t", "s", "r") if arm in found)  # the arm the protocol's verdict is about
    (out / "results.md").write_text(text)
    (out / "verdict.json").write_text(json.dumps({"verdict": found[primary], "arm": primary, "by_arm": found,
                                                  "points": by_arm[primary]}, indent=1))
    print(text)
    return found[primary]


if __name__ == "__main__":  # the report again from a run's results.json: python race_report.py OUT
    import sys

    folder = Path(sys.argv[1])
    report(folder, json.loads((folder / "results.json").read_text()))
