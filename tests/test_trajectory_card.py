"""Model cards of expo_trajectory merges: every checkpoint named with its step, the fit's
window and α, the Hub lineage (``base_model`` ids, relation ``merge``) read back with
huggingface_hub; `mergekit-expo card` on a plain mergekit-yaml output."""

import shutil

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from conftest import CONFIGS, hub_cache, run_cli, trajectory_config, write_yaml
from mergekit_expo.cli import main


def ok(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def offline_hub(tmp_path, run_factory, monkeypatch):
    """org/sft and org/run-step-{100,200,300} (trainer folders, trainer_state.json included) in
    a hand-made Hugging Face cache, the Hub unreachable."""
    from huggingface_hub import constants

    sft, checkpoints = run_factory()
    models = {"org/sft": sft, **{f"org/run-step-{s}": c for s, c in zip((100, 200, 300), checkpoints)}}
    cache = hub_cache(tmp_path / "hub", models)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return cache


def test_run_card_names_each_checkpoint_with_its_step(models_dir, monkeypatch):
    monkeypatch.chdir(models_dir)
    ok("run", CONFIGS / "expo-trajectory-window.yml", "./out")
    card = ModelCard.load(models_dir / "out" / "README.md")
    assert card.data.tags[:3] == ["mergekit", "merge", "expo"]
    assert card.data.base_model is None  # local folders are no Hub metadata: the text names them
    text = card.text
    assert "A trajectory-ExPO model: the least-squares line through 5 checkpoint(s)" in text
    assert "- **SFT model** (step 0, mergekit's `base_model`): `./models/sft`" in text
    for step in (100, 200, 300, 400, 500):
        assert f"  - `./models/run/checkpoint-{step}`: step {step}\n" in text
    assert "- **fit**: through the last 3 of the 6 points" in text
    assert ("- **α** (in units of the last checkpoint's update):\n"
            "  - `model.embed_tokens`, `model.norm`, `lm_head`: 0.1\n"
            "  - every tensor of the layers: 0.1 at layer 0; 0.5 at layer 1\n") in text  # as planned
    assert "this is ExPO itself, θ_aligned + α · (θ_aligned − θ_sft)" in text  # the two-point identity


def test_hub_checkpoints_are_the_lineage(tmp_path, offline_hub):
    # No step written: each comes from the trainer_state.json in the Hub snapshot.
    config = trajectory_config("org/sft", [f"org/run-step-{s}" for s in (100, 200, 300)], 0.4)
    ok("run", write_yaml(tmp_path / "hub.yml", config), "./out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == ["org/sft", "org/run-step-100", "org/run-step-200", "org/run-step-300"]
    assert card.data.base_model_relation == "merge"
    for step in (100, 200, 300):
        assert (f"  - [org/run-step-{step}](https://huggingface.co/org/run-step-{step}): step {step}\n"
                in card.text)
    assert "- **α** (in units of the last checkpoint's update): 0.4\n" in card.text
    assert "snapshots" not in card.text and str(offline_hub) not in card.text


def test_card_upgrades_a_mergekit_yaml_output(models_dir, monkeypatch):
    monkeypatch.chdir(models_dir)
    shutil.copy(CONFIGS / "expo-trajectory.yml", models_dir / "t.yml")
    run_cli("mergekit-yaml", "t.yml", "./out", cwd=models_dir)
    ok("card", "./out", "--overwrite")
    text = (models_dir / "out" / "README.md").read_text()
    assert "  - `./models/run/checkpoint-300`: step 300\n" in text
    assert "- **fit**: through all 6 points" in text
    assert "- **α** (in units of the last checkpoint's update): 0.3\n" in text
