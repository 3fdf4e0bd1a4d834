"""The merge hosts this venv has, and how to run their CLIs (imported by tests/with_hosts).

The host venvs come from `scripts/setup.sh --hosts`; tests/test_hosts.py starts this
suite in each. A second host can be put on PYTHONPATH (mergekit 0.1.5 beside
mergekitty), and its console scripts then live in that folder's bin/.
"""

import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from conftest import BIN, cli_env, run_cli


@dataclass(frozen=True)
class Host:
    name: str
    yaml_cli: str
    multi_cli: str
    # Under a gradient, mergekit gives tensors outside the layer stack t = 0 (the first
    # value); mergekitty gives the final norm and lm_head t = 1 (the last value).
    post_weights_take_last: bool

    @property
    def version(self) -> str:
        return version(self.name)

    @property
    def reads_numeric_strings(self) -> bool:
        """mergekit 0.1.5 reads parameter strings (YAML's "1e-1"); earlier configs refuse them."""
        return self.name == "mergekit" and tuple(map(int, self.version.split(".")[:3])) >= (0, 1, 5)

    def __str__(self) -> str:
        return f"{self.name}-{self.version}"


HOSTS = (
    Host("mergekit", "mergekit-yaml", "mergekit-multi", post_weights_take_last=False),
    Host("mergekitty", "mergekitty-yaml", "mergekitty-mega", post_weights_take_last=True),
)
PRESENT = [host for host in HOSTS if importlib.util.find_spec(host.name)]


def run_host(*args, cwd=None, check=True, timeout=600, process=False):
    """Run a console script (host CLI or mergekit-expo) of this venv or of PYTHONPATH: in
    this process unless ``process`` (see conftest.run_cli)."""
    if not process:
        return run_cli(*args, cwd=cwd, check=check, timeout=timeout)
    env = cli_env()
    extra = os.environ.get("PYTHONPATH")  # set by the launcher for a second host only
    folders = [BIN]
    if extra:
        env["PYTHONPATH"] = extra
        folders += [Path(p) / "bin" for p in extra.split(os.pathsep) if p]
    script = next((f / args[0] for f in folders if (f / args[0]).exists()), None)
    assert script is not None, f"{args[0]} is not installed here"
    result = subprocess.run([str(script), *map(str, args[1:])], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} exited {result.returncode}\n{result.stderr[-4000:]}")
    return result


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


LAYER = re.compile(r"layers\.(\d+)\.")


def layer_of(name):
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def gradient_alpha(values, name, num_layers, host: Host) -> float:
    """α of tensor ``name`` under ``alpha: values``, as the hosts document gradients:
    t = layer / (layers − 1), linear between neighbouring list entries."""
    layer = layer_of(name)
    if layer is None:
        post = "embed_tokens" not in name
        t = 1.0 if post and host.post_weights_take_last else 0.0
    else:
        t = layer / (num_layers - 1)
    scaled = t * (len(values) - 1)
    low = int(scaled)
    high = min(len(values) - 1, low + 1)
    frac = scaled - low
    return (1 - frac) * values[low] + frac * values[high]
