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

from mergekit_expo.synthetic import PairSpec, write_checkpoints, write_pair

# tests/with_vllm runs in .venv-vllm (vLLM caps transformers): see test_vllm_venv.py.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["with_vllm"]
# tests/with_hosts runs in the venvs of the other merge hosts: see test_hosts.py.
HOST_VENVS = (".venv-mergekit014", ".venv-mergekitty")
if Path(sys.prefix).name not in HOST_VENVS:
    collect_ignore.append("with_hosts")


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the long end-to-end tests (marked slow): what CI runs")


# Suites that run for minutes in a venv of their own: started first, so that the other
# test process works through everything else meanwhile.
LONGEST_FIRST = ("tests/test_vllm_venv.py", "tests/test_hosts.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable
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


# Console scripts a test may run in this process: the same click command the script
# calls (mergekit-expo's script, mergekit_expo.console, runs this group inside its handling
# of signals), without ~4 s of imports per call. Process-level behaviour (the .pth start-up
# hook, signals, a console script's exit status) is tested with process=True.
IN_PROCESS = {
    "mergekit-expo": "mergekit_expo.cli:main",
    "mergekit-yaml": "mergekit.scripts.run_yaml:main",
    "mergekit-multi": "mergekit.scripts.multimerge:main",
    "mergekitty-yaml": "mergekitty.scripts.run_yaml:main",
    "mergekitty-mega": "mergekitty.scripts.megamerge:main",
}


def run_cli(*args, cwd=None, check=True, timeout=600, env=None, process=False):
    """Run a console script (mergekit-yaml, mergekit-expo, ...): in this process through
    click's CliRunner, or with ``process=True`` (or a script not in IN_PROCESS) as the
    installed script in a subprocess. Returns a CompletedProcess either way."""
    if process or args[0] not in IN_PROCESS:
        command = [str(BIN / args[0]), *map(str, args[1:])]
        result = subprocess.run(
            command, cwd=cwd, env=dict(cli_env(), **(env or {})), capture_output=True, text=True,
            timeout=timeout,
        )
    else:
        result = _run_in_process(args, cwd=cwd, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {result.returncode}\n{result.stderr[-4000:]}"
        )
    return result


def _run_in_process(args, *, cwd=None, env=None):
    import importlib
    import io
    import logging
    import traceback

    from click.testing import CliRunner

    module, _, name = IN_PROCESS[args[0]].partition(":")
    command = getattr(importlib.import_module(module), name)
    forget_warnings()
    log = io.StringIO()  # what a fresh process would print through logging's stderr handler
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(command, [str(a) for a in args[1:]], prog_name=args[0],
                                    env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})})
    finally:
        os.chdir(previous)
        root.removeHandler(handler)
        if cwd is not None:
            _forget_modules_from(Path(cwd).resolve())
    stderr = log.getvalue() + result.stderr
    error = result.exception
    if error is not None and not isinstance(error, SystemExit):
        # As the interpreter would print it when the script let it escape.
        stderr += "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, stderr)


def _forget_modules_from(folder: Path) -> None:
    """A user's module:function scorer is imported from the working folder; the next
    command, like a fresh process, must import its own."""
    if REPO.is_relative_to(folder) or Path(sys.prefix).resolve().is_relative_to(folder):
        return  # a working folder above the package's own code
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            del sys.modules[name]
    sys.path[:] = [entry for entry in sys.path if entry != str(folder) and entry != os.fspath(folder)]


def forget_warnings():
    """What a process keeps between merges, which a fresh process would not have: our
    once-per-process warnings, and mergekit's caches keyed by model path (a relative
    ./models/sft names another folder in the next test's working folder)."""
    from mergekit_expo import alpha, contract

    for host in ("mergekit", "mergekitty"):  # whichever hosts this process has loaded
        loaders = getattr(getattr(sys.modules.get(f"{host}.io.tasks"), "LoaderCache", None), "loaders", None)
        if loaders is not None:
            loaders.clear()
        infer = getattr(sys.modules.get(f"{host}.architecture.auto"), "infer_architecture_info", None)
        if infer is not None and hasattr(infer, "cache_clear"):
            infer.cache_clear()

    alpha._warned_large.clear()
    contract.warn_same_checkpoint.cache_clear()
    contract.same_files.cache_clear()
    trajectory = sys.modules.get("mergekit_expo.trajectory.contract")
    if trajectory is not None:  # keyed by model paths, relative ones included
        trajectory.planned_fit.cache_clear()
        trajectory.same_network.cache_clear()
    self_check = sys.modules.get("mergekit_expo.search.self_check")
    if self_check is not None:
        self_check.warn_if_untested.cache_clear()


