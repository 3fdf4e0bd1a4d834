"""Installing the package is enough for every Python process to know `expo`, lazily."""

import subprocess
import sys

import pytest

from conftest import cli_env


def python(code):
    result = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result


def test_interpreter_start_imports_neither_torch_nor_mergekit():
    result = python(
        "import sys; assert 'mergekit_expo' in sys.modules, 'start-up hook did not run';"
        "assert 'torch' not in sys.modules; assert 'mergekit' not in sys.modules"
    )
    assert result.stdout == "" and result.stderr == ""


def test_import_mergekit_expo_stays_cheap():
    python(
        "import mergekit_expo, sys; assert 'torch' not in sys.modules;"
        "assert 'mergekit' not in sys.modules"
    )


def test_mergekit_knows_expo_without_importing_the_package():
    python(
        "from mergekit import merge_methods\n"
        "m = merge_methods.get('expo')\n"
        "assert m.spec.reference_url == 'https://arxiv.org/abs/2404.16792'\n"
        "assert m.spec.uses_accelerator  # --cuda/--device move the arithmetic"
    )


@pytest.mark.parametrize(
    "first",
    ["import mergekit_expo.method", "import mergekit_expo.api", "import mergekit.merge"],
)
def test_registration_is_idempotent_whatever_is_imported_first(first):
    python(
        f"{first}\nimport mergekit_expo\nfrom mergekit import merge_methods\n"
        "names = [m.spec.name for m in merge_methods.registered_methods()]\n"
        "assert names.count('expo') == 1, names"
    )


def test_spawned_worker_processes_know_expo(tmp_path):
    script = tmp_path / "spawn_probe.py"
    script.write_text(
        "import multiprocessing as mp\n"
        "def probe(_):\n"
        "    from mergekit import merge_methods\n"
        "    return merge_methods.get('expo').spec.name\n"
        "if __name__ == '__main__':\n"
        "    with mp.get_context('spawn').Pool(1) as pool:\n"
        "        assert pool.map(probe, [0]) == ['expo']\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], env=cli_env(), capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
