"""What the commands print, read as a log: no progress bars redrawn into a file or a pipe,
every `Error:` line on a line of its own, and no other library's deprecation notes
(unless -v asks for everything)."""

import shutil
import subprocess
import sys

import click
from click.testing import CliRunner

from conftest import BIN, cli_env, expo_config, poison, run_cli, write_yaml


def test_off_a_terminal_no_bars_are_drawn_and_the_error_starts_a_line(tmp_path, llama_pair):
    sft, aligned = llama_pair
    shutil.copytree(aligned, tmp_path / "aligned")
    poison(tmp_path / "aligned", "model.layers.1.self_attn.q_proj.weight", float("nan"))  # fails mid-merge
    config = write_yaml(tmp_path / "c.yml", expo_config(sft, tmp_path / "aligned"))
    result = subprocess.run([str(BIN / "mergekit-expo"), "run", str(config), str(tmp_path / "out")],
                            env=cli_env(), capture_output=True)  # bytes: a \r stays a \r
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "q_proj.weight in aligned model" in stderr, stderr
    assert "\r" not in stderr, stderr  # a bar redrawing its line, as a log shows it
    assert "\nError: " in f"\n{stderr}" and stderr.count("Error: ") == 1, stderr


def test_an_error_starts_its_own_line_after_an_unfinished_bar():
    """On a terminal a bar is drawn and, cut short by the error, its line is not ended."""
    from tqdm import tqdm

    from mergekit_expo.cli_errors import reports_errors
    from mergekit_expo.errors import ExpoInputError

    bars = []

    @click.command()
    @click.option("-v", "--verbose", is_flag=True)
    @reports_errors
    def merge(verbose):
        bars.append(tqdm(total=4, desc="Executing graph", file=sys.stderr, disable=False))  # as on a terminal
        bars[0].update(2)
        raise ExpoInputError("model.layers.1.weight holds a NaN: repair that checkpoint")

    result = CliRunner().invoke(merge, [])
    bars[0].close()  # not left open for the next test of this process
    assert result.exit_code == 1
    assert "Executing graph" in result.stderr
    assert "\nError: model.layers.1.weight holds a NaN: repair that checkpoint\n" in result.stderr, result.stderr


def test_other_libraries_deprecation_notes_are_shown_only_with_verbose(tmp_path, llama_pair):
    """transformers tells mergekit (`torch_dtype` is deprecated) through our commands' output."""
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair, dtype="bfloat16"))  # sets torch_dtype
    run_cli("mergekit-yaml", config, tmp_path / "out")
    for args, shown in [(["demo", "--out", tmp_path / "demo"], False),
                        (["card", tmp_path / "out", "--overwrite"], False),
                        (["card", tmp_path / "out", "-v"], True)]:
        stderr = run_cli("mergekit-expo", *args, process=True).stderr
        assert ("`torch_dtype` is deprecated" in stderr) == shown, (args, stderr)
