"""Shared fixtures: tiny generated checkpoint pairs and helpers to run the real CLIs."""

import os

# Tests never reach the Hub; in-process commands read this when huggingface_hub is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergekit_expo.synthetic import PairSpec, write_pair

# tests/with_vllm runs in .venv-vllm (vLLM caps transformers): see test_vllm_venv.py.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["with_vllm"]
# tests/with_hosts runs in the venvs of the other merge hosts: see test_hosts.py.
HOST_VENVS = (".venv-mergekit014", ".venv-mergekitty")
if Path(sys.prefix).name not in HOST_VENVS:
    collect_ignore.append("with_hosts")


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the long end-to-end tests (marked slow): what CI runs")


def pytest_collection_modifyitems(config, items):
    # Fast by default, slow by choice: plain `pytest` skips the long end-to-end runs.
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="long end-to-end run: pass --full to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def cli_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the installed package must be what runs
    return env


def run_cli(*args, cwd=None, check=True, timeout=600, env=None):
    """Run an installed console script (mergekit-yaml, mergekit-expo, ...) in a subprocess."""
    command = [str(BIN / args[0]), *map(str, args[1:])]
    result = subprocess.run(
        command, cwd=cwd, env=dict(cli_env(), **(env or {})), capture_output=True, text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n{result.stderr[-4000:]}"
        )
    return result


def invoke(*args, cwd):
    """Run ``mergekit-expo ARGS`` in this process, in ``cwd`` (click's CliRunner): the same
    command and exit code as the console script, without its ~4 s of imports. Returns what
    :func:`run_cli` does."""
    from click.testing import CliRunner

    from mergekit_expo.cli import main

    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(previous)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"\nuncaught {type(result.exception).__name__}: {result.exception}"
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def snapshot(root) -> dict:
    """Every path under root (links not followed) with its content hash."""
    state = {}
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                state[key] = "link:" + os.readlink(path)
            elif path.is_file():
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[key] = "dir"
    return state


def load_folder(path) -> dict:
    """All tensors of a safetensors checkpoint folder (sharded or not)."""
    path = Path(path)
    tensors = {}
    for shard in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(shard))
    assert tensors, f"no safetensors in {path}"
    return tensors


def write_yaml(path, documents):
    path = Path(path)
    if isinstance(documents, list):
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    else:
        path.write_text(yaml.safe_dump(documents, sort_keys=False))
    return path


def expo_config(sft, aligned, alpha=0.3, **extra):
    config = {
        "merge_method": "expo",
        "base_model": str(sft),
        "models": [{"model": str(aligned), "parameters": {"alpha": alpha}}],
    }
    config.update(extra)
    return config


def merges_of(pair, tmp_path_factory):
    """merge(alpha) -> folder: the `mergekit-yaml` output of ``pair`` at α, made once per α."""
    cache = {}

    def merge(alpha):
        if alpha not in cache:
            folder = tmp_path_factory.mktemp("merged")
            run_cli("mergekit-yaml", write_yaml(folder / "c.yml", expo_config(*pair, alpha)), folder / "out")
            cache[alpha] = folder / "out"
        return cache[alpha]

    return merge


def hub_cache(root, models):
    """A Hugging Face cache laid out by hand: models--org--name/{refs/main, snapshots/<sha>}."""
    for repo, folder in models.items():
        sha = f"{abs(hash(repo)):040d}"[:40]
        entry = root / f"models--{repo.replace('/', '--')}"
        shutil.copytree(folder, entry / "snapshots" / sha)
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text(sha)
    return root


def shard_index(path):
    return json.loads((Path(path) / "model.safetensors.index.json").read_text())


def make_adapter(sft_dir, out, **lora_options):
    import peft
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    options = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                   init_lora_weights=False)
    options.update(lora_options)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**options))
    with torch.no_grad():  # make modules_to_save weights differ from the base, as training would
        for name, parameter in peft_model.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(0.01 * torch.randn_like(parameter))
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pair_factory(tmp_path_factory):
    """make(**PairSpec fields) -> (sft_dir, aligned_dir), cached per spec."""
    cache = {}

    def make(**fields):
        spec = PairSpec(**fields)
        if spec not in cache:
            root = tmp_path_factory.mktemp(f"pair-{spec.family}")
            cache[spec] = tuple(Path(p) for p in write_pair(str(root), spec))
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def llama_pair(pair_factory):
    return pair_factory()


@pytest.fixture
def models_dir(tmp_path, pair_factory):
    """A working folder holding ./models/{sft,aligned,other}, as configs/ expect."""
    sft, aligned = pair_factory()
    _, other = pair_factory(seed=7)
    models = tmp_path / "models"
    models.mkdir()
    for name, source in (("sft", sft), ("aligned", aligned), ("other", other)):
        (models / name).symlink_to(source, target_is_directory=True)
    return tmp_path
