"""Smoke test of examples/toy_alignment: the whole pipeline with tiny settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env


def run_example(script, *args):
    result = subprocess.run([sys.executable, str(REPO / "examples/toy_alignment" / script), *map(str, args)],
                            env=cli_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_toy_alignment_quick(tmp_path):
    run_example("run.py", "--quick", "--out", tmp_path)
    report = json.loads((tmp_path / "results.json").read_text())
    models = [row["model"] for row in report["rows"]]
    assert models.count("DPO") == 5 and models.count("DPO + ExPO") == 5 and models[0] == "SFT"
    for row in report["rows"]:
        assert -1.0 <= row["low"] <= row["reward"] <= row["high"] <= 1.0
    chosen = [row["alpha"] for row in report["rows"] if row["model"] == "DPO + ExPO"]
    assert all(a in (0.0, 0.5) for a in chosen)  # picked from the quick grid on dev
    assert (tmp_path / "results.png").stat().st_size > 0
    merged = [p for p in (tmp_path / "expo").glob("checkpoint-*") if p.is_dir()]
    assert len(merged) == 5 and all((p / "config.json").exists() for p in merged)


@pytest.mark.slow
def test_progress_map_quick(tmp_path):
    run_example("progress_map.py", "--quick", "--seeds", "0", "--out", tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    seed = summary["seeds"][0]
    assert sorted(float(f) for f in seed["dev"]) == [0.25, 0.5, 1.0]
    for fraction, by_alpha in seed["dev"].items():
        assert sorted(float(a) for a in by_alpha) == [0.0, 0.5]
        chosen = seed["chosen"][fraction]
        assert by_alpha[str(chosen)] == max(by_alpha.values())  # the dev-best α was chosen
        (plain, low, high), (expo, expo_low, expo_high) = seed["test"][fraction]
        assert low <= plain <= high and expo_low <= expo <= expo_high
        if chosen == 0:
            assert expo == plain
    assert set(seed["verdict"]["supports"]) == set(seed["dev"])
    for picture in ("dev_heatmap.png", "test_reward.png"):
        assert (tmp_path / picture).stat().st_size > 0
    assert "seeds supporting the hypothesis" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_progress_map_pilot_scores_dpo_alone(tmp_path):
    result = run_example("progress_map.py", "--quick", "--pilot", "--seeds", "0", "--dpo-lr", "1e-5",
                         "--out", tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["pilot"] and summary["dpo_lr"] == 1e-5
    seed = summary["seeds"][0]
    assert all(list(by_alpha) == ["0.0"] for by_alpha in seed["dev"].values())  # no ExPO model computed
    assert "test" not in seed and not (tmp_path / "dev_heatmap.png").exists()
    assert "DPO dev reward by progress" in result.stdout


@pytest.mark.slow
def test_structured_alpha_quick(tmp_path):
    run_example("structured_alpha.py", "--quick", "--seeds", "0", "--out", tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["budget"] == 5 and summary["quick"]
    points = summary["seeds"][0]["points"]
    assert sorted(float(f) for f in points) == [0.25, 1.0]
    for point in points.values():
        searches = point["searches"]
        assert set(searches) == {"a", "b", "c"} and all(len(rows) == 5 for rows in searches.values())
        for rows in searches.values():  # α = 0 everywhere is scored first in every arm
            assert set(rows[0]["alphas"].values()) == {0.0}
        assert [r["alphas"]["alpha"] for r in searches["a"]] == [0, 0.5, 1, 1.5, 2]
        assert set(searches["c"][1]["alphas"]) == {f"{g}_{e}" for g in ("attention", "mlp", "other")
                                                    for e in ("first", "last")}
        arms = point["arms"]
        assert set(arms) == {"a", "a7", "b", "c", "d", "d'", "e"}
        for arm in ("a", "b", "c"):  # what the search scored is what this process scores
            assert arms[arm]["dev"] == arms[arm]["search_dev"]
            assert arms[arm]["search_dev"] == max(r["score"] for r in searches[arm])
        alpha = arms["a"]["candidate"]["alpha"]
        assert arms["d"]["candidate"] == {"attention": 0.5 * alpha, "mlp": alpha, "other": alpha}
        assert arms["d'"]["candidate"]["other"] == 0.0 and arms["e"]["candidate"] == {"alpha": 0.0}
        assert all(len(a["test_per_prompt"]) == summary["settings"]["test_prompts"] for a in arms.values())
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["structured alpha helps"] in ("yes", "no", "inconclusive")
    assert set(verdict["arms"]) == {"b", "c", "d"}
    assert (tmp_path / "test_reward.png").stat().st_size > 0
    assert "Verdict by the pre-stated rule" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_race_alpha_quick(tmp_path):
    run_example("race_alpha.py", "--quick", "--seeds", "0", "--out", tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["grid"] == 5 and summary["quick"]
    points = summary["seeds"][0]["points"]
    assert sorted(float(f) for f in points) == [0.25, 1.0]
    for point in points.values():
        full, raced = point["searches"]["a"]["results"], point["searches"]["r"]["results"]
        grid = [0, 0.5, 1, 1.5, 2]
        assert [r["alphas"]["alpha"] for r in full] == [r["alphas"]["alpha"] for r in raced] == grid
        race = point["searches"]["r"]["race"]
        assert race["rows"] == summary["dev_prompts"] and race["rounds"] >= 1
        assert all(0 < r["n"] <= race["rows"] for r in raced)
        assert race["rows_scored"] == sum(r["n"] for r in raced) <= race["rows_full"]
        survivors = [r for r in raced if r["dropped_in"] is None and r.get("retired_in") is None]
        assert survivors and point["arms"]["r"]["alpha"] in [r["alphas"]["alpha"] for r in survivors]
        assert point["arms"]["a"]["search_dev"] == max(r["score"] for r in full)
        arms = point["arms"]
        assert all(len(a["test_per_prompt"]) == summary["settings"]["test_prompts"] for a in arms.values())
    verdict = json.loads((tmp_path / "verdict.json").read_text())["verdict"]["all"]
    assert verdict["points"] == 2 and 0 < verdict["generations_share"] <= 1
    trained = json.loads((tmp_path / "seed-0" / "training.json").read_text())  # what a rerun reuses
    assert sorted(map(float, trained["checkpoints"])) == [0.25, 1.0] and Path(trained["sft"]).is_dir()
    assert verdict["verdict"].split(" (")[0] in ("goal met", "stretch goal met", "not met")
    assert "Verdict by the pre-stated rule" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_race_alpha_quick_with_the_curve_search(tmp_path):
    run_example("race_alpha.py", "--quick", "--seeds", "0", "--arms", "a,r,s,t", "--curve-tolerance", "5",
                "--out", tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["arms"] == ["a", "r", "s", "t"] and summary["curve_tolerance"] == 5
    for point in summary["seeds"][0]["points"].values():
        curve = point["searches"]["s"]
        assert curve["race"]["strategy"] == "curve" == point["searches"]["t"]["race"]["strategy"]
        assert curve["race"]["tolerance"] == 3 and point["searches"]["t"]["race"]["tolerance"] == 5
        assert len(curve["results"]) + len(curve["race"]["unscored"]) == summary["grid"]
        assert point["arms"]["s"]["alpha"] in [r["alphas"]["alpha"] for r in curve["results"]]
        assert len(point["arms"]["s"]["test_per_prompt"]) == summary["settings"]["test_prompts"]
    found = json.loads((tmp_path / "verdict.json").read_text())
    assert found["arm"] == "t" and set(found["by_arm"]) == {"r", "s", "t"}
    assert found["verdict"]["all"]["verdict"].split(" (")[0] in ("goal met", "moonshot met", "not met")
    text = (tmp_path / "results.md").read_text()
    assert "## (s) curve search (`--strategy curve`) against (a)" in text and "## (r) raced grid" in text


@pytest.mark.slow
def test_trajectory_alpha_quick(tmp_path):
    run_example("trajectory_alpha.py", "--quick", "--seeds", "0", "--out", tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    for point in summary["seeds"][0]["points"].values():
        assert len(point["e"]["fractions"]) == 1 and len(point["t"]["fractions"]) >= 2
        for arm in ("e", "t"):
            assert len(point[arm]["results"]) == summary["grid"]  # every α scored in both: one budget
            assert len(point[arm]["test_per_prompt"]) == summary["settings"]["test_prompts"]
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["verdict"] in ("trajectory better", "trajectory worse", "no difference shown")
    assert "Verdict by the pre-stated rule" in (tmp_path / "results.md").read_text()
