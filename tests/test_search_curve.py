"""`search --strategy curve` through the command: the loop asks the strategy what to score, and
reaches the units and the pick that the strategy reaches offline on the same per-row scores;
unscored α are shown as such in every report; workers share it, each unit scored once."""

import csv
import random

import pytest

from conftest import invoke
from mergekit_expo.search.strategies.curve import CurveSearch
from mergekit_expo.search.strategies.offline import run_offline
from test_search_race import by_alpha, f32_pair, saved, write_probe  # noqa: F401 (a fixture)
from test_search_space import start_worker, study_trials

ALPHAS = [round(0.05 * i, 2) for i in range(1, 21)]  # with α = 0: 21 candidates


def probe_table(rows: int, noise: float) -> dict:
    """The probe scorer's per-row scores (test_search_race.PROBE), computed as it computes them."""
    return {alpha: [-4 * (alpha - 0.3) ** 2 + random.Random(row * 1000 + round(alpha * 100)).gauss(0, noise)
                    for row in range(rows)] for alpha in [0.0, *ALPHAS]}


def test_the_command_scores_what_the_strategy_asks_and_shows_what_it_did_not(f32_pair, tmp_path):  # noqa: F811
    write_probe(tmp_path, f32_pair, rows=64, noise=0.3)
    result = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--strategy", "curve",
                    "--alphas", ",".join(map(str, ALPHAS)), "--out", "./s", "--write-best", "./best",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = by_alpha(tmp_path / "s")
    offline, record, _ = run_offline(CurveSearch, probe_table(64, 0.3), options={"tolerance": 3.0})
    assert {alpha: row["n"] for alpha, row in rows.items()} == {row.alpha: row.n for row in offline}
    race = saved(tmp_path / "s")["race"]
    assert race["strategy"] == "curve" and race["rows_full"] == 64 * 21
    unscored = {left["alpha"] for left in race["unscored"]}
    assert unscored == set(ALPHAS) - set(rows) and len(unscored) >= 10
    best = max((a for a, r in rows.items() if r["dropped_in"] is None and r["retired_in"] is None),
               key=lambda a: rows[a]["score"])
    assert f"alpha: {best}" in (tmp_path / "s" / "best.yml").read_text()
    # the reports: every α of the grid, the unscored ones as such
    lines = result.stdout.splitlines()
    assert sum(line.endswith("not scored") for line in lines) == len(unscored)
    assert any(line.startswith("not scored: alpha ") and "beyond alpha=" in line for line in lines)
    with open(tmp_path / "s" / "results.csv", newline="") as handle:
        table = {float(r["alpha"]): r for r in csv.DictReader(handle)}
    assert set(table) == {0.0, *ALPHAS} and all(table[a]["n"] == "0" and table[a]["score"] == "" for a in unscored)
    assert next(line for line in result.stderr.splitlines() if line.startswith("curve: ")).startswith(
        f"curve: {len(unscored)} α not scored; scored {race['rows_scored']} of {64 * 21} candidate rows")
    card = (tmp_path / "best" / "README.md").read_text()
    assert "chosen by the curve search (`--strategy curve`)" in card and card.count("| not scored |") == len(unscored)
    chosen = rows[best]
    assert (f"α = {best:g} is the pick of the search (`--strategy curve`, above) among the {len(rows)} α values "
            f"it scored. Its score ({chosen['score']:.4g}) is its mean on the {chosen['n']} rows it was scored "
            "on") in card
    assert "has the highest score" not in card
    # another strategy on the same --out is another search: refused in one line
    again = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--race",
                   "--alphas", ",".join(map(str, ALPHAS)), "--out", "./s", cwd=tmp_path)
    assert again.returncode == 1 and "holds results of a different search" in again.stderr


def unit_spans(out):
    """(α, block) of every block each completed unit scored: once each when workers share."""
    spans = []
    for trial in study_trials(out):
        if trial.state.name == "COMPLETE":
            unit = trial.user_attrs["candidate"]
            spans += [(unit["alpha"], unit["block"] + i) for i in range(unit.get("blocks", 1))]
    return spans


