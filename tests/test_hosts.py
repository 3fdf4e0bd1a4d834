"""The other merge hosts: mergekit 0.1.4 and mergekitty, each in its own venv built by
`scripts/setup.sh --hosts`, where tests/with_hosts runs (started here, in --full); and,
here, what a mergekit whose API moved gets: one line naming the missing piece."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import tomllib

from conftest import BIN, REPO, cli_env, expo_config, write_yaml

SUITES = {  # venv, PYTHONPATH (a second host), test files and options
    "mergekit-0.1.4": (".venv-mergekit014", None,
                       ["test_host_configs.py", "test_commands_any_host.py", "test_commands_mergekit014.py"]),
    "mergekitty": (".venv-mergekitty", None,
                   ["test_host_configs.py", "test_commands_any_host.py", "test_commands_mergekitty.py"]),
    # Both hosts in one process; the configs again for mergekit 0.1.5 (mergekitty's ran above).
    "mergekit-0.1.5+mergekitty": (".venv-mergekitty", ".venv-mergekitty/with-mergekit",
                                  ["test_mixed.py", "test_host_configs.py", "-k", "test_mixed or mergekit-0"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("suite", list(SUITES))
def test_host_suite_passes_in_its_venv(suite):
    venv, pythonpath, files = SUITES[suite]
    python = REPO / venv / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must build {venv}: run bash scripts/setup.sh --hosts")
        pytest.skip(f"no {venv}: run bash scripts/setup.sh --hosts to test the other hosts")
    env = cli_env()
    if pythonpath:
        env["PYTHONPATH"] = str(REPO / pythonpath)
    paths = [f"tests/with_hosts/{name}" if name.endswith(".py") else name for name in files]
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-o", "addopts=", *paths],  # one process there: no xdist in that venv
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    sys.stdout.write(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary


def test_extras_state_the_ranges_the_hosts_module_supports():
    from mergekit_expo.hosts import SUPPORTED

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {host: extras[host] for host in SUPPORTED} == {
        host: [f"{host}{spec}"] for host, spec in SUPPORTED.items()}
    # Installing the package never replaces the host a user has.
    assert not [d for d in project["dependencies"] if d.startswith(("mergekit", "mergekitty"))]


def test_the_cli_loads_no_host_until_a_merge_needs_one():
    # What lets `mergekit-expo lora` and `search` run beside mergekitty alone.
    code = ("import sys, mergekit_expo.cli\n"
            "assert not {'mergekit', 'mergekitty'} & set(sys.modules), 'a host was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def moved_api(tmp_path_factory):
    """A real mergekit whose next release renamed a class expo builds on: this venv's
    mergekit 0.1.5, with FunctionalGroupMergeMethod renamed throughout, as 0.1.6."""
    import mergekit

    root = tmp_path_factory.mktemp("mergekit-0.1.6")
    package = root / "mergekit"
    shutil.copytree(os.path.dirname(mergekit.__file__), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    renamed = 0
    for module in package.rglob("*.py"):
        text = module.read_text()
        if "FunctionalGroupMergeMethod" in text:
            module.write_text(text.replace("FunctionalGroupMergeMethod", "KernelGroupMergeMethod"))
            renamed += 1
    assert renamed >= 2  # defined in one module, used in another: mergekit itself still imports
    info = root / "mergekit-0.1.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mergekit\nVersion: 0.1.6\n")
    return root


MOVED = ("expo is not available in mergekit 0.1.6 (cannot import name 'FunctionalGroupMergeMethod' "
         "from 'mergekit.merge_methods.base'): mergekit-expo supports mergekit>=0.1.4,<0.2 and "
         "mergekitty>=0.3,<0.4")


def test_host_cli_says_once_why_expo_is_missing(tmp_path, llama_pair, moved_api):
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    result = subprocess.run([str(BIN / "mergekit-yaml"), str(config), str(tmp_path / "out")],
                            env=dict(cli_env(), PYTHONPATH=str(moved_api)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if "expo is not available" in line]
    assert len(said) == 1 and said[0].startswith(f"mergekit-expo: {MOVED}"), result.stderr
    # ...and nothing at all while no host is imported: start-up stays silent.
    quiet = subprocess.run([sys.executable, "-c", "import mergekit_expo"], capture_output=True,
                           text=True, env=dict(cli_env(), PYTHONPATH=str(moved_api)))
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.slow
def test_mergekit_expo_run_makes_it_its_error_line(tmp_path, llama_pair, moved_api):
    config = write_yaml(tmp_path / "c.yml", expo_config(*llama_pair))
    result = subprocess.run([str(BIN / "mergekit-expo"), "run", str(config), str(tmp_path / "out")],
                            env=dict(cli_env(), PYTHONPATH=str(moved_api)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: {MOVED}; install one of those (pip install "
                                                  "'mergekit>=0.1.4,<0.2') or a mergekit-expo release "
                                                  "that supports mergekit 0.1.6"], result.stderr
    assert not (tmp_path / "out").exists()


def test_a_later_mergekit_that_keeps_the_api_just_works(tmp_path_factory):
    # The extra allows mergekit<0.2, and registration follows the API, not the version.
    import mergekit

    root = tmp_path_factory.mktemp("mergekit-0.1.9")
    shutil.copytree(os.path.dirname(mergekit.__file__), root / "mergekit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "mergekit-0.1.9.dist-info").mkdir()
    (root / "mergekit-0.1.9.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mergekit\nVersion: 0.1.9\n")
    code = ("from importlib.metadata import version\n"
            "from mergekit.merge_methods import get\n"
            "assert version('mergekit') == '0.1.9' and get('expo').spec.name == 'expo'\n")
    result = subprocess.run([sys.executable, "-c", code], env=dict(cli_env(), PYTHONPATH=str(root)),
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
