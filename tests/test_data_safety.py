"""Nothing a hurried user types may destroy data or silently merge something else.

Each case runs a real command in a workspace laid out like the README's
(./models/{sft,aligned}, expo.yml, an adapter, a data file, a folder of notes) and
checks, by file hashes, that nothing was changed, deleted or added.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import make_adapter, run_cli


@pytest.fixture(scope="module")
def template(tmp_path_factory, llama_pair):
    root = tmp_path_factory.mktemp("workspace")
    models = root / "models"
    models.mkdir()
    shutil.copytree(llama_pair[0], models / "sft")
    shutil.copytree(llama_pair[1], models / "aligned")
    make_adapter(models / "sft", root / "adapter")
    (root / "expo.yml").write_text(yaml.safe_dump({
        "merge_method": "expo",
        "base_model": "./models/sft",
        "models": [{"model": "./models/aligned", "parameters": {"alpha": 0.5}}],
    }, sort_keys=False))
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("my notes\n")
    (root / "prefs.jsonl").write_text("".join(
        json.dumps({"prompt": f"w{i} w{i + 1}", "chosen": f"w{i}", "rejected": f"w{i + 2}"}) + "\n"
        for i in range(4)))
    (root / "link").symlink_to("models/aligned", target_is_directory=True)
    return root


@pytest.fixture
def workspace(template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(template, root, symlinks=True)
    return root


def snapshot(root: Path) -> dict:
    """Every path under root (links not followed) with its content hash."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                state[key] = "link:" + os.readlink(path)
            elif path.is_file():
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[key] = "dir"
    return state


def edited_config(root, text_from, text_to, name="typo.yml"):
    path = root / name
    path.write_text((root / "expo.yml").read_text().replace(text_from, text_to))
    return name


def with_top_level(root, extra, name="typo.yml"):
    path = root / name
    path.write_text((root / "expo.yml").read_text() + extra)
    return name


SEARCH = ("search", "./models/sft", "./models/aligned", "--data", "prefs.jsonl")

