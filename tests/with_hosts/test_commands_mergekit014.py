"""mergekit-expo's own commands beside mergekit 0.1.4 (run in .venv-mergekit014)."""

import shutil

import pytest
import torch
from host_table import PRESENT, error_lines, layer_of, run_host

from conftest import CONFIGS, load_folder, write_yaml
from fp64_reference import fidelity

if [str(h) for h in PRESENT] != ["mergekit-0.1.4"]:
    pytest.fail(f"this file runs beside mergekit 0.1.4 alone, found {PRESENT}", pytrace=False)


def test_run_merges_bit_for_bit_and_atomically(models_dir):
    run_host("mergekit-expo", "run", CONFIGS / "expo.yml", models_dir / "out", cwd=models_dir)
    out = load_folder(models_dir / "out")
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    for name, tensor in out.items():
        assert fidelity(tensor, sft[name], aligned[name], 0.3)[0] == 1.0, name
    assert [p.name for p in models_dir.iterdir() if p.name.startswith(".")] == []


def test_run_reads_the_config_strictly(tmp_path, llama_pair):
    sft, aligned = (str(p) for p in llama_pair)
    config = write_yaml(tmp_path / "c.yml", {
        "merge_method": "expo", "base_model": sft,
        "models": [{"model": aligned, "parameters": {"alhpa": 0.5}}]})
    result = run_host("mergekit-expo", "run", config, tmp_path / "out", check=False)
    lines = error_lines(result)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "'alhpa'" in lines[0] and "did you mean 'alpha'" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_demo_merges(tmp_path):
    result = run_host("mergekit-expo", "demo", "--out", tmp_path / "demo")
    assert "ExPO model written to" in result.stdout
    assert (tmp_path / "demo/merged/config.json").is_file()


def test_python_api_names_the_version_it_needs():
    import mergekit_expo

    with pytest.raises(mergekit_expo.ExpoConfigError) as error:
        mergekit_expo.extrapolate({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    assert "mergekit 0.1.5" in str(error.value) and "this environment has mergekit 0.1.4" in str(error.value)


def test_card_upgrades_a_mergekit_yaml_output_and_states_each_tensors_alpha(models_dir):
    shutil.copy(CONFIGS / "expo-gradient.yml", models_dir / "g.yml")
    run_host("mergekit-yaml", "g.yml", "./out", cwd=models_dir)
    readme = models_dir / "out" / "README.md"
    mergekits = readme.read_text()
    refused = run_host("mergekit-expo", "card", "./out", cwd=models_dir, check=False)
    assert refused.returncode == 1 and "pass --overwrite" in error_lines(refused)[0], refused.stderr
    run_host("mergekit-expo", "card", "./out", "--overwrite", cwd=models_dir)
    text = readme.read_text()
    assert text != mergekits and "- expo\n" in text.split("---")[1]
    assert ("- **α**:\n  - `model.embed_tokens`, `model.norm`, `lm_head`: 0.1\n"
            "  - every tensor of the layers: 0.1 at layer 0; 0.5 at layer 1\n") in text
    out = load_folder(models_dir / "out")
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    for name, tensor in out.items():  # what the card says, tensor by tensor
        alpha = 0.5 if layer_of(name) == 1 else 0.1
        assert fidelity(tensor, sft[name], aligned[name], alpha)[0] == 1.0, name
    readme.write_text(text.replace("# out\n", "# my model\n"))
    edited = run_host("mergekit-expo", "card", "./out", "--overwrite", cwd=models_dir, check=False)
    assert edited.returncode == 1 and "was edited after mergekit-expo wrote it" in error_lines(edited)[0]
