"""Ctrl-C (and SIGTERM) sent to the real `mergekit-expo` script at each moment of a run:
during its imports, while it checks the inputs, while it publishes the output, and after
(mid-merge: test_bad_inputs.py). Every time: exit 130 (143), exactly one `Error:` line,
no traceback, and the output path either absent or complete, as the line says.

Each moment is found from outside, without changing what the command does: torch's
library mapped into the process (imports), a weights file that is a FIFO the command
blocks on (the input checks), the previous output moved aside into the staging folder
(the publish of an --overwrite), the manifest at the output path (after the publish).
"""

import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, cli_env, expo_config, load_folder, run_cli, write_yaml

NOTHING_LEFT = "nothing was left that looks like a finished output (an earlier one it was to replace is kept)"
NOT_STARTED = "the command had not started: nothing was written"


@pytest.fixture(scope="module")
def big_pair(pair_factory):
    """~5M fp32 parameters: with 1 MB shards, checking and replacing the previous output
    takes long enough to act in."""
    return pair_factory(hidden_size=256, intermediate_size=768, num_layers=6, num_heads=4,
                        num_kv_heads=4, dtype=torch.float32)


def start(cwd: Path, *args):
    """The installed script, its output in files (a pipe left unread could block it)."""
    out, err = open(cwd / "stdout.txt", "w"), open(cwd / "stderr.txt", "w")
    process = subprocess.Popen([str(BIN / "mergekit-expo"), *map(str, args)], cwd=cwd, env=cli_env(),
                               stdout=out, stderr=err)
    out.close()
    err.close()
    return process


def wait_for(process, ready, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"the command ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.002)


def ended(process, cwd: Path):
    """Exit status and the one Error: line (asserting there is one, and no traceback)."""
    process.wait(timeout=300)
    stderr = (cwd / "stderr.txt").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    return process.returncode, errors, stderr


def torch_loading(process) -> bool:
    return "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()


def same_tensors(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def no_leftovers(cwd: Path, name: str = "out"):
    left = [p.name for p in cwd.iterdir() if p.name.startswith((f".{name}.partial-", f"{name}.previous-"))]
    assert left == []


@pytest.mark.parametrize("command,signum", [("run", signal.SIGINT), ("lora", signal.SIGTERM)])
def test_signal_during_the_imports(tmp_path, command, signum):
    process = start(tmp_path, command, "./in", "./out")
    wait_for(process, lambda: torch_loading(process), "torch's import")
    process.send_signal(signum)
    code, errors, stderr = ended(process, tmp_path)
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert code == 128 + signum and errors == [f"Error: interrupted ({name}); {NOT_STARTED}"], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt", "stdout.txt"]


def test_ctrl_c_while_the_inputs_are_checked(tmp_path, llama_pair):
    sft, aligned = llama_pair
    shutil.copytree(aligned, tmp_path / "aligned")
    fifo = tmp_path / "aligned" / "model-extra.safetensors"
    os.mkfifo(fifo)  # the check opens every weights file: it waits here for a writer
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, tmp_path / "aligned"))
    process = start(tmp_path, "run", config, "./out")
    writer = None
    try:
        def reading():
            nonlocal writer
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds once it is opened to read
            except OSError as error:
                assert error.errno == errno.ENXIO
                return False
            return True

        wait_for(process, reading, "the input check")
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # Python runs a signal's handler between bytecodes: one that lands just before the
            # read began is raised when the read returns. A file's read returns; the FIFO's
            # waits for a writer, so let it return (empty) as a file's would.
            os.close(writer)
            writer = None
        code, errors, stderr = ended(process, tmp_path)
    finally:
        if writer is not None:
            os.close(writer)
    assert code == 130 and errors == [f"Error: interrupted (Ctrl-C); {NOTHING_LEFT}"], stderr
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_ctrl_c_while_publishing_finishes_the_publish(tmp_path, big_pair):
    """Once the publish has begun (here: the previous output moved aside, to be checked and
    replaced) it is finished, and the line says so. (Mid-merge: test_bad_inputs.py's
    test_interrupted_run_leaves_no_model.)"""
    reference = tmp_path / "reference"
    for alpha in (0.3, 0.5):
        write_yaml(tmp_path / f"{alpha}.yml", expo_config(*big_pair, alpha))
    run_cli("mergekit-expo", "run", tmp_path / "0.5.yml", reference, "--out-shard-size", "1M")
    run_cli("mergekit-expo", "run", tmp_path / "0.3.yml", tmp_path / "out", "--out-shard-size", "1M")

    process = start(tmp_path, "run", "0.5.yml", "./out", "--overwrite", "--out-shard-size", "1M")
    wait_for(process, lambda: list(tmp_path.glob(".out.partial-*/previous")), "the publish")
    process.send_signal(signal.SIGINT)
    code, errors, stderr = ended(process, tmp_path)
    assert code == 130 and errors == [
        "Error: interrupted (Ctrl-C) after ./out was complete: written in full before the interruption"], stderr
    assert same_tensors(load_folder(tmp_path / "out"), load_folder(reference))  # the new one, whole
    no_leftovers(tmp_path)


def test_ctrl_c_after_the_output_is_published(tmp_path, llama_pair):
    """Python drops its own handler before tearing its modules down: a Ctrl-C then would
    kill the process without a word although the output is complete."""
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    process = start(tmp_path, "run", config, "./out")
    wait_for(process, lambda: (tmp_path / "out" / ".mergekit-expo.json").exists(), "the output")
    process.send_signal(signal.SIGINT)
    code, errors, stderr = ended(process, tmp_path)
    # The process may have ended in between: then it says nothing more, and exits 0.
    assert (code, errors) in [(0, []), (130, ["Error: interrupted (Ctrl-C) after ./out was complete: written "
                                              "in full before the interruption"])], stderr
    run_cli("mergekit-yaml", config, tmp_path / "yaml-out")
    assert same_tensors(load_folder(tmp_path / "out"), load_folder(tmp_path / "yaml-out"))
    no_leftovers(tmp_path)
