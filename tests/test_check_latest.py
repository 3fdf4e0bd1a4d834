"""scripts/check-latest.sh says what it ran: the default tier only when no pytest arguments
narrowed it. Run in a copy of the repository's scripts whose set-up step is a stand-in
(this venv's interpreter as the "newest" one; nothing is installed), on a test of its own."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def check_latest(root: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/check-latest.sh", *args], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), timeout=300)


def test_check_latest_names_what_ran(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "check-latest.sh", tmp_path / "scripts")
    (tmp_path / "scripts" / "setup.sh").write_text(  # the set-up, minus the downloads
        f'mkdir -p "$VENV/bin" && ln -s {sys.executable} "$VENV/bin/python"\n')
    (tmp_path / "locks").mkdir()
    shutil.copy(REPO / "locks" / "main.txt", tmp_path / "locks")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_one.py").write_text("def test_one():\n    assert True\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")

    result = check_latest(tmp_path, "tests/test_one.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        "check-latest: pytest tests/test_one.py passes with the newest versions (only what these arguments "
        "select, not the whole default tier)")
    result = check_latest(tmp_path)
    assert result.stdout.splitlines()[-1] == "check-latest: the default tier passes with the newest versions"
    result = check_latest(tmp_path, "-k", "nothing")
    assert result.returncode == 5
    assert result.stdout.splitlines()[-1] == "check-latest: pytest -k nothing collected no tests: nothing was checked"