def invoke(*args, cwd):
    """Run ``mergekit-expo ARGS`` in this process, in ``cwd``: the same command and exit
    code as the console script, without its ~4 s of imports."""
    return run_cli("mergekit-expo", *args, cwd=cwd, check=False)


def poison(folder, tensor_name, value):
    """Put ``value`` (a NaN, say) into one element of a single-file checkpoint."""
    from safetensors.torch import load_file, save_file

    file = Path(folder) / "model.safetensors"
    tensors = load_file(file)
    tensors[tensor_name] = tensors[tensor_name].clone()
    tensors[tensor_name].view(-1)[3] = value
    save_file(tensors, file, metadata={"format": "pt"})


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
def run_factory(pair_factory, tmp_path_factory):
    """make(steps=..., trainer_state=True, **PairSpec fields) -> (sft_dir, [checkpoint dirs]):
    the pair of ``pair_factory`` and a run from its SFT to its aligned model (the last
    checkpoint), saved as ``checkpoint-N`` folders; cached per arguments."""
    cache = {}

    def make(steps=(100, 200, 300, 400, 500), trainer_state=True, **fields):
        key = (tuple(steps), trainer_state, PairSpec(**fields))
        if key not in cache:
            sft, aligned = pair_factory(**fields)
            root = tmp_path_factory.mktemp("run")
            cache[key] = sft, [Path(p) for p in write_checkpoints(
                str(sft), str(aligned), str(root), steps, trainer_state=trainer_state, seed=key[2].seed)]
        return cache[key]

    return make


def trajectory_config(sft, checkpoints, alpha=0.3, *, steps=None, window=None, **extra):
    """An expo_trajectory config: ``steps`` written as each checkpoint's step: when given."""
    models = [{"model": str(c)} if steps is None else {"model": str(c), "parameters": {"step": s}}
              for c, s in zip(checkpoints, steps or checkpoints)]
    parameters = {"alpha": alpha} if window is None else {"alpha": alpha, "window": window}
    config = {"merge_method": "expo_trajectory", "base_model": str(sft), "models": models,
              "parameters": parameters}
    config.update(extra)
    return config


def run_points(sft, checkpoints) -> list:
    """Every tensor of the SFT model and of each checkpoint, in step order: [{name: tensor}]."""
    return [load_folder(sft), *(load_folder(c) for c in checkpoints)]


@pytest.fixture(scope="session")
def llama_pair(pair_factory):
    return pair_factory()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server of this test process (stopped and removed at the end);
    ``postgres.database(name)`` gives a new database's URL."""
    from postgres_server import INSTALL, PostgresServer, server_binaries

    binaries = server_binaries()
    if binaries is None:
        pytest.fail(f"no PostgreSQL server on PATH or in /usr/lib/postgresql/*/bin: {INSTALL}", pytrace=False)
    server = PostgresServer(binaries)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def models_dir(tmp_path, pair_factory, run_factory):
    """A working folder holding ./models/{sft,aligned,other} and the run from sft to aligned,
    ./models/run/checkpoint-{100,...,500}, as configs/ expect."""
    sft, aligned = pair_factory()
    _, other = pair_factory(seed=7)
    _, checkpoints = run_factory()
    models = tmp_path / "models"
    models.mkdir()
    run = checkpoints[0].parent
    for name, source in (("sft", sft), ("aligned", aligned), ("other", other), ("run", run)):
        (models / name).symlink_to(source, target_is_directory=True)
    return tmp_path
