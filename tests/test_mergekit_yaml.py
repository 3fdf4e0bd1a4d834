"""Real `mergekit-yaml` runs with `merge_method: expo` on generated checkpoints."""

import pytest
import torch

from conftest import DTYPES, expo_config, load_folder, run_cli, shard_index, write_yaml
from fp64_reference import assert_sample_rounded_once, expo_fp64, fidelity, round_once


def assert_expo_of(out, sft_dir, aligned_dir, alpha_for, rounded_once=True):
    """Every output tensor is the fp64 ExPO of its inputs, rounded once (per the rule)."""
    sft, aligned = load_folder(sft_dir), load_folder(aligned_dir)
    assert set(out) == set(aligned)
    for name, tensor in out.items():
        alpha = alpha_for(name)
        equal, worst = fidelity(tensor, sft[name], aligned[name], alpha)
        assert (equal == 1.0 if rounded_once else equal >= 0.9999) and worst <= 1.0, (name, alpha, equal, worst)
        if rounded_once:
            assert_sample_rounded_once(tensor, sft[name], aligned[name], alpha, count=100)


@pytest.mark.parametrize(
    "family,dtype,alpha",
    [
        ("llama", "bfloat16", 0.3),
        ("llama", "float16", 0.5 + 2.0 ** -20),  # α with long binary runs: false ties through fp32
        ("llama", "float32", 0.3),
        ("mistral", "bfloat16", 0.123456789),
        ("qwen2", "float16", 0.3),
    ],
)
def test_expo_merge_matches_fp64_reference(tmp_path, pair_factory, family, dtype, alpha):
    sft, aligned = pair_factory(family=family, dtype=DTYPES[dtype])
    config = write_yaml(tmp_path / "expo.yml", expo_config(sft, aligned, alpha, dtype=dtype))
    run_cli("mergekit-yaml", config, tmp_path / "out")
    out = load_folder(tmp_path / "out")
    assert all(t.dtype == DTYPES[dtype] for t in out.values())
    assert_expo_of(out, sft, aligned, lambda name: alpha)


def test_large_bf16_tensors_equal_the_fp64_reference_bit_for_bit(tmp_path, pair_factory):
    # MLP weights of 256 x 16384 are large enough for the fused CPU kernel.
    from mergekit_expo.numerics import _FUSED_MIN_ELEMENTS

    alpha = 0.5 + 2.0 ** -20  # false ties through fp32 on many elements
    sft_dir, aligned_dir = pair_factory(hidden_size=256, intermediate_size=16384, num_layers=1)
    config = write_yaml(tmp_path / "expo.yml", expo_config(sft_dir, aligned_dir, alpha))
    run_cli("mergekit-yaml", config, tmp_path / "out")
    out, sft, aligned = load_folder(tmp_path / "out"), load_folder(sft_dir), load_folder(aligned_dir)
    assert max(t.numel() for t in out.values()) >= _FUSED_MIN_ELEMENTS
    for name, tensor in out.items():
        expected = round_once(expo_fp64(sft[name], aligned[name], alpha), torch.bfloat16)
        assert torch.equal(tensor.view(torch.int16), expected.view(torch.int16)), name
        assert_sample_rounded_once(tensor, sft[name], aligned[name], alpha)


def test_output_loads_in_transformers_with_reference_logits(tmp_path, pair_factory):
    import transformers

    sft_dir, aligned_dir = pair_factory(dtype=torch.float32)
    config = write_yaml(tmp_path / "expo.yml", expo_config(sft_dir, aligned_dir, 0.4))
    run_cli("mergekit-yaml", config, tmp_path / "out")

    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    sft, aligned = load_folder(sft_dir), load_folder(aligned_dir)
    reference = transformers.AutoModelForCausalLM.from_pretrained(aligned_dir)
    reference.load_state_dict(
        {k: expo_fp64(sft[k], aligned[k], 0.4).float() for k in aligned}
    )
    plain_aligned = transformers.AutoModelForCausalLM.from_pretrained(aligned_dir)

    tokens = torch.tensor([[1, 5, 9, 13, 40, 2]])
    with torch.no_grad():
        got = merged(tokens).logits
        want = reference(tokens).logits
        before = plain_aligned(tokens).logits
    assert torch.equal(got, want)
    assert (got - before).abs().max() > 1e-3  # the check can tell ExPO from no-op


