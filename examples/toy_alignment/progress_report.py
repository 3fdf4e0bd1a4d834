"""Pictures and tables of protocol v2 (progress_map.py): heat map, test chart, verdicts."""

import statistics
from pathlib import Path


def report(out: Path, summary: dict) -> None:
    seeds = summary["seeds"]
    heat_map(out / "dev_heatmap.png", seeds, summary["alphas"])
    test_chart(out / "test_reward.png", seeds)
    (out / "results.md").write_text(tables(summary))
    print(tables(summary))


def heat_map(path, seeds, alphas):
    """Dev reward over (DPO progress × α), averaged over seeds; DPO's own curve and the
    dev-chosen α of each seed marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted(seeds[0]["dev"])
    grid = [[statistics.mean(s["dev"][f][a] for s in seeds) for f in fractions] for a in alphas]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                         gridspec_kw={"height_ratios": [1, 2]})
    for s in seeds:
        top.plot(range(len(fractions)), [s["dev"][f][0.0] for f in fractions], marker="o",
                 label=f"seed {s['seed']}")
        peak = max(fractions, key=lambda f: s["dev"][f][0.0])
        top.axvline(fractions.index(peak), color=top.lines[-1].get_color(), linestyle=":", alpha=0.6)
    top.set(ylabel="dev reward at α = 0", title="DPO's own dev reward (dotted: its peak per seed)")
    top.legend(fontsize=8)
    image = bottom.imshow(grid, aspect="auto", origin="lower", cmap="viridis")
    # One colorbar for both panels, so the curve's points stay above their columns.
    figure.colorbar(image, ax=[top, bottom], label=f"dev reward, mean of {len(seeds)} seeds")
    for offset, s in enumerate(seeds):
        bottom.scatter([i + (offset - 1) * 0.15 for i in range(len(fractions))],
                       [alphas.index(s["chosen"][f]) for f in fractions], marker="x", color="red", s=30,
                       label="dev-chosen α" if offset == 0 else None)
    bottom.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    bottom.set_xticks(range(len(fractions)), [f"{100 * f:.0f}%" for f in fractions])
    bottom.set(xlabel="DPO progress (share of steps)", ylabel="α")
    bottom.legend(loc="upper right", fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def test_chart(path, seeds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted(seeds[0]["dev"])
    figure, axes = plt.subplots(1, len(seeds), figsize=(5 * len(seeds), 4), sharey=True, squeeze=False)
    for axis, s in zip(axes[0], seeds):
        curves = (("DPO checkpoint", "tab:blue"), ("+ ExPO (dev-chosen α)", "tab:orange"))
        for index, (name, color) in enumerate(curves):
            values = [s["test"][f][index] for f in fractions]
            axis.errorbar([100 * f for f in fractions], [v[0] for v in values],
                          yerr=[[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]],
                          marker="o", capsize=3, color=color, label=name)
        axis.axhline(s["sft_test"][0], color="gray", linestyle="--", label="SFT")
        axis.set(title=f"seed {s['seed']}: test reward (95% intervals)", xlabel="DPO progress (%)")
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("test reward")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def tables(summary) -> str:
    lines = []
    for s in summary["seeds"]:
        verdict = s["verdict"]
        lines += [f"seed {s['seed']}: DPO dev-reward peak at {100 * verdict['peak']:.0f}% of "
                  f"{s['dpo_steps']} steps; SFT test reward {s['sft_test'][0]:.3f}", "",
                  "| DPO progress | dev reward α=0 | dev-chosen α | test DPO | test + ExPO | supports |",
                  "|---|---|---|---|---|---|"]
        for f in sorted(s["dev"]):
            (plain, pl, ph), (expo, el, eh) = s["test"][f]
            lines.append(f"| {100 * f:.0f}% | {s['dev'][f][0.0]:.3f} | {s['chosen'][f]:g} | "
                         f"{plain:.3f} [{pl:.3f}, {ph:.3f}] | {expo:.3f} [{el:.3f}, {eh:.3f}] | "
                         f"{'yes' if verdict['supports'][f] else 'no'} |")
        lines.append("")
    fractions = sorted(summary["seeds"][0]["dev"])
    support = {f: sum(s["verdict"]["supports"][f] for s in summary["seeds"]) for f in fractions}
    lines.append("seeds supporting the hypothesis, per checkpoint: " +
                 ", ".join(f"{100 * f:.0f}%: {support[f]}/{len(summary['seeds'])}" for f in fractions))
    lines.append(f"total time {summary['seconds'] / 60:.1f} min")
    return "\n".join(lines) + "\n"


def load(path: Path) -> dict:
    """results.json with its number keys (JSON made them strings) as floats again."""
    import json

    summary = json.loads(Path(path).read_text())
    for seed in summary["seeds"]:
        seed["dev"] = {float(f): {float(a): v for a, v in row.items()} for f, row in seed["dev"].items()}
        for key in ("chosen", "test"):
            seed[key] = {float(f): v for f, v in seed[key].items()}
        seed["verdict"]["peak"] = float(seed["verdict"]["peak"])
        seed["verdict"]["supports"] = {float(f): v for f, v in seed["verdict"]["supports"].items()}
    return summary


if __name__ == "__main__":  # redraw: python progress_report.py OUT_DIR
    import sys

    report(Path(sys.argv[1]), load(Path(sys.argv[1]) / "results.json"))
