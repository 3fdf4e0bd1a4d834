"""mergekit-expo's own commands beside mergekitty alone (run in .venv-mergekitty):
what needs mergekit refuses in one line that names mergekitty and what to use."""

import pytest
import torch
from host_table import PRESENT, error_lines, run_host

from conftest import CONFIGS

if [h.name for h in PRESENT] != ["mergekitty"]:
    pytest.fail(f"this file runs beside mergekitty alone, found {PRESENT}", pytrace=False)
MERGEKITTY = str(PRESENT[0]).replace("-", " ")  # "mergekitty 0.3.1.post2"


def assert_refused(result, *parts):
    lines = error_lines(result)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("command", ["run", "demo"])
def test_merging_commands_point_to_mergekitty_yaml(tmp_path, models_dir, command):
    args = [CONFIGS / "expo.yml", tmp_path / "out"] if command == "run" else ["--out", tmp_path / "out"]
    result = run_host("mergekit-expo", command, *args, cwd=models_dir, check=False)
    assert_refused(result, f"mergekit-expo {command} needs mergekit", MERGEKITTY, "mergekitty-yaml")
    assert not (tmp_path / "out").exists()


def test_card_names_what_to_install(models_dir):
    run_host("mergekitty-yaml", CONFIGS / "expo.yml", models_dir / "out", cwd=models_dir)
    result = run_host("mergekit-expo", "card", models_dir / "out", cwd=models_dir, check=False)
    assert_refused(result, "mergekit-expo card needs mergekit", MERGEKITTY, "pip install 'mergekit")


def test_help_lists_them_as_unavailable():
    result = run_host("mergekit-expo", "--help")
    assert "run     unavailable here" in result.stdout and "lora" in result.stdout


def test_search_write_best_refuses_before_searching(tmp_path, llama_pair):
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "w1", "chosen": "w2", "rejected": "w3"}\n')
    result = run_host("mergekit-expo", "search", *llama_pair, "--data", data, "--out",
                      tmp_path / "search", "--write-best", tmp_path / "best", check=False)
    assert_refused(result, "--write-best needs mergekit", MERGEKITTY)
    assert not (tmp_path / "search").exists()


def test_python_api_names_what_it_needs():
    import mergekit_expo

    with pytest.raises(mergekit_expo.ExpoConfigError) as error:
        mergekit_expo.extrapolate({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    assert "needs mergekit" in str(error.value) and MERGEKITTY in str(error.value)
