"""Smoke test of examples/toy_alignment: the whole pipeline with tiny settings."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, cli_env


@pytest.mark.slow
def test_toy_alignment_quick(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples/toy_alignment/run.py"), "--quick", "--out", str(tmp_path)],
        env=cli_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
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
