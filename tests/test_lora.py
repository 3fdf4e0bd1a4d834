"""`mergekit-expo lora`: the new adapter's merged weights are θ_sft + (1+α)·ΔW (fp64)."""

import json
import shutil

import pytest
import torch

from conftest import expo_config, load_folder, make_adapter, run_cli, write_yaml
from fp64_reference import fidelity

ALPHA = 0.3


@pytest.fixture(scope="module")
def sft_dir(pair_factory):
    return pair_factory(dtype=torch.float32)[0]


def merged_weights(sft_dir, adapter_dir, dtype=torch.float64):
    """Apply an adapter with peft and merge it, in ``dtype``."""
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(sft_dir, dtype=dtype)
    model = peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


VARIANTS = {
    "lora": {},
    "rslora with alpha_pattern": {"use_rslora": True, "alpha_pattern": {"v_proj": 32}},
    "rank_pattern and embedding": {"rank_pattern": {"q_proj": 2},
                                   "target_modules": ["q_proj", "embed_tokens"]},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_scaled_adapter_equals_fp64_extrapolation(tmp_path, sft_dir, variant):
    adapter = make_adapter(sft_dir, tmp_path / "adapter", **VARIANTS[variant])
    result = run_cli("mergekit-expo", "lora", adapter, tmp_path / "expo", "--alpha", ALPHA)
    assert "ExPO adapter" in result.stdout

    sft = {k: v.double() for k, v in load_folder(sft_dir).items()}
    aligned = merged_weights(sft_dir, adapter)
    extrapolated = merged_weights(sft_dir, tmp_path / "expo")
    changed = 0
    for name, tensor in extrapolated.items():
        want = aligned[name] + ALPHA * (aligned[name] - sft[name])
        scale = aligned[name].abs().max().clamp_min(1e-12)
        assert ((tensor - want).abs().max() / scale) < 1e-6, name
        changed += int(not torch.equal(aligned[name], sft[name]))
    assert changed > 0
    config = json.loads((tmp_path / "expo" / "adapter_config.json").read_text())
    assert config == json.loads((adapter / "adapter_config.json").read_text())


def test_modules_to_save_are_extrapolated_against_base(tmp_path, sft_dir):
    adapter = make_adapter(sft_dir, tmp_path / "adapter", modules_to_save=["lm_head"])
    result = run_cli("mergekit-expo", "lora", adapter, tmp_path / "no-base", check=False)
    assert result.returncode != 0 and "pass --base" in result.stderr
    assert not (tmp_path / "no-base").exists()

    run_cli("mergekit-expo", "lora", adapter, tmp_path / "expo", "--alpha", ALPHA, "--base", sft_dir)
    base_head = load_folder(sft_dir)["lm_head.weight"]
    trained_head = load_folder(adapter)["base_model.model.lm_head.weight"]
    new_head = load_folder(tmp_path / "expo")["base_model.model.lm_head.weight"]
    equal, worst = fidelity(new_head, base_head, trained_head, ALPHA)
    assert equal == 1.0 and worst <= 1.0
    assert not torch.equal(trained_head, base_head)
    # The new adapter's card says what it is; the trained adapter's is kept beside it.
    card = (tmp_path / "expo" / "README.md").read_text()
    assert f"at α = {ALPHA:g}: its update is 1 + α = {1 + ALPHA:g} times the trained adapter's" in card
    assert f"extrapolated against `{sft_dir}`" in card and "library_name: peft" in card
    assert (tmp_path / "expo" / "ORIGINAL_README.md").read_bytes() == (adapter / "README.md").read_bytes()
    # A --base other than the one the adapter records: one line to check it.
    other = tmp_path / "other-sft"
    shutil.copytree(sft_dir, other)
    warned = run_cli("mergekit-expo", "lora", adapter, tmp_path / "expo2", "--base", other)
    assert f"the adapter records its base model as {sft_dir}, and --base is {other}" in warned.stderr


def test_yaml_route_agrees_with_the_scaled_adapter(tmp_path, sft_dir):
    adapter = make_adapter(sft_dir, tmp_path / "adapter")
    run_cli("mergekit-expo", "lora", adapter, tmp_path / "expo-adapter", "--alpha", ALPHA)
    config = expo_config(sft_dir, f"{sft_dir}+{adapter}", ALPHA)
    run_cli("mergekit-expo", "run", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    via_yaml = load_folder(tmp_path / "out")
    via_adapter = merged_weights(sft_dir, tmp_path / "expo-adapter", torch.float32)

    sft = load_folder(sft_dir)
    aligned64 = merged_weights(sft_dir, adapter)
    for name, tensor in via_yaml.items():
        want = aligned64[name] + ALPHA * (aligned64[name] - sft[name].double())
        # Both routes go through peft's fp32 merge (B·A in fp32), whose error is
        # relative to the tensor, not to each element: measure in ulps of max|W|.
        ulp = want.abs().max() * 2**-23
        for route in (tensor, via_adapter[name]):
            assert (route.double() - want).abs().max() <= 4 * ulp, name
        if not any(target in name for target in ("q_proj", "v_proj", "down_proj")):
            assert torch.equal(tensor, via_adapter[name]), name


def bad_adapter(kind, tmp_path, sft_dir):
    folder = tmp_path / "bad"
    if kind == "not an adapter folder":
        shutil.copytree(sft_dir, folder)
    elif kind == "pickled-only adapter":
        make_adapter(sft_dir, folder)
        (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    elif kind == "unsupported adapter type":
        make_adapter(sft_dir, folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        config["peft_type"] = "IA3"
        (folder / "adapter_config.json").write_text(json.dumps(config))
    elif kind == "DoRA":
        make_adapter(sft_dir, folder, use_dora=True)
    elif kind == "missing folder":
        pass
    return folder


@pytest.mark.parametrize("kind,message", [
    ("not an adapter folder", "is not a PEFT adapter folder"),
    ("pickled-only adapter", "only a pickled adapter_model.bin"),
    ("unsupported adapter type", "is a IA3 adapter; only LoRA"),
    ("DoRA", "DoRA adapter"),
    ("missing folder", "does not exist"),
])
def test_bad_adapters(tmp_path, sft_dir, kind, message):
    folder = bad_adapter(kind, tmp_path, sft_dir)
    result = run_cli("mergekit-expo", "lora", folder, tmp_path / "out", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_yaml_route_on_a_bf16_base_with_float32_merge_agrees(tmp_path, pair_factory):
    # With a bf16 SFT model, mergekit would merge the adapter in bf16 (rounding θ_aligned
    # before the extrapolation); `run` merges it in the config's float32 instead.
    sft_bf16 = pair_factory()[0]
    adapter = make_adapter(sft_bf16, tmp_path / "adapter")
    run_cli("mergekit-expo", "lora", adapter, tmp_path / "expo-adapter", "--alpha", ALPHA)
    config = expo_config(sft_bf16, f"{sft_bf16}+{adapter}", ALPHA, dtype="float32")
    run_cli("mergekit-expo", "run", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    via_yaml = load_folder(tmp_path / "out")
    via_adapter = merged_weights(sft_bf16, tmp_path / "expo-adapter", torch.float32)
    for name, tensor in via_yaml.items():
        scale = via_adapter[name].abs().max()
        assert (tensor - via_adapter[name]).abs().max() <= 1e-6 * scale, name
