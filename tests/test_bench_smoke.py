"""Keeps bench/run.py working: a 0.01B run of all three methods (numbers not asserted)."""

import csv
import subprocess
import sys
from pathlib import Path

from conftest import REPO, cli_env


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
    assert float(expo["fidelity"]) >= 0.9999
    assert Path(tmp_path / "out/results.png").stat().st_size > 0
