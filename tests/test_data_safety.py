"""Nothing a hurried user types may destroy data or silently merge something else.

Each case runs a real command in a workspace laid out like the README's
(./models/{sft,aligned}, expo.yml, adapters, a data file, a folder of notes, previous
outputs of our commands) and checks, by file hashes, that nothing was changed, deleted
or added. Table cases run in this process (click's CliRunner: the same command and exit
code without ~4 s of imports each); the races run real, separate processes.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, cli_env, expo_config, invoke, make_adapter, poison, run_cli, snapshot, write_yaml


@pytest.fixture(scope="module")
def template(tmp_path_factory, llama_pair):
    root = tmp_path_factory.mktemp("workspace")
    models = root / "models"
    models.mkdir()
    shutil.copytree(llama_pair[0], models / "sft")
    shutil.copytree(llama_pair[1], models / "aligned")
    shutil.copytree(llama_pair[1], models / "poisoned")
    poison(models / "poisoned", "model.layers.1.self_attn.q_proj.weight", float("nan"))
    make_adapter(models / "sft", root / "adapter")
    make_adapter(models / "sft", root / "my_adapter", modules_to_save=["lm_head"])  # the user's own
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
    (root / "my_scorer.py").write_text("def high(model, tokenizer):\n    return 'high'\n")
    (root / "link").symlink_to("models/aligned", target_is_directory=True)
    # Previous outputs of our commands, as --overwrite may find them.
    for arguments in (("run", "expo.yml", "./previous"), ("lora", "./adapter", "./expo_adapter"),
                      ("demo", "--out", "./demo")):
        result = invoke(*arguments, cwd=root)
        assert result.returncode == 0, result.stderr
    # What plain `mergekit-yaml` writes: the same files (run calls mergekit's run_merge), no manifest.
    shutil.copytree(root / "previous", root / "plain")
    (root / "plain" / ".mergekit-expo.json").unlink()
    return root


@pytest.fixture
def workspace(template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(template, root, symlinks=True)
    return root


def edited_config(root, text_from, text_to, name="typo.yml"):
    path = root / name
    path.write_text((root / "expo.yml").read_text().replace(text_from, text_to))
    return name


def old_search(root):
    """A search folder as versions before the optuna study wrote it: results.json only."""
    folder = root / "old-search"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"settings": {"scorer": "preference"}, "results": [
        {"alpha": 0.0, "score": 0.5, "low": None, "high": None, "n": 4, "seconds": 1.0}]}))
    return "./old-search"


def with_top_level(root, extra, name="typo.yml"):
    path = root / name
    path.write_text((root / "expo.yml").read_text() + extra)
    return name


def copy_with(root, source, name, change):
    """A copy of a previous output with one change of the user's; returns its path as typed."""
    shutil.copytree(root / source, root / name, symlinks=True)
    change(root / name)
    return f"./{name}"


def add_file(relative, text="mine\n"):
    def change(folder):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return change


