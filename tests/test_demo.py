"""The README's first command: `mergekit-expo demo` merges a generated pair."""

import re

from conftest import load_folder, run_cli
from fp64_reference import fidelity


def test_demo_writes_a_checked_expo_model(tmp_path):
    result = run_cli("mergekit-expo", "demo", "--out", tmp_path / "demo", "--alpha", "0.4")
    assert f"ExPO model written to {tmp_path / 'demo' / 'merged'}" in result.stdout
    ratio = re.search(r"\| = ([0-9.]+)\n.*\n.*ratio should be α = 0.4 ", result.stdout)
    assert ratio and abs(float(ratio.group(1)) - 0.4) < 0.01, result.stdout
    out = load_folder(tmp_path / "demo/merged")
    sft = load_folder(tmp_path / "demo/models/sft")
    aligned = load_folder(tmp_path / "demo/models/aligned")
    for name, tensor in out.items():
        equal, worst = fidelity(tensor, sft[name], aligned[name], 0.4)
        assert equal == 1.0 and worst <= 1.0, name
    assert (tmp_path / "demo/merged/config.json").exists()


def test_demo_runs_again_over_its_own_output(tmp_path):
    run_cli("mergekit-expo", "demo", "--out", tmp_path / "demo", "--family", "qwen2")
    again = run_cli("mergekit-expo", "demo", "--out", tmp_path / "demo", check=False)
    assert again.returncode == 1 and "pass --overwrite" in again.stderr
    run_cli("mergekit-expo", "demo", "--out", tmp_path / "demo", "--family", "qwen2", "--overwrite")
    assert (tmp_path / "demo/merged/config.json").exists()
