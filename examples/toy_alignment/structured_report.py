"""Tables, picture and verdict of protocol v3 (structured_alpha.py), by its pre-stated rule."""

import json
import statistics
from pathlib import Path

ARMS = ("a", "a7", "b", "c", "d", "d'", "e")
IN_VERDICT = ("b", "c", "d")  # each against (a); a7 and d' are reported only
NAMES = {"a": "(a) scalar grid", "a7": "(a7) v2's 7 α", "b": "(b) module, TPE", "c": "(c) module+depth, TPE",
         "d": "(d) FusionBench rule", "d'": "(d′) FusionBench defaults", "e": "(e) checkpoint"}
RESAMPLES = 2000
BEFORE_PEAK = 0.5  # v2's earliest peak was at 30%: 5-20% before it, 50-100% at or after


def resample_sets(count: int):
    """The same bootstrap resamples of the test prompts for every arm (paired intervals)."""
    import numpy

    return numpy.random.default_rng(0).integers(0, count, size=(RESAMPLES, count))


def interval(values, sets):
    import numpy

    means = numpy.sort(numpy.asarray(values)[sets].mean(axis=1))
    return float(means[int(0.025 * RESAMPLES)]), float(means[int(0.975 * RESAMPLES) - 1])


def point_metrics(point: dict, sets) -> dict:
    arms = point["arms"]
    base_test = arms["a"]["test_per_prompt"]
    e_test, e_dev = statistics.mean(arms["e"]["test_per_prompt"]), arms["e"]["dev"]
    metrics = {}
    for arm in ARMS:
        values = arms[arm]["test_per_prompt"]
        test = statistics.mean(values)
        difference = [x - y for x, y in zip(values, base_test)]
        metrics[arm] = {"test": test, "ci": interval(values, sets), "dev": arms[arm]["dev"],
                        "delta": statistics.mean(difference), "delta_ci": interval(difference, sets),
                        "gap": (arms[arm]["dev"] - e_dev) - (test - e_test),
                        "candidate": arms[arm]["candidate"]}
    return metrics


def rule(rows) -> dict:
    """The protocol's decision rule for one arm against (a), over the given points."""
    wins = sum(1 for r in rows if r["delta_ci"][0] > 0)
    losses = sum(1 for r in rows if r["delta_ci"][1] < 0)
    mean_delta = statistics.mean(r["delta"] for r in rows)
    gap_excess = statistics.mean(r["gap"] for r in rows) - statistics.mean(r["gap_a"] for r in rows)
    if wins >= 4 and losses <= 1 and mean_delta >= 0.010 and gap_excess <= 0.010:
        verdict = "helps"
    elif (mean_delta < 0.005 and wins <= 2) or losses >= 4:
        verdict = "does not help"
    else:
        verdict = "inconclusive"
    return {"wins": wins, "losses": losses, "mean_delta": mean_delta, "gap_excess": gap_excess,
            "verdict": verdict}


def verdicts(table: list) -> dict:
    """Per arm in IN_VERDICT: the rule over all points, and over before/after the peak."""
    found = {}
    for arm in IN_VERDICT:
        rows = [dict(r[arm], gap_a=r["a"]["gap"], fraction=r["fraction"]) for r in table]
        parts = {"all": rows, "before peak": [r for r in rows if r["fraction"] < BEFORE_PEAK],
                 "from peak on": [r for r in rows if r["fraction"] >= BEFORE_PEAK]}
        found[arm] = {part: rule(chosen) for part, chosen in parts.items() if chosen}
    b, c = found["b"]["all"]["verdict"], found["c"]["all"]["verdict"]
    overall = "yes" if "helps" in (b, c) else "no" if b == c == "does not help" else "inconclusive"
    return {"arms": found, "structured alpha helps": overall}


def describe(candidate: dict) -> str:
    return " ".join(f"{k.replace('alpha', 'α')}={v:.2f}" for k, v in candidate.items())