# name: (arguments, given the workspace; the expected part of the one error line)
CASES = {
    # Outputs that are, contain or sit inside an input.
    "run: output is the models folder": (
        lambda r: ("run", "expo.yml", "./models", "--overwrite"), "contains the base model"),
    "run: output is the aligned model": (
        lambda r: ("run", "expo.yml", "./models/aligned", "--overwrite"), "is the input model"),
    "run: output inside the aligned model": (
        lambda r: ("run", "expo.yml", "./models/aligned/expo-out"), "is inside the input model"),
    "run: output inside the aligned model via a symlink": (
        lambda r: ("run", "expo.yml", "./link/out"), "is inside the input model"),
    "run: output is the working folder": (
        lambda r: ("run", "expo.yml", ".", "--overwrite"), "contains the config file"),
    "run: output is the adapter of a +lora reference": (
        lambda r: ("run", edited_config(r, "./models/aligned", "./models/sft+./adapter"),
                   "./adapter", "--overwrite"), "is the LoRA adapter"),
    # --overwrite replaces only a previous output.
    "run: --overwrite on a folder of notes": (
        lambda r: ("run", "expo.yml", "./notes", "--overwrite"), "--overwrite refused"),
    "run: existing folder without --overwrite": (
        lambda r: ("run", "expo.yml", "./notes"), "pass --overwrite"),
    # Typos never merge something else.
    "run: typo in a parameter name": (
        lambda r: ("run", edited_config(r, "alpha:", "alhpa:"), "./out"), "did you mean 'alpha'"),
    "run: typo in parameters:": (
        lambda r: ("run", edited_config(r, "parameters:", "paramters:"), "./out"),
        "did you mean 'parameters'"),
    "run: typo in a top-level key": (
        lambda r: ("run", with_top_level(r, "dtpye: bfloat16\n"), "./out"), "did you mean 'dtype'"),
    "run: typo in top-level parameters": (
        lambda r: ("run", with_top_level(r, "parameters:\n  alpah: 0.4\n"), "./out"),
        "did you mean 'alpha'"),
    "run: dtype bf16": (
        lambda r: ("run", with_top_level(r, "dtype: bf16\n"), "./out"), "use one of bfloat16"),
    "run: merge method in capitals": (
        lambda r: ("run", edited_config(r, "merge_method: expo", "merge_method: ExPO"), "./out"),
        "use 'expo' (names are lower case)"),
    "run: config file missing": (
        lambda r: ("run", "nonexist.yml", "./out"), "check the path"),
    "run: --lora-merge-dtype bf16": (
        lambda r: ("run", "expo.yml", "./out", "--lora-merge-dtype", "bf16"), "use one of bfloat16"),
    # lora
    "lora: output is the adapter": (
        lambda r: ("lora", "./adapter", "./adapter", "--overwrite"), "is the adapter"),
    "lora: output inside the base model": (
        lambda r: ("lora", "./adapter", "./models/sft/expo", "--base", "./models/sft"),
        "is inside the base model"),
    "lora: --overwrite on a folder of notes": (
        lambda r: ("lora", "./adapter", "./notes", "--overwrite"), "--overwrite refused"),
    "lora: existing folder without --overwrite": (
        lambda r: ("lora", "./adapter", "./notes"), "pass --overwrite"),
    "lora: alpha is a word": (
        lambda r: ("lora", "./adapter", "./out", "--alpha", "abc"), "--alpha: 'abc' is not a number"),
    # search
    "search: --out is the aligned model": (
        lambda r: (*SEARCH, "--out", "./models/aligned"), "is the aligned"),
    "search: --out is the working folder": (
        lambda r: (*SEARCH, "--out", "."), "contains the SFT model"),
    "search: --out contains the data file": (
        lambda r: ("search", "./models/sft", "./models/aligned", "--data", "./notes/notes.txt",
                   "--out", "./notes"), "contains the data file"),
    "search: --out holds someone's files": (
        lambda r: (*SEARCH, "--out", "./notes"), "not an α search"),
    "search: --write-best is the aligned model": (
        lambda r: (*SEARCH, "--out", "./s", "--write-best", "./models/aligned", "--overwrite"),
        "is the aligned"),
    "search: --write-best is the search folder": (
        lambda r: (*SEARCH, "--out", "./s", "--write-best", "./s"), "is the search folder"),
    "search: --write-best --overwrite on notes": (
        lambda r: (*SEARCH, "--out", "./s", "--write-best", "./notes", "--overwrite"),
        "--overwrite refused"),
    "search: --write-best into a non-empty folder": (
        lambda r: (*SEARCH, "--out", "./s", "--write-best", "./notes"), "pass --overwrite"),
    "search: --alphas with a word": (
        lambda r: (*SEARCH, "--out", "./s", "--alphas", "0,abc"),
        "--alphas: 'abc' is not a number: write e.g. --alphas 0,0.3,0.5"),
    "search: a mistyped model folder writes no search folder": (
        lambda r: ("search", "./model/sft", "./models/aligned", "--data", "prefs.jsonl", "--out", "./s"),
        "./model/sft does not exist"),
    "search: a mistyped scorer": (
        lambda r: (*SEARCH, "--scorer", "prefrence", "--out", "./s"), "did you mean 'preference'"),
    # demo
    "demo: --out holds someone's files": (
        lambda r: ("demo", "--out", "./notes"), "pass --overwrite"),
    "demo: --overwrite on the models folder": (
        lambda r: ("demo", "--out", "./models", "--overwrite"), "--overwrite refused"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_and_nothing_touched(name, workspace):
    build, expected = CASES[name]
    arguments = build(workspace)
    before = snapshot(workspace)
    result = run_cli("mergekit-expo", *arguments, cwd=workspace, check=False)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workspace) == before


def test_overwrite_replaces_previous_outputs(workspace):
    run_cli("mergekit-expo", "run", "expo.yml", "./out", cwd=workspace)
    before = snapshot(workspace / "out")
    edited_config(workspace, "alpha: 0.5", "alpha: 0.2", "other.yml")
    run_cli("mergekit-expo", "run", "other.yml", "./out", "--overwrite", cwd=workspace)
    assert snapshot(workspace / "out") != before
    assert "alpha: 0.2" in (workspace / "out" / "mergekit_config.yml").read_text()

    run_cli("mergekit-expo", "lora", "./adapter", "./expo-adapter", cwd=workspace)
    run_cli("mergekit-expo", "lora", "./adapter", "./expo-adapter", "--alpha", "0.5", "--overwrite",
            cwd=workspace)
    run_cli("mergekit-expo", "demo", "--out", "./demo", cwd=workspace)
    run_cli("mergekit-expo", "demo", "--out", "./demo", "--overwrite", cwd=workspace)
    assert not [p for p in workspace.iterdir() if p.name.startswith(".")]


def test_search_write_best_overwrites_and_says_it_resumes(workspace):
    search = (*SEARCH, "--out", "./s", "--alphas", "0,0.5", "--write-best", "./best")
    run_cli("mergekit-expo", *search, cwd=workspace)
    result = run_cli("mergekit-expo", *search, cwd=workspace, check=False)
    assert result.returncode == 1 and "pass --overwrite" in result.stderr
    result = run_cli("mergekit-expo", *search, "--overwrite", cwd=workspace)
    assert "resuming: 2 of 2 α already scored in ./s" in result.stderr
    assert (workspace / "best" / "mergekit_config.yml").is_file()


def test_one_slash_local_paths_are_treated_as_local(workspace):
    config = edited_config(workspace, "./models/", "models/")
    run_cli("mergekit-expo", "run", config, "./out", cwd=workspace)
    card = (workspace / "out" / "README.md").read_text()
    assert "huggingface.co/models" not in card


def test_version():
    from mergekit_expo import __version__

    assert run_cli("mergekit-expo", "--version").stdout.strip() == f"mergekit-expo {__version__}"
