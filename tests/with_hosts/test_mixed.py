"""One environment with two hosts: mergekit 0.1.5 (on PYTHONPATH) beside mergekitty.
Run by tests/test_hosts.py in .venv-mergekitty with .venv-mergekitty/with-mergekit."""

import os
import subprocess
import sys

import pytest
from host_table import PRESENT, run_host

from conftest import CONFIGS, cli_env, load_folder
from fp64_reference import fidelity

if [h.name for h in PRESENT] != ["mergekit", "mergekitty"]:
    pytest.fail(f"this file runs with mergekit and mergekitty, found {PRESENT}", pytrace=False)


@pytest.mark.parametrize("first,second", [("mergekit", "mergekitty"), ("mergekitty", "mergekit")])
def test_both_hosts_know_expo_in_one_process(first, second):
    code = (
        "import sys\n"
        "assert not {'torch', 'mergekit', 'mergekitty'} & set(sys.modules)\n"
        f"import {first}.merge_methods, {second}.merge_methods\n"
        "import mergekit_expo  # explicitly too: registering twice must change nothing\n"
        "from mergekit.merge_methods import registered_methods\n"
        "from mergekitty.merge_methods import REGISTERED_MERGE_METHODS\n"
        "names = [m.spec.name for m in registered_methods()]\n"
        "assert names.count('expo') == 1 and names.count('expo_trajectory') == 1\n"
        "assert REGISTERED_MERGE_METHODS['expo'].name() == 'expo'\n"
        "assert REGISTERED_MERGE_METHODS['expo_trajectory'].name() == 'expo_trajectory'\n"
    )
    env = dict(cli_env(), PYTHONPATH=os.environ["PYTHONPATH"])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_each_host_cli_merges_the_same_bits(models_dir):
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    outputs = {}
    for cli in ("mergekit-yaml", "mergekitty-yaml", "mergekit-expo"):
        args = ("run",) if cli == "mergekit-expo" else ()
        run_host(cli, *args, CONFIGS / "expo.yml", models_dir / cli, cwd=models_dir)
        outputs[cli] = load_folder(models_dir / cli)
    for name, tensor in outputs["mergekit-yaml"].items():
        assert fidelity(tensor, sft[name], aligned[name], 0.3)[0] == 1.0, name
        for other in ("mergekitty-yaml", "mergekit-expo"):
            assert outputs[other][name].equal(tensor), (other, name)


def test_card_on_a_mergekitty_output_says_what_to_do(models_dir):
    from conftest import snapshot

    run_host("mergekitty-yaml", CONFIGS / "expo.yml", "./out", cwd=models_dir)
    assert (models_dir / "out" / "mergekitty_config.yml").is_file()
    before = snapshot(models_dir / "out")
    result = run_host("mergekit-expo", "card", "./out", "--overwrite", cwd=models_dir, check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "./out is a mergekitty output (mergekitty_config.yml)" in lines[0]
    assert "merge the config with `mergekit-expo run CONFIG OUT`" in lines[0]
    assert snapshot(models_dir / "out") == before
