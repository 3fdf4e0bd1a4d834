"""Every bad input a user can hit: one line naming problem and fix, non-zero exit,
no traceback without -v, and nothing at the output path that looks like a model."""

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, cli_env, expo_config, load_folder, run_cli, write_yaml


def looks_finished(out: Path) -> bool:
    """mergekit-multi's own test for an existing model: config.json plus weights."""
    return (out / "config.json").exists() and any(
        (out / name).exists()
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


def copy_pair(pair, tmp_path):
    sft, aligned = (tmp_path / "sft", tmp_path / "aligned")
    shutil.copytree(pair[0], sft)
    shutil.copytree(pair[1], aligned)
    return sft, aligned


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def poison(folder, tensor_name, value):
    from safetensors.torch import load_file, save_file

    file = folder / "model.safetensors"
    tensors = load_file(file)
    tensors[tensor_name] = tensors[tensor_name].clone()
    tensors[tensor_name].view(-1)[3] = value
    save_file(tensors, file, metadata={"format": "pt"})


# Each case: build(tmp_path, sft, aligned) -> config dict (or a path to the YAML),
# the expected part of the one-line message.
def missing_folder(tmp, sft, aligned):
    return expo_config(sft, tmp / "no-such-model")


def no_weights(tmp, sft, aligned):
    for file in aligned.glob("*.safetensors"):
        file.unlink()
    return expo_config(sft, aligned)


def truncated(tmp, sft, aligned):
    file = aligned / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])
    return expo_config(sft, aligned)


def not_safetensors(tmp, sft, aligned):
    (aligned / "model.safetensors").write_bytes(b"<html>404 not found</html>")
    return expo_config(sft, aligned)


def architectures_differ(tmp, sft, aligned):
    edit_config(aligned, architectures=["MistralForCausalLM"])
    return expo_config(sft, aligned)


def hidden_size_differs(tmp, sft, aligned):
    edit_config(aligned, hidden_size=128)
    return expo_config(sft, aligned)


def vocab_differs(tmp, sft, aligned):
    edit_config(aligned, vocab_size=65)
    return expo_config(sft, aligned)


def alpha_word(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha="strong")


def alpha_nan(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha=float("nan"))


def alpha_inf(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha=float("inf"))


def alpha_gradient_with_word(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha=[0.1, "x", 0.5])


def two_aligned(tmp, sft, aligned):
    config = expo_config(sft, aligned)
    config["models"].append({"model": str(sft.parent / "other")})
    shutil.copytree(aligned, sft.parent / "other")
    return config


def no_base(tmp, sft, aligned):
    config = expo_config(sft, aligned)
    del config["base_model"]
    return config


def fp16_overflow(tmp, sft, aligned):
    poison(sft, "model.layers.0.mlp.up_proj.weight", -40000.0)
    poison(aligned, "model.layers.0.mlp.up_proj.weight", 40000.0)
    return expo_config(sft, aligned, alpha=0.5, dtype="float16")


def nan_in_input(tmp, sft, aligned):
    poison(aligned, "model.layers.1.self_attn.q_proj.weight", float("nan"))
    return expo_config(sft, aligned)


def invalid_yaml(tmp, sft, aligned):
    path = tmp / "broken.yml"
    path.write_text("merge_method: expo\nmodels:\n  - model: [unclosed\n")
    return path


def models_not_a_list(tmp, sft, aligned):
    config = expo_config(sft, aligned)
    config["models"] = str(aligned)
    return config


def python_tag_in_yaml(tmp, sft, aligned):
    path = tmp / "evil.yml"
    path.write_text("merge_method: !!python/object/apply:os.system ['touch pwned']\n")
    return path


CASES = {
    # name: (build, expected message part, also check mergekit-yaml's last line)
    "missing model folder": (missing_folder, "does not exist: check the path", False),
    "folder without weights": (no_weights, "has no weights", False),
    "truncated safetensors": (truncated, "is truncated", False),
    "not a safetensors file": (not_safetensors, "not a valid safetensors file", False),
    "architectures differ": (architectures_differ, "architectures differ", False),
    "hidden sizes differ": (hidden_size_differs, "hidden_size differs", False),
    "vocab differs, no tokenizer setting": (vocab_differs, "tokenizer: {source: union}", False),
    "alpha is a word": (alpha_word, "alpha must be a number, got 'strong'", True),
    "alpha is NaN": (alpha_nan, "alpha must be finite", True),
    "alpha is inf": (alpha_inf, "alpha must be finite", True),
    "alpha gradient with a word": (alpha_gradient_with_word, "got 'x'", True),
    "two aligned models": (two_aligned, "exactly one aligned model", True),
    "no base_model": (no_base, "expo needs base_model", True),
    "fp16 overflow": (fp16_overflow, "model.layers.0.mlp.up_proj.weight overflows float16", True),
    "NaN in an input": (nan_in_input, "q_proj.weight in aligned model", True),
    "invalid YAML": (invalid_yaml, "is not valid YAML at line", False),
    "models: is not a list": (models_not_a_list, "models: Input should be a valid list", False),
    "YAML python tag": (python_tag_in_yaml, "not valid YAML", False),
}


