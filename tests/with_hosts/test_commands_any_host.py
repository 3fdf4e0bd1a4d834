"""mergekit-expo lora and search beside each host venv's merge host and transformers."""

import torch
from host_table import PRESENT, error_lines, run_host

from conftest import load_folder, make_adapter

ALPHA = 0.3


def test_lora_scales_the_update_exactly(tmp_path, pair_factory):
    # lora needs no merge host: B of ΔW = B·A becomes (1 + α)·B, rounded once.
    sft_dir = pair_factory(dtype=torch.float32)[0]
    adapter = make_adapter(sft_dir, tmp_path / "adapter")
    result = run_host("mergekit-expo", "lora", adapter, tmp_path / "expo", "--alpha", ALPHA)
    assert "ExPO adapter" in result.stdout
    before, after = load_folder(adapter), load_folder(tmp_path / "expo")
    assert set(before) == set(after)
    scaled = [n for n in after if ".lora_B." in n]
    assert scaled
    for name, tensor in after.items():
        if name in scaled:
            want = (before[name].double() * (1 + ALPHA)).to(tensor.dtype)
            assert torch.equal(tensor, want), name
        else:
            assert torch.equal(tensor, before[name]), name


def test_search_names_the_transformers_it_needs(tmp_path, llama_pair):
    import transformers

    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "w1", "chosen": "w2", "rejected": "w3"}\n')
    result = run_host("mergekit-expo", "search", *llama_pair, "--data", data,
                      "--out", tmp_path / "search", check=False)
    lines = error_lines(result)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"transformers {transformers.__version__}" in lines[0]
    assert all(f"{h.name} {h.version}" in lines[0] for h in PRESENT), lines[0]
    assert "transformers>=5.16" in lines[0] and "best.yml" in lines[0]
    assert not (tmp_path / "search").exists()
