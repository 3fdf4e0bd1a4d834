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


def test_regular_wheel_ships_the_start_up_hook(tmp_path):
    import zipfile

    from conftest import REPO

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, env=cli_env())
    (wheel,) = tmp_path.glob("mergekit_expo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "mergekit_expo.pth" in names  # at the root: installs into site-packages
        assert archive.read("mergekit_expo.pth") == (REPO / "mergekit_expo.pth").read_bytes()
        assert "mergekit_expo/_autoregister.py" in names
    # A site directory holding the unpacked wheel runs the hook like site-packages would.
    site_dir = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site_dir)
    result = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys, site; sys.path[:] = [p for p in sys.path if 'site-packages' not in p];"
         f"site.addsitedir({str(site_dir)!r});"
         "m = sys.modules.get('mergekit_expo'); assert m is not None, 'hook did not run';"
         f"assert m.__file__.startswith({str(site_dir)!r}), m.__file__;"
         "assert 'torch' not in sys.modules"],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
