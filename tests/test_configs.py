"""Every YAML in configs/ runs through the real mergekit CLIs and does what it says."""

import re

import pytest
import torch

from conftest import CONFIGS, load_folder, run_cli
from fp64_reference import fidelity, trajectory_reference

LAYER = re.compile(r"layers\.(\d+)\.")


def layer_of(name):
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def gradient_alpha(name):
    # 2 layers: t = 0 for layer 0, 1 for layer 1; tensors outside the stack use t = 0.
    layer = layer_of(name)
    return 0.1 if layer is None else 0.1 + 0.4 * layer


def slices_alpha(name):
    layer = layer_of(name)
    if layer is None:  # embeddings follow the first slice, norm and lm_head the last
        return 0.2 if "embed_tokens" in name else 0.5
    return 0.2 if layer == 0 else 0.5


def keep_embeddings_alpha(name):
    return 0.0 if any(k in name for k in ("embed_tokens", "lm_head", "norm")) else 0.4


EXPECTED_ALPHA = {
    "expo.yml": lambda name: 0.3,
    "expo-gradient.yml": gradient_alpha,
    "expo-slices.yml": slices_alpha,
    "expo-keep-embeddings.yml": keep_embeddings_alpha,
}
MULTI = "expo-then-linear.multi.yml"
ADDED_TOKENS = "expo-added-tokens.yml"
RUN_STEPS = (0, 100, 200, 300, 400, 500)  # ./models/sft, then ./models/run/checkpoint-N
TRAJECTORY = {  # config -> (tensor name -> α, window)
    "expo-trajectory.yml": (lambda name: 0.3, None),
    "expo-trajectory-window.yml": (gradient_alpha, 3),
}


def test_every_config_has_a_test():
    assert {p.name for p in CONFIGS.glob("*.yml")} == {*EXPECTED_ALPHA, *TRAJECTORY, MULTI, ADDED_TOKENS}


def assert_extrapolated(out, sft, aligned, alpha_for):
    assert set(out) == set(aligned)
    for name, tensor in out.items():
        alpha = alpha_for(name)
        if alpha == 0:
            assert torch.equal(tensor, aligned[name]), name
            continue
        equal, worst = fidelity(tensor, sft[name], aligned[name], alpha)
        assert equal == 1.0 and worst <= 1.0, (name, alpha, equal)


@pytest.mark.parametrize("config", sorted(EXPECTED_ALPHA))
def test_config(models_dir, config):
    # The basic recipe through the installed console script: the .pth start-up hook
    # must register expo in a fresh mergekit-yaml process.
    run_cli("mergekit-yaml", CONFIGS / config, "./out", cwd=models_dir, process=config == "expo.yml")
    out = load_folder(models_dir / "out")
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    assert_extrapolated(out, sft, aligned, EXPECTED_ALPHA[config])


@pytest.mark.parametrize("config", sorted(TRAJECTORY))
def test_trajectory_config(models_dir, config):
    run_cli("mergekit-yaml", CONFIGS / config, "./out", cwd=models_dir)
    out = load_folder(models_dir / "out")
    points = [load_folder(models_dir / "models/sft"),
              *(load_folder(models_dir / f"models/run/checkpoint-{s}") for s in RUN_STEPS[1:])]
    alpha_for, window = TRAJECTORY[config]
    assert set(out) == set(points[-1])
    for name, tensor in out.items():
        want, _ = trajectory_reference([p[name] for p in points], RUN_STEPS, alpha_for(name), tensor.dtype, window)
        assert torch.equal(tensor.view(torch.int16), want.view(torch.int16)), name


def test_multi_stage_config(models_dir):
    run_cli(  # a real mergekit-multi process: its stages know expo through the start-up hook
        "mergekit-multi", CONFIGS / MULTI, "--intermediate-dir", "./stages",
        "--out-path", "./out", cwd=models_dir, process=True,
    )
    stage = load_folder(models_dir / "stages/expo-stage")
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    assert_extrapolated(stage, sft, aligned, lambda name: 0.3)
    other, final = load_folder(models_dir / "models/other"), load_folder(models_dir / "out")
    for name, tensor in final.items():
        want = 0.7 * stage[name].double() + 0.3 * other[name].double()
        assert torch.allclose(tensor.double(), want, rtol=2**-7, atol=1e-6), name


def test_added_tokens_config(tmp_path, pair_factory):
    sft_dir, aligned_dir = pair_factory(added_tokens=("<|im_start|>", "<|im_end|>"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models/sft").symlink_to(sft_dir, target_is_directory=True)
    (tmp_path / "models/aligned").symlink_to(aligned_dir, target_is_directory=True)
    run_cli("mergekit-yaml", CONFIGS / ADDED_TOKENS, "./out", cwd=tmp_path)
    out, sft, aligned = load_folder(tmp_path / "out"), load_folder(sft_dir), load_folder(aligned_dir)
    shared_rows = sft["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert out[name].shape == aligned[name].shape
        # Rows the SFT model lacks keep the aligned model's values exactly.
        assert torch.equal(out[name][shared_rows:], aligned[name][shared_rows:])
        equal, worst = fidelity(
            out[name][:shared_rows], sft[name], aligned[name][:shared_rows], 0.3
        )
        assert equal == 1.0 and worst <= 1.0
    rest = {k: v for k, v in out.items() if "embed" not in k and "lm_head" not in k}
    assert_extrapolated(rest, sft, {k: aligned[k] for k in rest}, lambda name: 0.3)
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert "<|im_start|>" in tokenizer.get_vocab()


def test_added_tokens_without_tokenizer_setting_names_tensor_and_fix(tmp_path, pair_factory):
    sft_dir, aligned_dir = pair_factory(added_tokens=("<|im_start|>",))
    config = tmp_path / "c.yml"
    config.write_text(
        f"merge_method: expo\nbase_model: {sft_dir}\nmodels:\n  - model: {aligned_dir}\n"
    )
    result = run_cli("mergekit-yaml", config, tmp_path / "out", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    # mergekit's own check names the tensor, both shapes and the tokenizer fix.
    assert ("embed_tokens" in last or "lm_head" in last) and "(65, 64)" in last
    assert "tokenizer: {source: base}" in last
    assert not (tmp_path / "out" / "config.json").exists()