def test_sharded_inputs_and_sharded_output(tmp_path, pair_factory):
    sft, aligned = pair_factory(max_shard_size="60KB")
    assert len(shard_index(sft)["weight_map"]) > 0 and len(list(sft.glob("*.safetensors"))) > 2
    config = write_yaml(tmp_path / "expo.yml", expo_config(sft, aligned, 0.3))
    run_cli("mergekit-yaml", config, tmp_path / "out", "--out-shard-size", "20K")
    shards = set(shard_index(tmp_path / "out")["weight_map"].values())
    assert len(shards) > 2
    assert_expo_of(load_folder(tmp_path / "out"), sft, aligned, lambda name: 0.3)


def test_alpha_zero_gives_the_aligned_model_bit_for_bit(tmp_path, llama_pair):
    sft, aligned = llama_pair
    config = write_yaml(tmp_path / "expo.yml", expo_config(sft, aligned, 0.0))
    run_cli("mergekit-yaml", config, tmp_path / "out")
    out, want = load_folder(tmp_path / "out"), load_folder(aligned)
    assert all(torch.equal(out[k].view(torch.int16), want[k].view(torch.int16)) for k in want)


def test_default_alpha_is_the_papers_0_3(tmp_path, llama_pair):
    sft, aligned = llama_pair
    config = {"merge_method": "expo", "base_model": str(sft), "models": [{"model": str(aligned)}]}
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    assert_expo_of(load_folder(tmp_path / "out"), sft, aligned, lambda name: 0.3)


def test_out_dtype_is_honoured(tmp_path, pair_factory):
    sft, aligned = pair_factory(dtype=torch.float32)
    config = expo_config(sft, aligned, 0.3, out_dtype="bfloat16")
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    out = load_folder(tmp_path / "out")
    assert all(t.dtype == torch.bfloat16 for t in out.values())
    # expo rounds once to fp32 (the dtype it computes in); mergekit's cast to bf16 is a second rounding
    assert_expo_of(out, sft, aligned, lambda name: 0.3, rounded_once=False)


def test_model_card_names_expo_the_paper_and_the_sft_base(tmp_path, llama_pair):
    sft, aligned = llama_pair
    config = write_yaml(tmp_path / "expo.yml", expo_config(sft, aligned, 0.3))
    run_cli("mergekit-yaml", config, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("merged using the [ExPO (extrapolating the aligned model away from its SFT base)]"
            f"(https://arxiv.org/abs/2404.16792) merge method using {sft} as a base") in card
    assert f"* {aligned}\n" in card


def test_builtin_linear_still_merges_correctly(tmp_path, pair_factory):
    sft, aligned = pair_factory(dtype=torch.float32)
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(sft), "parameters": {"weight": 0.25}},
            {"model": str(aligned), "parameters": {"weight": 0.75}},
        ],
    }
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    out, s, a = load_folder(tmp_path / "out"), load_folder(sft), load_folder(aligned)
    for name, tensor in out.items():
        want = 0.25 * s[name].double() + 0.75 * a[name].double()
        assert torch.allclose(tensor.double(), want, rtol=1e-6, atol=1e-7), name


def test_base_equal_to_aligned_warns_and_copies(tmp_path, llama_pair):
    sft, _ = llama_pair
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, sft, 0.3))
    result = run_cli("mergekit-yaml", config, tmp_path / "out")
    assert "same checkpoint" in result.stderr
    out, want = load_folder(tmp_path / "out"), load_folder(sft)
    assert all(torch.equal(out[k], want[k]) for k in want)


def test_same_checkpoint_under_two_spellings_warns(tmp_path, llama_pair):
    sft, aligned = llama_pair
    (tmp_path / "link").symlink_to(aligned, target_is_directory=True)
    config = write_yaml(tmp_path / "c.yml", expo_config(aligned, tmp_path / "link", 0.3))
    result = run_cli("mergekit-yaml", config, tmp_path / "out")
    assert "same checkpoint" in result.stderr
    out, want = load_folder(tmp_path / "out"), load_folder(aligned)
    assert all(torch.equal(out[k], want[k]) for k in want)