def checks(summary: dict, v2_path: Path) -> list:
    """Agreement of the search's dev scores with this process's, and α = 0 greedy dev with v2."""
    lines, worst = [], 0.0
    v2 = {s["seed"]: s for s in json.loads(v2_path.read_text())["seeds"]} if v2_path else {}
    for s in summary["seeds"]:
        for fraction, point in s["points"].items():
            for arm in ("a", "b", "c"):
                worst = max(worst, abs(point["arms"][arm]["search_dev"] - point["arms"][arm]["dev"]))
            old = v2.get(s["seed"], {}).get("dev", {}).get(str(float(fraction)), {}).get("0.0")
            new = point["greedy_dev"][0.0] if 0.0 in point["greedy_dev"] else point["greedy_dev"]["0.0"]
            if old is not None and old != new:
                lines.append(f"- seed {s['seed']}, {100 * float(fraction):.0f}%: greedy dev at α = 0 is "
                             f"{new:.4f} here, {old:.4f} in v2")
    lines.insert(0, f"- largest |dev score in the search − dev score here| for the chosen candidates: {worst:.2g}")
    if v2 and len(lines) == 1:
        lines.append("- greedy dev reward at α = 0 equals v2's at every checkpoint and seed")
    return lines


def tables(summary: dict, table: list, found: dict, notes: list) -> str:
    out = [f"# Protocol v3 results ({summary['seconds'] / 60:.1f} min; budget {summary['budget']} candidates "
           f"per searched arm, every coordinate in [0, {summary['alpha_max']:g}]; optuna {summary['optuna']})", ""]
    for arm in ARMS:
        out += [f"## {NAMES[arm]}", "", "| seed | DPO progress | chosen α | dev (sampled) | test [95%] | "
                "Δ vs (a) [paired 95%] | dev → test gap |", "|---|---|---|---|---|---|---|"]
        for r in table:
            m = r[arm]
            out.append(f"| {r['seed']} | {100 * r['fraction']:.0f}% | {describe(m['candidate'])} | {m['dev']:.3f} | "
                       f"{m['test']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] | {m['delta']:+.3f} "
                       f"[{m['delta_ci'][0]:+.3f}, {m['delta_ci'][1]:+.3f}] | {m['gap']:+.3f} |")
        gaps = [r[arm]["gap"] for r in table]
        out += ["", f"Mean gap Ḡ = {statistics.mean(gaps):+.4f}; mean test = "
                    f"{statistics.mean(r[arm]['test'] for r in table):.4f}", ""]
    out += ["## Verdict by the pre-stated rule", "", "| arm vs (a) | points | wins | losses | mean Δ | "
            "Ḡ(arm) − Ḡ(a) | verdict |", "|---|---|---|---|---|---|---|"]
    for arm, parts in found["arms"].items():
        for part, v in parts.items():
            out.append(f"| {NAMES[arm]} | {part} | {v['wins']} | {v['losses']} | {v['mean_delta']:+.4f} | "
                       f"{v['gap_excess']:+.4f} | {v['verdict']} |")
    out += ["", f"**Structured α helps: {found['structured alpha helps']}** (rule: yes if (b) or (c) helps "
                "over all points, no if both do not help, otherwise inconclusive).", "", "## Checks", "", *notes, ""]
    return "\n".join(out)


def picture(path: Path, table: list, seeds: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(seeds), figsize=(5 * len(seeds), 4.2), sharey=True, squeeze=False)
    for axis, seed in zip(axes[0], seeds):
        rows = [r for r in table if r["seed"] == seed]
        for offset, arm in enumerate(("e", "a", "b", "c", "d")):
            x = [100 * r["fraction"] * (1 + 0.04 * (offset - 2)) for r in rows]  # spread on a log axis
            y = [r[arm]["test"] for r in rows]
            errors = [[r[arm]["test"] - r[arm]["ci"][0] for r in rows],
                      [r[arm]["ci"][1] - r[arm]["test"] for r in rows]]
            axis.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=NAMES[arm])
        axis.set(xscale="log", title=f"seed {seed}", xlabel="DPO progress (% of steps)")
        axis.set_xticks([100 * r["fraction"] for r in rows], [f"{100 * r['fraction']:.0f}" for r in rows])
    axes[0][0].set_ylabel("test reward (95% interval)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(out: Path, summary: dict, v2: Path) -> dict:
    table = []
    first = next(iter(summary["seeds"][0]["points"].values()))
    sets = resample_sets(len(first["arms"]["a"]["test_per_prompt"]))
    for s in summary["seeds"]:
        for fraction, point in sorted(s["points"].items(), key=lambda item: float(item[0])):
            table.append({"seed": s["seed"], "fraction": float(fraction), **point_metrics(point, sets)})
    found = verdicts(table)
    text = tables(summary, table, found, checks(summary, v2))
    (out / "results.md").write_text(text)
    (out / "verdict.json").write_text(json.dumps(found, indent=1))
    picture(out / "test_reward.png", table, [s["seed"] for s in summary["seeds"]])
    print(text)
    return found