def flip_a_byte(relative):
    def change(folder):
        data = bytearray((folder / relative).read_bytes())
        data[len(data) // 2] ^= 1  # same size: only the content tells
        (folder / relative).write_bytes(bytes(data))
    return change


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
    "search: --out holds an earlier version's search (no study)": (
        lambda r: (*SEARCH, "--out", old_search(r)), "earlier search without its study"),
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
    # --overwrite replaces only what the command wrote, unchanged (file hashes, not names).
    "run: --overwrite over a previous output plus a file of the user's": (
        lambda r: ("run", "expo.yml", copy_with(r, "previous", "victim", add_file("notes.txt")),
                   "--overwrite"), "holds notes.txt, which mergekit-expo run did not write"),
    "run: --overwrite over a previous output plus a hidden file": (
        lambda r: ("run", "expo.yml", copy_with(r, "previous", "victim", add_file(".todo")),
                   "--overwrite"), "holds .todo, which"),
    "run: --overwrite over a previous output plus a subfolder": (
        lambda r: ("run", "expo.yml", copy_with(r, "previous", "victim", add_file("eval/scores.json")),
                   "--overwrite"), "holds eval/, which"),
    "run: --overwrite over a previous output whose model card was edited": (
        lambda r: ("run", "expo.yml", copy_with(r, "previous", "victim", flip_a_byte("README.md")),
                   "--overwrite"), "has README.md changed since mergekit-expo run wrote it"),
    "run: --overwrite over a previous output whose weights were rewritten": (
        lambda r: ("run", "expo.yml", copy_with(r, "previous", "victim", flip_a_byte("model.safetensors")),
                   "--overwrite"), "has model.safetensors changed"),
    "run: --overwrite over a plain mergekit-yaml output": (
        lambda r: ("run", "expo.yml", "./plain", "--overwrite"), "has no .mergekit-expo.json"),
    "run: --overwrite over an adapter of ours": (
        lambda r: ("run", "expo.yml", "./expo_adapter", "--overwrite"), "is a LoRA adapter written by"),
    "run: --overwrite over a demo folder": (
        lambda r: ("run", "expo.yml", "./demo", "--overwrite"), "is a demo folder written by `mergekit-expo demo`"),
    "run: output path is a symlink to a previous output": (
        lambda r: ("run", "expo.yml", _symlink(r, "previous", "out-link"), "--overwrite"), "is a symlink"),
    "search: --write-best --overwrite over a previous output plus a file": (
        lambda r: (*SEARCH, "--out", "./s", "--write-best",
                   copy_with(r, "previous", "victim", add_file("notes.txt")), "--overwrite"),
        "holds notes.txt"),
    "lora: --overwrite over the user's own peft adapter": (
        lambda r: ("lora", "./adapter", "./my_adapter", "--overwrite"),
        "has no .mergekit-expo.json, so `mergekit-expo lora` did not write it"),
    "lora: --overwrite over an adapter of ours plus a file": (
        lambda r: ("lora", "./adapter", copy_with(r, "expo_adapter", "victim", add_file("notes.txt")),
                   "--overwrite"), "holds notes.txt, which mergekit-expo lora did not write"),
    "lora: --overwrite over a merged model of ours": (
        lambda r: ("lora", "./adapter", "./previous", "--overwrite"), "is a merged model written by"),
    "demo: --overwrite over a demo folder plus a file": (
        lambda r: ("demo", "--out", copy_with(r, "demo", "victim", add_file("models/notes.txt")),
                   "--overwrite"), "holds models/notes.txt"),
    # --lora-merge-cache is written to: the same rules as any output.
    "run: --lora-merge-cache is the base model of a +lora reference": (
        lambda r: ("run", edited_config(r, "./models/aligned", "./models/sft+./adapter"), "./out",
                   "--lora-merge-cache", "./models/sft"),
        "--lora-merge-cache ./models/sft is the base model"),
    "run: --lora-merge-cache is a model folder the config does not read": (
        lambda r: ("run", edited_config(r, "./models/aligned", "./models/sft+./adapter"), "./out",
                   "--lora-merge-cache", "./models/aligned"),
        "./models/aligned holds config.json, which is not a merged LoRA model"),
    "run: --lora-merge-cache is the aligned model": (
        lambda r: ("run", "expo.yml", "./out", "--lora-merge-cache", "./models/aligned"),
        "--lora-merge-cache ./models/aligned is the input model"),
    "run: --lora-merge-cache inside the adapter": (
        lambda r: ("run", edited_config(r, "./models/aligned", "./models/sft+./adapter"), "./out",
                   "--lora-merge-cache", "./adapter/cache"), "is inside the LoRA adapter"),
    "run: --lora-merge-cache inside the output": (
        lambda r: ("run", "expo.yml", "./out", "--lora-merge-cache", "./out/cache"), "is inside the output"),
    "run: --lora-merge-cache holds someone's files": (
        lambda r: ("run", "expo.yml", "./out", "--lora-merge-cache", "./notes"),
        "holds notes.txt, which is not a merged LoRA model"),
    # A failure after the work began leaves nothing it created behind.
    "run: a merge failing in a new deep folder leaves no folders": (
        lambda r: ("run", edited_config(r, "./models/aligned", "./models/poisoned"), "./deep/a/b/out"),
        "already holds 1 NaN/inf value"),
    "search: a scorer failing at the first α leaves no search folder": (
        lambda r: ("search", "./models/sft", "./models/aligned", "--scorer", "my_scorer:high",
                   "--alphas", "0", "--out", "./deep/s"),
        "scorer my_scorer:high returned str 'high': it must return a float"),
    # Hurried typing.
    "run: output is the aligned model, with a trailing slash": (
        lambda r: ("run", "expo.yml", "./models/aligned/", "--overwrite"), "is the input model"),
    "run: output is the aligned model, through ..": (
        lambda r: ("run", "expo.yml", "./notes/../models/aligned", "--overwrite"), "is the input model"),
    "run: config and output swapped": (
        lambda r: ("run", "./previous", "expo.yml"), "config file ./previous is a folder: check the path"),
    "lora: adapter and output swapped": (
        lambda r: ("lora", "./expo_adapter", "./adapter", "--overwrite"),
        "has no .mergekit-expo.json, so `mergekit-expo lora` did not write it"),
}

