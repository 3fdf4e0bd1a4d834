"""The linter's verdict on the whole repository, with the project's own configuration
(pyproject.toml's [tool.ruff], 120 columns under tests/, bench/, examples/ and scripts/)."""

import subprocess

from conftest import BIN, REPO


def test_ruff_finds_nothing():
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", str(REPO)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
