"""Every bad input a user can hit: one line naming problem and fix, non-zero exit,
no traceback without -v, and nothing at the output path that looks like a model."""

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, cli_env, expo_config, invoke, load_folder, poison, run_cli, snapshot, write_yaml


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


def alpha_empty_list(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha=[])


def alpha_null_in_gradient(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha=[0.1, None])


def filter_without_value(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha=[{"filter": "self_attn"}, {"value": 0.3}])


def filter_with_empty_value(tmp, sft, aligned):
    return expo_config(sft, aligned, alpha=[{"filter": "mlp", "value": []}, {"value": 0.4}])


def stray_document_marker(tmp, sft, aligned):
    path = tmp / "stray.yml"
    path.write_text(f"merge_method: expo\nbase_model: {sft}\nmodels:\n  - model: {aligned}\n---\n")
    return path


def multi_stage_pipeline(tmp, sft, aligned):
    path = tmp / "pipeline.yml"
    path.write_text(f"name: stage\nmerge_method: expo\nbase_model: {sft}\nmodels:\n  - model: {aligned}\n"
                    "---\nmerge_method: linear\nmodels:\n  - model: stage\n    parameters: {weight: 1.0}\n")
    return path


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


class Exploit:
    """A pickle that runs a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def torch_pickle_with_code(tmp, sft, aligned):
    (aligned / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Exploit(tmp / "pwned")}, aligned / "pytorch_model.bin")
    return expo_config(sft, aligned)


def plain_pickle_with_code(tmp, sft, aligned):
    (aligned / "model.safetensors").unlink()
    with open(aligned / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": Exploit(tmp / "pwned")}, handle)
    return expo_config(sft, aligned)


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
    # mergekit reads an empty list as no alpha, and merges the default: `run` refuses it
    "alpha is an empty list": (alpha_empty_list, "parameter 'alpha' (in models[0].parameters) is empty", False),
    "alpha gradient with a null": (alpha_null_in_gradient, "has an empty entry ([0.1, null])", False),
    "alpha filter without a value": (filter_without_value, "has a filter without a value", False),
    "alpha filter with an empty value": (filter_with_empty_value,
                                         "has a filter without a value ({filter: mlp, value: []})", False),
    "a stray --- after the config": (stray_document_marker, "holds one config and an empty YAML document", False),
    "a mergekit-multi pipeline": (multi_stage_pipeline, "holds 2 YAML documents, a mergekit-multi pipeline: "
                                  "run it with mergekit-multi", False),
    "two aligned models": (two_aligned, "exactly one aligned model", True),
    "no base_model": (no_base, "expo needs base_model", True),
    "fp16 overflow": (fp16_overflow, "model.layers.0.mlp.up_proj.weight overflows float16", True),
    "NaN in an input": (nan_in_input, "q_proj.weight in aligned model", True),
    "invalid YAML": (invalid_yaml, "is not valid YAML at line", False),
    "models: is not a list": (models_not_a_list, "models: Input should be a valid list", False),
    "YAML python tag": (python_tag_in_yaml, "not valid YAML", False),
    "a torch checkpoint that calls a function": (
        torch_pickle_with_code, "contains code (posix.system is called when it is unpickled)", False),
    "a pickle that calls a function": (plain_pickle_with_code, "is a pickle holding more than tensors", False),
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
    before = snapshot(tmp_path)
    result = invoke("run", config, out, cwd=tmp_path)  # in this process: see test_data_safety
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    assert not looks_finished(out) and not out.exists()
    assert not (tmp_path / "pwned").exists()
    assert snapshot(tmp_path) == before


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


def test_a_device_torch_does_not_know(tmp_path, llama_pair):
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    result = invoke("run", config, tmp_path / "out", "--device", "cpuu", cwd=tmp_path)
    assert result.returncode == 1 and "Error: --device 'cpuu' is not a device torch knows" in result.stderr
    assert "RuntimeError" not in result.stderr and not (tmp_path / "out").exists()


def test_a_device_kind_this_machine_lacks(tmp_path, llama_pair):
    if torch.backends.mps.is_available():
        pytest.skip("an MPS device is visible here")
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    result = invoke("run", config, tmp_path / "out", "--device", "mps", cwd=tmp_path)
    assert result.returncode == 1
    assert "Error: --device mps was given but no MPS device is visible: drop the option" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    result = invoke("run", config, tmp_path / "out", "--device", "meta", cwd=tmp_path)
    assert result.returncode == 1 and "--device meta was given but meta is torch's placeholder device" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_empty_output_path_is_refused(tmp_path, llama_pair):
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    before = snapshot(tmp_path)
    result = invoke("run", config, "", cwd=tmp_path)
    assert result.returncode == 1 and "Error: output path is empty (''): give the folder to write to" in result.stderr
    assert snapshot(tmp_path) == before


def test_multi_gpu_requested_without_a_gpu(tmp_path, llama_pair):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    result = run_cli("mergekit-expo", "run", config, tmp_path / "out", "--multi-gpu", check=False)
    assert result.returncode == 1 and "Error: --multi-gpu was given but no CUDA device is visible" in result.stderr
    assert "AttributeError" not in result.stderr and not (tmp_path / "out").exists()


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
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: interrupted ({name}); nothing was left that looks like a finished output (an earlier "
                      "one it was to replace is kept)"], stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- search: every bad input is one line before any model loads, and nothing is written --------

PREFS = [{"prompt": f"w{i} w{i + 1}", "chosen": f"w{i}", "rejected": f"w{i + 2}"} for i in range(4)]


def jsonl(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def search_template(tmp_path_factory, llama_pair):
    root = tmp_path_factory.mktemp("search-inputs")
    copy_pair(llama_pair, root)
    (root / "prefs.jsonl").write_text(jsonl(PREFS))
    # A finished search to resume; results name the models by absolute path: the shared pair's.
    result = invoke("search", *llama_pair, "--data", "prefs.jsonl", "--alphas", "0", "--out", "./done",
                    cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def search_workspace(search_template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(search_template, root)
    return root


def data_file(name, text):
    def build(root):
        (root / name).write_text(text) if isinstance(text, str) else (root / name).write_bytes(text)
        return ("--data", name)
    return build


def without_tokenizer(root):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (root / "aligned" / name).unlink(missing_ok=True)
    return ("--data", "prefs.jsonl")


def bad(row_index, **changes):
    rows = [dict(row) for row in PREFS]
    rows[row_index].update(changes)
    return [{k: v for k, v in row.items() if v is not ...} for row in rows]


# name: (extra arguments given the workspace, the expected part of the one error line)
SEARCH_CASES = {
    "a later row lacks rejected": (
        data_file("d.jsonl", jsonl(bad(2, rejected=...))), "d.jsonl line 3 has no 'rejected'"),
    "a .json file holding an object": (
        data_file("d.json", json.dumps({"rows": PREFS})), "d.json holds a JSON dict, not a list of rows"),
    "a short row in a JSON list": (
        data_file("d.json", json.dumps(bad(3, chosen=...))), "d.json item 3 has no 'chosen'"),
    "a row that is not an object": (
        data_file("d.json", json.dumps([*PREFS, ["w1", "w2", "w3"]])), "d.json item 4 is a list, not an object"),
    "a null prompt": (
        data_file("d.jsonl", jsonl(bad(1, prompt=None))), "d.jsonl line 2: 'prompt' is null, not text"),
    "a number as an answer": (
        data_file("d.jsonl", jsonl(bad(1, chosen=7))), "d.jsonl line 2: 'chosen' is a number, not text"),
    "an empty answer": (
        data_file("d.jsonl", jsonl(bad(3, rejected=""))), "d.jsonl line 4: 'rejected' is empty"),
    "a CSV line with a field left out": (
        data_file("d.csv", "prompt,chosen,rejected\nw1 w2,w1,w3\nw2 w3,w2\n"), "d.csv line 3: 'rejected' is empty"),
    "every preference row longer than the context": (
        data_file("d.jsonl", jsonl([dict(row, prompt=" ".join(["w1"] * 5000)) for row in PREFS])),
        "every one of the preference rows exceeds the model's context of"),
    "a line that is not JSON": (
        data_file("d.jsonl", jsonl(PREFS) + "{prompt: w1}\n"), "d.jsonl line 5 is not JSON"),
    "a file that is not UTF-8": (data_file("d.jsonl", "é".encode("latin-1")), "is not UTF-8 text"),
    "a later prompt missing, reward-model scorer": (
        lambda r: ("--scorer", "reward-model", "--reward-model", "./sft",
                   *data_file("p.jsonl", jsonl([{"prompt": "w1"}, {"question": "w2"}]))(r)),
        "p.jsonl line 2 has no 'prompt'"),
    "an aligned model without tokenizer files": (
        without_tokenizer, "aligned model folder ./aligned has no tokenizer files"),
    "an empty --alphas": (lambda r: ("--data", "prefs.jsonl", "--alphas", ""), "--alphas '' names no α"),
    "an empty --out": (lambda r: ("--data", "prefs.jsonl", "--out", ""), "--out is empty (''): give a folder"),
    "an empty --write-best": (lambda r: ("--data", "prefs.jsonl", "--write-best", ""),
                              "--write-best is empty (''): give a folder"),
    "a symlink as --out": (lambda r: ((r / "empty").mkdir(), (r / "link").symlink_to(r / "empty"), "--data",
                                      "prefs.jsonl", "--out", "./link")[2:], "--out ./link is a symlink"),
    "a --device torch does not know": (lambda r: ("--data", "prefs.jsonl", "--device", "cpuu"),
                                       "--device 'cpuu' is not a device torch knows: use cpu, cuda, cuda:N or auto"),
    "--device mps without an MPS device": (
        lambda r: ("--data", "prefs.jsonl", "--device", "mps") if not torch.backends.mps.is_available()
        else pytest.skip("an MPS device is visible here"),
        "--device mps was given but no MPS device is visible: use --device cpu"),
    "a folder that is not a saved dataset as --data": (
        lambda r: ("--data", "./sft"), "data file ./sft is a folder, but not a dataset saved by datasets'"),
    "postgres:// for --storage": (
        lambda r: ("--data", "prefs.jsonl", "--storage", "postgres://expo:s3cret@localhost/expo"),
        "names this scheme postgresql://: write --storage postgresql://expo:***@localhost/expo"),
    "a scorer module that is not there": (
        lambda r: ("--scorer", "no_such_module:score"),
        "there is no module no_such_module here: run from the folder that holds no_such_module.py"),
    "a scorer function that is not there": (
        lambda r: (*data_file("my_scorer.py", "def score(model, tokenizer):\n    return 1.0\n")(r)[:0],
                   "--scorer", "my_scorer:scor"), "module my_scorer has no scor: check the function's name"),
    "resuming with another --max-new-tokens": (
        lambda r: ("--data", "prefs.jsonl", "--out", "./done", "--max-new-tokens", "32"),
        "./done holds results of a different search: --max-new-tokens was 64, now 32"),
    "resuming with another --data file": (
        lambda r: (*data_file("other.jsonl", jsonl(PREFS[:3]))(r), "--out", "./done"),
        "--data: the file's contents (or path) differ"),
    "refining a curve search": (lambda r: ("--data", "prefs.jsonl", "--out", "./done", "--refine"),
                                "--strategy was 'curve', now 'full': use another --out, or that search's "
                                "settings to resume it; --strategy full: every α on every dev row (--refine "
                                "needs every α of the grid"),
    "resuming with the models swapped": (
        lambda r: ("--data", "prefs.jsonl", "--out", "./done", "--swap"), "the aligned model was"),
}
RESUMED = {"resuming with another --max-new-tokens", "resuming with another --data file",
           "resuming with the models swapped", "refining a curve search"}


@pytest.mark.parametrize("name", sorted(SEARCH_CASES))
def test_search_gives_one_line(name, search_workspace, llama_pair):
    build, expected = SEARCH_CASES[name]
    arguments = build(search_workspace)
    models = ("./sft", "./aligned")
    if name in RESUMED:  # the models the finished search in ./done scored
        models = llama_pair[::-1] if "--swap" in arguments else llama_pair
        arguments = tuple(a for a in arguments if a != "--swap")
    if "--out" not in arguments:
        arguments = (*arguments, "--out", "./s")
    before = snapshot(search_workspace)
    result = invoke("search", *models, "--alphas", "0,0.5", *arguments, cwd=search_workspace)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], result.stderr
    assert snapshot(search_workspace) == before


def test_search_refuses_one_folder_as_both_models(search_workspace):
    before = snapshot(search_workspace)
    result = invoke("search", "./aligned", "./aligned/", "--data", "prefs.jsonl", "--out", "./s",
                    cwd=search_workspace)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "the SFT and aligned models are the same folder (./aligned)" in lines[0]
    assert "give the SFT checkpoint the aligned model was trained from" in lines[0]
    assert snapshot(search_workspace) == before


@pytest.fixture
def full_disk(tmp_path):
    """A 160 KB tmpfs: a real full disk (mounting needs root, as on the test machines)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_search_on_a_full_disk_names_the_disk_under_out(search_workspace, full_disk):
    (full_disk / "filler").write_bytes(b"\0" * 150_000)
    before = snapshot(search_workspace)
    result = run_cli("mergekit-expo", "search", "./sft", "./aligned", "--data", "prefs.jsonl", "--alphas",
                     "0", "--out", full_disk / "s", cwd=search_workspace, check=False, process=True)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"the disk under --out {full_disk / 's'} is full" in lines[0] and "--storage" not in lines[0]
    assert snapshot(search_workspace) == before
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # nothing of the search is left