# Through the console script, as the user runs it: exit code and stderr of a real process.
SUBPROCESS = {"run: --overwrite over a previous output plus a file of the user's",
              "lora: --overwrite over the user's own peft adapter",
              "search: --write-best --overwrite over a previous output plus a file",
              "demo: --overwrite over a demo folder plus a file"}


def _symlink(root, target, name):
    (root / name).symlink_to(target, target_is_directory=True)
    return f"./{name}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_and_nothing_touched(name, workspace):
    build, expected = CASES[name]
    arguments = build(workspace)
    before = snapshot(workspace)
    if name in SUBPROCESS:
        result = run_cli("mergekit-expo", *arguments, cwd=workspace, check=False)
    else:
        result = invoke(*arguments, cwd=workspace)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workspace) == before


def hard_linked_copy(source: Path, target: Path) -> None:
    """`cp -al`: a backup that shares every file with the original."""
    shutil.copytree(source, target, copy_function=os.link)


def manifest_id(folder: Path) -> str:
    return json.loads((folder / ".mergekit-expo.json").read_text())["id"]


def test_overwrite_replaces_previous_outputs_and_only_them(workspace):
    # Each command replaces its own previous output; a hard-linked backup of it keeps its
    # bytes (the old files are unlinked, never rewritten in place).
    for source, arguments in (("previous", ("run", "expo.yml")),
                              ("expo_adapter", ("lora", "./adapter")),
                              ("demo", ("demo", "--alpha", "0.2", "--out"))):
        hard_linked_copy(workspace / source, workspace / f"{source}-backup")
        backup, old_id = snapshot(workspace / f"{source}-backup"), manifest_id(workspace / source)
        result = invoke(*arguments, f"./{source}", "--overwrite", cwd=workspace)
        assert result.returncode == 0, result.stderr
        assert snapshot(workspace / f"{source}-backup") == backup
        assert manifest_id(workspace / source) != old_id
    assert "alpha: 0.2" in (workspace / "demo/expo.yml").read_text()
    assert str(workspace / "demo/models/sft") in (workspace / "demo/expo.yml").read_text()
    assert ".partial-" not in (workspace / "demo/merged/README.md").read_text()
    # The replaced outputs are again outputs of ours, exactly: a second --overwrite accepts them.
    result = invoke("run", "expo.yml", "./previous", "--overwrite", cwd=workspace)
    assert result.returncode == 0, result.stderr
    assert not [p for p in workspace.iterdir() if p.name.startswith(".")]


def test_outputs_get_the_usual_file_permissions(template):
    # Weights written by safetensors 0.8 are owner-only (0600) as written; the published outputs
    # of run, lora and demo get 0666 minus the umask, as every other file the commands write.
    mask = os.umask(0o022)
    os.umask(mask)
    for output in ("previous", "expo_adapter", "demo"):
        modes = {str(p.relative_to(template)): oct(p.stat().st_mode & 0o777)
                 for p in (template / output).rglob("*") if p.is_file()}
        assert any(name.endswith(".safetensors") for name in modes)
        assert set(modes.values()) == {oct(0o666 & ~mask)}, modes


