"""Bad input to expo_trajectory under plain `mergekit-yaml` (mergekit 0.1.5): one line naming
the problem and the fix, a non-zero exit, and no tensor written."""

import json
import shutil

import pytest

from conftest import load_folder, run_cli, trajectory_config, write_yaml


def renamed(tmp, checkpoints):
    """Copies of the checkpoints under names that state no step (a, b, ...)."""
    return [copied(tmp, folder, name) for name, folder in zip("abcdefg", checkpoints)]


def copied(tmp, folder, name=None):
    target = tmp / (name or folder.name)
    shutil.copytree(folder, target)
    return target


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# case -> (build(tmp, sft, checkpoints, unnamed) -> config, part of the one line)
# ``checkpoints`` state their steps (checkpoint-N, trainer_state.json); ``unnamed`` state none.
BAD = {
    "another architecture": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, [
            *ckpts[:2], _edited(copied(tmp, ckpts[2]), hidden_size=128)]),
        "hidden_size differs: 64 in SFT"),
    "repeated steps": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, unnamed[:2], steps=[100, 100]),
        "both have step 100"),
    "missing step": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, unnamed[:2]),
        "has no step: write its training step under its parameters:"),
    "steps out of order": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, [ckpts[0], ckpts[2], ckpts[1]]),
        "steps must increase down models:"),
    "no base_model": (
        lambda tmp, sft, ckpts, unnamed: {k: v for k, v in trajectory_config(sft, ckpts).items()
                                          if k != "base_model"},
        "expo_trajectory needs base_model: set it to the SFT checkpoint"),
    "no checkpoint": (
        lambda tmp, sft, ckpts, unnamed: {"merge_method": "expo_trajectory", "base_model": str(sft),
                                          "models": [{"model": str(sft)}]},
        "needs at least one checkpoint under models:"),
    "a checkpoint is the SFT model": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, [copied(tmp, sft, "sft-copy"), ckpts[1]],
                                                           steps=[50, 200]),
        "holds the same weights as base_model"),
    "step 0": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, unnamed[:2], steps=[0, 200]),
        "step must be at least 1, got 0"),
    "window of one point": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, ckpts, window=1),
        "window must be a whole number of at least 2"),
    "window larger than the points": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, ckpts, window=7),
        "window is 7, but there are only 6 points"),
    "alpha is NaN": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, ckpts, float("nan")),
        "alpha must be finite"),
    "written step against the folder": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, ckpts[:3], steps=[100, 200, 250]),
        "has step: 250, but trainer_state.json (global_step) says 300"),
    "folder name against trainer_state.json": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, [
            ckpts[0], _edited(copied(tmp, ckpts[1]), "trainer_state.json", global_step=150)]),
        "trainer_state.json (global_step) says step 150, its folder name checkpoint-200 says 200"),
}


def _edited(folder, file="config.json", **changes):
    edit_json(folder / file, **changes)
    return folder


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, run_factory, case):
    build, expected = BAD[case]
    sft, checkpoints = run_factory()
    _, plain = run_factory(steps=(100, 200), trainer_state=False)
    (tmp_path / "unnamed").mkdir()
    config = write_yaml(tmp_path / "c.yml", build(tmp_path, sft, checkpoints,
                                                  renamed(tmp_path / "unnamed", plain)))
    result = run_cli("mergekit-yaml", config, tmp_path / "out", "--out-shard-size", "1K", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mergekit_expo.errors.Expo") and expected in last, last
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_another_vocabulary_is_mergekits_one_line(tmp_path, run_factory, pair_factory):
    sft, checkpoints = run_factory()
    _, wider = pair_factory(added_tokens=("<|im_start|>",))
    config = write_yaml(tmp_path / "c.yml", trajectory_config(sft, [checkpoints[0], wider], steps=[100, 200]))
    result = run_cli("mergekit-yaml", config, tmp_path / "out", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    # mergekit's own check names the tensor, the shapes (one per input) and the tokenizer fix
    assert "embed_tokens" in last or "lm_head" in last, last
    assert "(65, 64)" in last and "tokenizer: {source: base}" in last, last
    assert not list((tmp_path / "out").glob("*.safetensors"))
    assert load_folder(wider)  # the checkpoint itself is untouched and readable


# Under `mergekit-expo run` the same inputs, plus what only its strict reading and its checks
# before any tensor is read can catch.
RUN_ONLY = {
    "another vocabulary": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, [ckpts[0], _edited(copied(tmp, ckpts[1]),
                                                                                   vocab_size=65)]),
        "vocab_size differs (64 in SFT, 65 in checkpoint"),
    "a missing checkpoint folder": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, [ckpts[0], tmp / "checkpoint-900"]),
        "checkpoint model folder"),
    "alpha under a checkpoint": (
        lambda tmp, sft, ckpts, unnamed: {**trajectory_config(sft, ckpts), "parameters": {},
                                          "models": [{"model": str(c), "parameters": {"alpha": 0.5}}
                                                     for c in ckpts]},
        "alpha (in models[0].parameters) is one value for the whole fit"),
    "a misspelt step": (
        lambda tmp, sft, ckpts, unnamed: {**trajectory_config(sft, unnamed[:2]),
                                          "models": [{"model": str(c), "parameters": {"stpe": s}}
                                                     for c, s in zip(unnamed[:2], (100, 200))]},
        "does not take parameter 'stpe' (in models[0].parameters) (did you mean 'step'?)"),
    "a step for base_model": (
        lambda tmp, sft, ckpts, unnamed: {**trajectory_config(sft, ckpts), "models": [
            {"model": str(sft), "parameters": {"step": 0}}, *({"model": str(c)} for c in ckpts)]},
        "is given for base_model"),
    "a step as a list": (
        lambda tmp, sft, ckpts, unnamed: trajectory_config(sft, unnamed[:2], steps=[[100, 150], 200]),
        "step (in models[0].parameters) must be one number"),
}


@pytest.mark.parametrize("case", sorted({**BAD, **RUN_ONLY}))
def test_run_refuses_in_one_line_before_reading_a_tensor(tmp_path, run_factory, case):
    from conftest import invoke, snapshot

    build, expected = {**BAD, **RUN_ONLY}[case]
    sft, checkpoints = run_factory()
    _, plain = run_factory(steps=(100, 200), trainer_state=False)
    (tmp_path / "unnamed").mkdir()
    config = write_yaml(tmp_path / "c.yml", build(tmp_path, sft, checkpoints,
                                                  renamed(tmp_path / "unnamed", plain)))
    before = snapshot(tmp_path)
    result = invoke("run", config, tmp_path / "out", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and snapshot(tmp_path) == before


def test_run_merges_what_mergekit_yaml_merges(models_dir):
    from conftest import CONFIGS, invoke

    config = CONFIGS / "expo-trajectory.yml"
    assert invoke("run", config, "./run-out", cwd=models_dir).returncode == 0
    run_cli("mergekit-yaml", config, "./yaml-out", cwd=models_dir)
    ran, merged = load_folder(models_dir / "run-out"), load_folder(models_dir / "yaml-out")
    assert set(ran) == set(merged) and all(ran[k].equal(merged[k]) for k in merged)