def test_search_without_matplotlib_stops_before_any_work(search_workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # Python's own "not installed"
    before = snapshot(search_workspace)
    result = invoke("search", "./sft", "./aligned", "--data", "prefs.jsonl", "--out", "./s",
                    cwd=search_workspace)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("pip install 'mergekit-expo[search]'")
    assert snapshot(search_workspace) == before


def test_a_broken_torchvision_is_named_with_its_fix(tmp_path):
    # What PyPI's CUDA torchvision does beside a CPU torch: installed, and failing on import
    # (transformers imports it when it is installed, so every command failed to start).
    site = tmp_path / "site"
    (site / "torchvision").mkdir(parents=True)
    (site / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    (site / "torchvision-0.28.0.dist-info").mkdir()
    (site / "torchvision-0.28.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    result = run_cli("mergekit-expo", "run", "c.yml", tmp_path / "out", cwd=tmp_path, check=False,
                     env={"PYTHONPATH": str(site)}, process=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: torchvision (operator torchvision::nms does not exist) is installed but does not work "
        "with this torch (a CUDA build beside a CPU torch?), and transformers fails with it: pip "
        "uninstall -y torchvision torchaudio torchcodec (mergekit-expo needs none of them)"]


def test_sft_without_tokenizer_files_is_one_warning(tmp_path, llama_pair):
    sft, aligned = copy_pair(llama_pair, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (sft / name).unlink(missing_ok=True)
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, aligned))
    result = invoke("run", config, tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    warned = [line for line in lines if "no tokenizer files" in line and "written without a tokenizer" in line]
    assert len(warned) == 1 and warned[0].startswith(str(sft))  # the message alone, no logger prefix
    assert not [line for line in lines if "Failed to copy tokenizer" in line]
    assert looks_finished(tmp_path / "out") and not (tmp_path / "out" / "tokenizer.json").exists()


def test_a_byte_identical_copy_as_aligned_model_warns(tmp_path, llama_pair):
    sft, _ = llama_pair
    copy = tmp_path / "aligned-copy"
    shutil.copytree(sft, copy)
    (tmp_path / "prefs.jsonl").write_text(jsonl(PREFS))
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, copy))
    merged = invoke("run", config, tmp_path / "out", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    result = invoke("search", sft, copy, "--data", "prefs.jsonl", "--alphas", "0", "--out", "./s",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in merged.stderr.splitlines() + result.stderr.splitlines()
                if "same checkpoint" in line]
    assert any("hold the same weights" in w and "output equals the aligned model" in w for w in warnings)
    assert any("every α scores the aligned model" in w for w in warnings)
    assert not any(w.startswith("WARNING:") for w in warnings)
    # A real pair (same shapes, same file sizes) is not taken for a copy.
    from mergekit_expo.preflight import same_weights

    assert not same_weights(*llama_pair)