def test_search_write_best_overwrites_and_says_it_resumes(workspace):
    search = (*SEARCH, "--strategy", "full", "--out", "./s", "--alphas", "0,0.5", "--write-best", "./best")
    run_cli("mergekit-expo", *search, cwd=workspace)
    result = run_cli("mergekit-expo", *search, cwd=workspace, check=False)
    assert result.returncode == 1 and "pass --overwrite" in result.stderr
    hard_linked_copy(workspace / "s", workspace / "s-backup")
    backup = snapshot(workspace / "s-backup")
    result = run_cli("mergekit-expo", *search[:-4], "--alphas", "0,0.5,1", "--write-best", "./best",
                     "--overwrite", cwd=workspace)
    assert "resuming: 2 of 3 α already scored in ./s" in result.stderr
    assert (workspace / "best" / "mergekit_config.yml").is_file()
    # Every report was replaced by a new file, not rewritten: the hard-linked backup keeps them.
    # (The study's database is a database: updated in place, so its hard link follows it.)
    reports = lambda state: {k: v for k, v in state.items() if k != "study.db"}  # noqa: E731
    assert reports(snapshot(workspace / "s-backup")) == reports(backup)
    assert snapshot(workspace / "s")["results.json"] != backup["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "results.csv", "best.yml", "score_vs_alpha.png"):
        assert (workspace / "s" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not [p.name for p in (workspace / "s").iterdir() if p.name.startswith(".")]


def test_one_slash_local_paths_are_treated_as_local(workspace):
    config = edited_config(workspace, "./models/", "models/")
    run_cli("mergekit-expo", "run", config, "./out", cwd=workspace)
    card = (workspace / "out" / "README.md").read_text()
    assert "huggingface.co/models" not in card


def test_version():
    from mergekit_expo import __version__

    assert run_cli("mergekit-expo", "--version").stdout.strip() == f"mergekit-expo {__version__}"


# -- the publish step: at the moment of the rename, whatever is at OUT stays -----------------

@pytest.fixture(scope="module")
def slow_config(tmp_path_factory, pair_factory):
    """A pair that, with 1 MB shards, takes many file writes to merge: a test can act while
    the merge is half done (the same pair as the interruption tests)."""
    pair = pair_factory(hidden_size=512, intermediate_size=1536, num_layers=6, num_heads=8,
                        num_kv_heads=8, dtype=torch.float32)
    return write_yaml(tmp_path_factory.mktemp("slow") / "slow.yml", expo_config(*pair))


def start_run(cwd, config, out, *extra):
    return subprocess.Popen(
        [str(BIN / "mergekit-expo"), "run", str(config), out, "--out-shard-size", "1M", *extra],
        cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def pause_mid_merge(process, cwd: Path, name: str) -> None:
    """SIGSTOP the process once its first shard is in its staging folder (many are left)."""
    deadline = time.time() + 300
    while not list(cwd.glob(f".{name}.partial-*/new/{name}/*.safetensors")):
        assert process.poll() is None and time.time() < deadline, "the merge ended too early"
        time.sleep(0.005)
    process.send_signal(signal.SIGSTOP)
    assert list(cwd.glob(f".{name}.partial-*/new/{name}")), "published before the test could act"


def finish(process):
    process.send_signal(signal.SIGCONT)
    stderr = process.communicate(timeout=600)[1]
    return process.returncode, [line for line in stderr.splitlines() if line.startswith("Error:")]


def without_staging(state: dict) -> dict:
    return {key: value for key, value in state.items() if ".partial-" not in key}


def test_a_folder_made_at_the_output_during_the_merge_is_left_alone(workspace, slow_config):
    process = start_run(workspace, slow_config, "./out")
    pause_mid_merge(process, workspace, "out")
    (workspace / "out").mkdir()
    (workspace / "out" / "notes.txt").write_text("started while the merge ran\n")
    expected = without_staging(snapshot(workspace))
    code, errors = finish(process)
    assert code == 1 and len(errors) == 1, errors
    assert "./out was created while the command ran and now holds notes.txt" in errors[0]
    assert snapshot(workspace) == expected


def add_notes(workspace):
    (workspace / "previous" / "notes.txt").write_text("my evaluation of the previous model\n")


def swap_in_another_output(workspace):
    # Another run's finished model takes the place of the one checked at the start.
    shutil.rmtree(workspace / "previous")
    shutil.copytree(workspace / "demo" / "merged", workspace / "previous")


@pytest.mark.parametrize("change,reason", [
    (add_notes, "it holds notes.txt, which mergekit-expo run did not write"),
    (swap_in_another_output, "it is another output than the one there when the command started"),
], ids=["a file added", "another output swapped in"])
def test_overwrite_keeps_what_changed_at_the_output_during_the_merge(workspace, slow_config, change, reason):
    process = start_run(workspace, slow_config, "./previous", "--overwrite")
    pause_mid_merge(process, workspace, "previous")
    change(workspace)
    expected = without_staging(snapshot(workspace))
    code, errors = finish(process)
    assert code == 1 and len(errors) == 1, errors
    assert f"./previous changed while the command ran ({reason})" in errors[0]
    assert snapshot(workspace) == expected


def test_two_runs_into_one_output_publish_one_and_refuse_the_other(workspace):
    edited_config(workspace, "alpha: 0.5", "alpha: 0.9", "other.yml")
    before = snapshot(workspace)
    runs = {alpha: subprocess.Popen([str(BIN / "mergekit-expo"), "run", config, "./out"], cwd=workspace,
                                    env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for alpha, config in ((0.5, "expo.yml"), (0.9, "other.yml"))}
    results = {alpha: (p.wait(timeout=600), p.stderr.read()) for alpha, p in runs.items()}
    assert sorted(code for code, _ in results.values()) == [0, 1], results
    winner = next(alpha for alpha, (code, _) in results.items() if code == 0)
    loser_output = results[0.5 if winner == 0.9 else 0.9][1]
    loser_errors = [line for line in loser_output.splitlines() if line.startswith("Error:")]
    assert len(loser_errors) == 1 and any(reason in loser_errors[0] for reason in (
        "is writing ./out", "./out was created while the command ran", "./out already exists")), loser_errors
    assert f"alpha: {winner}" in (workspace / "out" / "mergekit_config.yml").read_text()
    after = snapshot(workspace)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before


def test_a_live_writer_is_waited_for_and_a_killed_one_cleaned_up(workspace, slow_config):
    first = start_run(workspace, slow_config, "./out")
    pause_mid_merge(process=first, cwd=workspace, name="out")
    staging = workspace / f".out.partial-{first.pid}"
    result = invoke("run", "expo.yml", "./out", cwd=workspace)  # this process is the second writer
    assert result.returncode == 1
    assert f"another mergekit-expo process (PID {first.pid}) is writing ./out" in result.stderr
    assert staging.is_dir() and not (workspace / "out").exists()
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert staging.is_dir()  # what kill -9 leaves
    assert invoke("run", "expo.yml", "./out", cwd=workspace).returncode == 0
    assert not staging.exists()
    assert (workspace / "out" / ".mergekit-expo.json").is_file()
    assert not [p.name for p in workspace.iterdir() if p.name.startswith(".")]


# -- the pieces, in this process -----------------------------------------------------------

@pytest.mark.parametrize("portable", [False, True], ids=["renameat2", "mkdir-then-rename"])
def test_rename_never_replaces(tmp_path, monkeypatch, portable):
    from mergekit_expo import filesystem

    if portable:
        monkeypatch.setattr(filesystem, "_RENAMEAT2", None)
    elif filesystem._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    source = tmp_path / "new"
    source.mkdir()
    (source / "model.safetensors").write_text("new")
    for prepare in (lambda t: t.mkdir(), lambda t: (t.mkdir(), (t / "notes.txt").write_text("mine"))):
        target = tmp_path / "out"
        prepare(target)
        before = snapshot(tmp_path)
        with pytest.raises(FileExistsError if not any(target.iterdir()) else OSError):
            filesystem.rename_no_replace(source, target)
        assert snapshot(tmp_path) == before  # an empty folder is not replaced either
        shutil.rmtree(target)
    filesystem.rename_no_replace(source, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_text() == "new" and not source.exists()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def fake_staging(parent: Path, name: str, pid: int, start=None) -> Path:
    root = parent / f".{name}.partial-{pid}"
    (root / "new" / name).mkdir(parents=True)
    (root / "new" / name / "model.safetensors").write_text("half written")
    if start is not None:
        (root / "owner.json").write_text(json.dumps({"pid": pid, "start": start, "host": os.uname().nodename}))
    return root


def test_only_staging_folders_of_ended_processes_are_cleaned(tmp_path):
    from mergekit_expo.atomic_output import clean_stale
    from mergekit_expo.filesystem import start_time

    mine = start_time(os.getpid())
    live = fake_staging(tmp_path, "out", os.getpid(), start=mine)
    dead = fake_staging(tmp_path, "out", dead_pid())
    reused = fake_staging(tmp_path, "other", os.getpid(), start=mine - 1)  # that PID's owner ended
    unrelated = fake_staging(tmp_path, "out-2", dead_pid())
    clean_stale(tmp_path / "out")
    clean_stale(tmp_path / "other")
    assert live.is_dir() and not dead.exists() and not reused.exists() and unrelated.is_dir()


def test_a_replacement_killed_half_way_is_undone_or_finished(workspace):
    from mergekit_expo.atomic_output import clean_stale

    # Killed after moving the previous output aside, before publishing: it goes back.
    before = snapshot(workspace / "previous")
    root = fake_staging(workspace, "previous", dead_pid())
    (workspace / "previous").rename(root / "previous")
    clean_stale(workspace / "previous")
    assert snapshot(workspace / "previous") == before and not root.exists()
    # Killed after publishing, before deleting the old one: deleted, as checked.
    root = fake_staging(workspace, "out", dead_pid())
    shutil.rmtree(root / "new" / "out")
    shutil.copytree(workspace / "previous", root / "previous")
    (workspace / "out").mkdir()
    clean_stale(workspace / "out")
    assert not root.exists()
    # ... unless it changed: then it is kept, beside the output.
    root = fake_staging(workspace, "out", dead_pid())
    shutil.rmtree(root / "new" / "out")
    shutil.copytree(workspace / "previous", root / "previous")
    (root / "previous" / "notes.txt").write_text("mine")
    clean_stale(workspace / "out")
    kept = workspace / f"out.previous-{root.name.rsplit('-', 1)[1]}"
    assert (kept / "notes.txt").read_text() == "mine" and not root.exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_dropped_inside_a_weakref_callback_still_stops_the_publish(tmp_path):
    # Python prints and drops an exception raised while it runs a weakref callback, so a
    # SIGTERM arriving then never reaches the command: the publish must notice it anyway.
    import weakref

    from mergekit_expo import interruption
    from mergekit_expo.atomic_output import staged_output
    from mergekit_expo.output_guard import check_output

    def callback(_):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs at the next bytecode boundary: in here
            pass

    class Thing:
        pass

    target = check_output(str(tmp_path / "out"), reads=[], kind="adapter", command="mergekit-expo lora")
    interruption.received.clear()
    previous = signal.signal(signal.SIGTERM, interruption.on_signal)
    try:
        with pytest.raises(interruption.Interrupted):
            with staged_output(target) as staging:
                staging.mkdir()
                (staging / "adapter_model.safetensors").write_bytes(b"half")
                thing = Thing()
                ref = weakref.ref(thing, callback)  # noqa: F841 (kept alive to fire)
                del thing
    finally:
        signal.signal(signal.SIGTERM, previous)
        interruption.received.clear()
    assert sorted(os.listdir(tmp_path)) == []