def prepare(name, tmp_path, llama_pair):
    build, expected, _ = CASES[name]
    sft, aligned = copy_pair(llama_pair, tmp_path)
    config = build(tmp_path, sft, aligned)
    if isinstance(config, dict):
        config = write_yaml(tmp_path / "config.yml", config)
    return config, expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_gives_one_line(name, tmp_path, llama_pair):
    config, expected = prepare(name, tmp_path, llama_pair)
    out = tmp_path / "out"
    result = run_cli("mergekit-expo", "run", config, out, cwd=tmp_path, check=False)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not looks_finished(out) and not out.exists()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[2]))
def test_mergekit_yaml_raises_our_exception(name, tmp_path, llama_pair):
    config, expected = prepare(name, tmp_path, llama_pair)
    out = tmp_path / "out"
    result = run_cli("mergekit-yaml", config, out, cwd=tmp_path, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mergekit_expo.errors.Expo") and expected in last, last
    assert not looks_finished(out)


def test_verbose_shows_the_traceback(tmp_path, llama_pair):
    config, _ = prepare("alpha is NaN", tmp_path, llama_pair)
    result = run_cli("mergekit-expo", "run", config, tmp_path / "out", "-v", check=False)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_base_equal_to_aligned_warns_and_succeeds(tmp_path, llama_pair):
    sft, _ = llama_pair
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, sft))
    result = run_cli("mergekit-expo", "run", config, tmp_path / "out")
    assert "same checkpoint" in result.stderr and looks_finished(tmp_path / "out")


def test_out_path_is_a_file(tmp_path, llama_pair):
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    (tmp_path / "out").write_text("not a folder")
    result = run_cli("mergekit-expo", "run", config, tmp_path / "out", check=False)
    assert result.returncode != 0 and "is a file: choose a folder path" in result.stderr
    assert (tmp_path / "out").read_text() == "not a folder"


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_out_path_not_writable(tmp_path, llama_pair, where):
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out" if where == "under a file" else Path("/proc/expo-test/out")
    result = run_cli("mergekit-expo", "run", config, out, check=False)
    assert result.returncode != 0
    assert "choose a writable output folder" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_existing_model_is_not_clobbered_without_overwrite(tmp_path, llama_pair):
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    run_cli("mergekit-expo", "run", config, tmp_path / "out")
    result = run_cli("mergekit-expo", "run", config, tmp_path / "out", check=False)
    assert result.returncode != 0 and "--overwrite" in result.stderr
    run_cli("mergekit-expo", "run", config, tmp_path / "out", "--overwrite")
    assert looks_finished(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cuda_requested_without_a_gpu(tmp_path, llama_pair):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    result = run_cli("mergekit-expo", "run", config, tmp_path / "out", "--cuda", check=False)
    assert result.returncode != 0 and "no CUDA device is visible" in result.stderr


def test_file_size_limit_during_write(tmp_path, pair_factory):
    # A real OS limit (ulimit -f): the first shard write past 64 KiB fails with EFBIG.
    config = write_yaml(tmp_path / "c.yml", expo_config(*pair_factory(dtype=torch.float32)))
    out = tmp_path / "out"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run(
        [str(BIN / "mergekit-expo"), "run", str(config), str(out)],
        env=cli_env(), capture_output=True, text=True, preexec_fn=limit_file_size,
    )
    assert result.returncode != 0
    assert "file size limit" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pickled_checkpoint_loads_without_running_code(tmp_path, llama_pair):
    from safetensors.torch import load_file

    sft, aligned = copy_pair(llama_pair, tmp_path)
    tensors = load_file(aligned / "model.safetensors")
    torch.save(tensors, aligned / "pytorch_model.bin")
    (aligned / "model.safetensors").unlink()
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, aligned))
    run_cli("mergekit-expo", "run", config, tmp_path / "out")
    out = load_folder(tmp_path / "out")
    assert set(out) == set(tensors)

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with open(aligned / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": Exploit()}, handle)
    result = run_cli("mergekit-yaml", config, tmp_path / "out2", check=False)
    assert result.returncode != 0
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_leaves_no_model(tmp_path, pair_factory, signum, code):
    sft, aligned = pair_factory(hidden_size=512, intermediate_size=1536, num_layers=6,
                                num_heads=8, num_kv_heads=8, dtype=torch.float32)
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, aligned))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [str(BIN / "mergekit-expo"), "run", str(config), str(out), "--out-shard-size", "1M"],
        env=cli_env(), stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    # Signal once the first output shard is on disk: the merge is half written.
    while not list(tmp_path.glob(".out.partial-*/new/out/*.safetensors")):
        assert process.poll() is None and time.time() < deadline, "merge ended too early"
        time.sleep(0.01)
    process.send_signal(signum)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and "Error:" in stderr
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
