"""Keeps bench/run.py working: a 0.01B run of all three methods (numbers not asserted)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env


@pytest.mark.slow
def test_bench_run_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench/run.py"), "--sizes", "0.01B", "--repeats", "1",
         "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out/results.csv")))
    assert {r["method"] for r in rows} == {"expo", "task_arithmetic", "paper"}
    assert all(r["completed"] == "True" for r in rows)
    expo = next(r for r in rows if r["method"] == "expo")
    assert float(expo["fidelity"]) == 1.0  # rounded once, judged by tests/fp64_reference.py
    assert Path(tmp_path / "out/results.png").stat().st_size > 0


def run_script(*args):
    result = subprocess.run([sys.executable, *map(str, args)], env=cli_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_kernel_benchmark_smoke():
    out = run_script(REPO / "bench/kernel.py", "--elements", "200000")
    assert "expo kernel" in out and "100.000000%" in out


@pytest.mark.slow
def test_search_lora_and_profile_benchmarks_smoke(tmp_path):
    cache = tmp_path / "cache"
    out = run_script(REPO / "bench/search_vs_naive.py", "--size", "0.01B", "--k", "2",
                     "--cache", cache, "--work", tmp_path / "search")
    assert "per-α weights" in out
    out = run_script(REPO / "bench/lora_vs_full.py", "--size", "0.01B", "--cache", cache,
                     "--work", tmp_path / "lora")
    assert "adapter route:" in out
    out = run_script(REPO / "bench/profile_expo.py", "--size", "0.01B", "--cache", cache,
                     "--work", tmp_path / "profile")
    assert "expo arithmetic" in out
    out = run_script(REPO / "bench/profile_expo.py", "--size", "0.01B", "--cache", cache, "--method",
                     "passthrough", "--out-shard-size", "default", "--work", tmp_path / "profile-floor")
    assert "safetensors serialization" in out
    out = run_script(REPO / "bench/floor.py", "--size", "0.01B", "--repeats", "1", "--cache", cache,
                     "--settings", "default;500M --async-write", "--work", tmp_path / "floor")
    assert "expo/passthrough" in out and "probe/passthrough" in out and "500M --async-write" in out


@pytest.mark.slow
def test_trajectory_benchmark_smoke(tmp_path):
    out = run_script(REPO / "bench/trajectory.py", "--size", "0.01B", "--checkpoints", "3", "--repeats", "1",
                     "--cache", tmp_path / "cache", "--work", tmp_path / "trajectory")
    assert "trajectory/expo peak anon" in out and "trajectory/expo peak RSS" in out


def test_gpu_check_refuses_cleanly_without_a_gpu(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: run scripts/gpu_check.sh itself")
    result = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--work", str(tmp_path)],
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip() == "Error: no CUDA device is visible: run this on a GPU machine"


@pytest.mark.slow
def test_search_engines_benchmark_smoke(tmp_path):
    out = run_script(REPO / "bench/search_engines.py", "--hidden", "64", "--layers", "2", "--prompts", "4",
                     "--new-tokens", "8", "--batch-size", "4", "--work", tmp_path / "engines")
    assert "engine/plain" in out and "preference" in out


@pytest.mark.slow
def test_search_workers_benchmark_smoke(tmp_path):
    out = run_script(REPO / "bench/search_workers.py", "--hidden", "64", "--layers", "2", "--rows", "4",
                     "--candidates", "4", "--repeats", "1", "--work", tmp_path / "workers")
    assert "2 workers:" in out and "0 duplicates" in out and "structured / scalar" in out


@pytest.mark.slow
def test_search_race_benchmark_smoke(tmp_path):
    out = run_script(REPO / "bench/search_race.py", "--grid", "5", "--rows", "32", "--rm-prompts", "16",
                     "--new-tokens", "2", "--big-rows", "16", "--big-grid", "3", "--hidden", "64", "--layers", "2",
                     "--orders", "3", "--work", tmp_path / "race")
    assert "rows full" in out and "flat peak, preference" in out and "tiny, reward-model" in out
    assert "floor/full" in out and "beyond floor" in out
    assert "held-out, short peak, long tail" in out and "the pick's full-data score" in out
    replays = out.split("replayed on each full search's per-row scores")[1].splitlines()
    # the replay is the command's own run where a row's score does not depend on its batch
    for strategy in ("race", "curve"):
        assert [line for line in replays if line.startswith("tiny, preference")
                and line.split()[2] == strategy][0].endswith("yes")
    # its full searches, replayed by the curve search at other tolerances
    out = run_script(REPO / "bench/curve_tolerance.py", "--work", tmp_path / "race", "--tolerances", "3,5",
                     "--orders", "2")
    assert "replayed on 6 full searches" in out and "race: held-out, peak inside" in out
    assert out.splitlines()[-1].startswith("all cases: mean share, picks outside")


@pytest.mark.slow
def test_search_trajectory_benchmark_smoke():
    out = run_script(REPO / "bench/search_trajectory.py", "--hidden", "64", "--layers", "2", "--checkpoints", "3",
                     "--repeats", "1")
    assert "trajectory/expo per update" in out and "a run of 3 checkpoints" in out