def test_two_workers_share_the_curve_search(f32_pair, tmp_path):  # noqa: F811
    write_probe(tmp_path, f32_pair, rows=64, noise=0.3, pause=0.2)
    grid = ",".join(map(str, ALPHAS))
    workers = [start_worker(tmp_path, f32_pair, "--alphas", grid, "--strategy", "curve") for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
    spans = unit_spans(tmp_path / "s")
    assert len(spans) == len(set(spans))  # each block of each α scored once
    offline, _, _ = run_offline(CurveSearch, probe_table(64, 0.3), options={"tolerance": 3.0})
    assert {a: r["n"] for a, r in by_alpha(tmp_path / "s").items()} == {r.alpha: r.n for r in offline}


@pytest.mark.slow
def test_a_curve_search_killed_mid_unit_resumes(f32_pair, tmp_path):  # noqa: F811
    from test_search_space import kill_mid_candidate

    write_probe(tmp_path, f32_pair, rows=64, noise=0.3, pause=1.0)
    grid = ",".join(map(str, ALPHAS))
    kill_mid_candidate(start_worker(tmp_path, f32_pair, "--alphas", grid, "--strategy", "curve",
                                    "--heartbeat", 1), tmp_path / "s")
    second = start_worker(tmp_path, f32_pair, "--alphas", grid, "--strategy", "curve", "--heartbeat", 1)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0 and "resuming the curve search" in stderr, stderr
    spans = unit_spans(tmp_path / "s")
    assert len(spans) == len(set(spans))
    offline, _, _ = run_offline(CurveSearch, probe_table(64, 0.3), options={"tolerance": 3.0})
    assert {a: r["n"] for a, r in by_alpha(tmp_path / "s").items()} == {r.alpha: r.n for r in offline}


def test_a_guarded_curve_search_keeps_alpha_0_and_never_picks_an_unguarded_alpha(f32_pair, tmp_path):  # noqa: F811
    write_probe(tmp_path, f32_pair, rows=48, noise=0.3)
    result = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--guard", "slow_scorer:guard",
                    "--max-drop", "0.2", "--strategy", "curve", "--alphas", ",".join(map(str, ALPHAS)),
                    "--out", "./s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    race, rows = saved(tmp_path / "s")["race"], by_alpha(tmp_path / "s")
    assert rows[0.0]["n"] == 16 * race["rounds"]  # α = 0: on every block the search read
    kept = [a for a, r in rows.items() if r["dropped_in"] is None and r["retired_in"] is None]
    assert kept and all(rows[0.0]["guard"] - rows[a]["guard"] <= 0.2 for a in kept)
    assert any("guard" in why for why in race["dropped"].values())  # α past 0.2 fail the guard (it falls by α)


def test_a_curve_search_stopped_mid_way_resumes_where_it_stopped(f32_pair, tmp_path):  # noqa: F811
    write_probe(tmp_path, f32_pair, rows=64, noise=0.3)
    # the probe's function fails once 8 units are scored, as a crash mid-search would stop it
    (tmp_path / "stop_scorer.py").write_text(
        "import os\nfrom slow_scorer import norm as probe\n\n\n"
        "def norm(model, tokenizer, rows):\n"
        "    if os.path.exists('stop') and os.path.exists('calls.jsonl') and \\\n"
        "            sum(1 for _ in open('calls.jsonl')) >= 8:\n"
        "        raise RuntimeError('stopped on purpose')\n"
        "    return probe(model, tokenizer, rows)\n\n\nnorm.rows = probe.rows\n")
    (tmp_path / "stop").write_text("")
    common = ("search", *f32_pair, "--scorer", "stop_scorer:norm", "--strategy", "curve",
              "--alphas", ",".join(map(str, ALPHAS)), "--out", "./s")
    stopped = invoke(*common, cwd=tmp_path)
    assert stopped.returncode == 1 and "stopped on purpose" in stopped.stderr
    (tmp_path / "stop").unlink()
    resumed = invoke(*common, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the curve search: 8 candidate blocks already scored" in resumed.stderr
    assert len(unit_spans(tmp_path / "s")) == len(set(unit_spans(tmp_path / "s")))
    offline, _, _ = run_offline(CurveSearch, probe_table(64, 0.3), options={"tolerance": 3.0})
    assert {a: r["n"] for a, r in by_alpha(tmp_path / "s").items()} == {r.alpha: r.n for r in offline}


def test_the_readme_quick_start_search_runs_as_typed(models_dir):
    """The README's search line, from a folder holding ./models/{sft,aligned} and its data file:
    the curve search runs by default and writes ./expo-search."""
    import json
    import re
    import shlex

    from conftest import REPO, run_cli

    line = re.search(r"^\.venv/bin/(mergekit-expo search .*)$", (REPO / "README.md").read_text(), re.M).group(1)
    args = shlex.split(line)
    data = args[args.index("--data") + 1]
    (models_dir / data).write_text("".join(
        json.dumps({"prompt": f"w{i} w2", "chosen": f"w{i % 7 + 3}", "rejected": "w10"}) + "\n" for i in range(40)))
    result = run_cli(*args, cwd=models_dir)
    assert "--strategy" not in line and result.stderr.startswith("curve: "), result.stderr
    results = json.loads((models_dir / "expo-search" / "results.json").read_text())
    grid = [0.0, *map(float, args[args.index("--alphas") + 1].split(","))]
    assert sorted(row["alpha"] for row in results["results"]) == grid
    assert any(row["alpha"] == float(saved_best(models_dir / "expo-search")) for row in results["results"])
    # Rerun on a smaller grid: the curve search reports that grid, and names the scored α it leaves out.
    smaller = [*args[:args.index("--alphas") + 1], ",".join(map(str, grid[1:3])), *args[args.index("--alphas") + 2:]]
    rerun = run_cli(*smaller, cwd=models_dir)
    rows = json.loads((models_dir / "expo-search" / "results.json").read_text())["results"]
    assert sorted(row["alpha"] for row in rows) == grid[:3]
    left_out = sorted(f"alpha={row['alpha']:g}" for row in results["results"]
                      if row["n"] and row["alpha"] not in grid[:3])
    assert left_out and f"\n{', '.join(left_out)}: scored by an earlier run in ./expo-search, not in this run's " \
        "grid: kept in its study, left out of the reports (add them to --alphas to see them)\n" in rerun.stderr


def saved_best(out) -> str:
    import yaml

    config = yaml.safe_load((out / "best.yml").read_text())
    return str(config["models"][0]["parameters"]["alpha"])
