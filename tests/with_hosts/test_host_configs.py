"""Every YAML in configs/ through each host's own CLI, bit for bit against the fp64
reference; held-out architectures and dtypes with an α gradient; bad inputs; start-up
registration in a fresh interpreter; expo_trajectory's recipes and bad inputs. Runs in each
host venv (see tests/test_hosts.py)."""

import subprocess
import sys

import pytest
import torch
from host_table import PRESENT, error_lines, gradient_alpha, layer_of, run_host

from conftest import CONFIGS, cli_env, load_folder, run_points, trajectory_config, write_yaml
from fp64_reference import fidelity, trajectory_reference

assert PRESENT, "no merge host in this venv: build it with bash scripts/setup.sh --hosts"


@pytest.fixture(params=PRESENT, ids=str)
def host(request):
    return request.param


def assert_bit_exact(out, sft, aligned, alpha_for):
    """Every tensor equals the fp64 result rounded once (α = 0: the aligned tensor)."""
    assert set(out) == set(aligned)
    for name, tensor in out.items():
        alpha = alpha_for(name)
        if alpha == 0:
            assert torch.equal(tensor, aligned[name]), name
            continue
        equal, _ = fidelity(tensor, sft[name], aligned[name], alpha)
        assert equal == 1.0, (name, alpha, equal)


def keep_embeddings_alpha(name):
    return 0.0 if any(k in name for k in ("embed_tokens", "lm_head", "norm")) else 0.4


def slices_alpha(name):
    layer = layer_of(name)
    if layer is None:  # embeddings follow the first slice, norm and lm_head the last
        return 0.2 if "embed_tokens" in name else 0.5
    return 0.2 if layer == 0 else 0.5


EXPECTED_ALPHA = {  # config -> (host, tensor name) -> α; the tiny models have 2 layers
    "expo.yml": lambda host, name: 0.3,
    "expo-gradient.yml": lambda host, name: gradient_alpha([0.1, 0.5], name, 2, host),
    "expo-keep-embeddings.yml": lambda host, name: keep_embeddings_alpha(name),
    "expo-slices.yml": lambda host, name: slices_alpha(name),
}
MULTI = "expo-then-linear.multi.yml"
ADDED_TOKENS = "expo-added-tokens.yml"
STEPS = (100, 200, 300, 400, 500)  # ./models/run/checkpoint-N
TRAJECTORY = {  # config -> ((host, tensor name) -> α, window)
    "expo-trajectory.yml": (lambda host, name: 0.3, None),
    "expo-trajectory-window.yml": (lambda host, name: gradient_alpha([0.1, 0.5], name, 2, host), 3),
}


def test_every_config_has_a_test():
    assert {p.name for p in CONFIGS.glob("*.yml")} == {*EXPECTED_ALPHA, *TRAJECTORY, MULTI, ADDED_TOKENS}


def assert_fit_of(out, points, alpha_for, window=None, steps=STEPS):
    """Every element equals the least-squares fit (numpy's, exact at its ties) rounded once."""
    assert set(out) == set(points[-1])
    for name, tensor in out.items():
        want, _ = trajectory_reference([p[name] for p in points], (0, *steps), alpha_for(name),
                                       tensor.dtype, window)
        assert torch.equal(tensor.view(-1).view(torch.int8), want.view(-1).view(torch.int8)), name


@pytest.mark.parametrize("config", sorted(EXPECTED_ALPHA))
def test_config(host, models_dir, config):
    # The basic recipe through the host's installed console script (the start-up hook).
    run_host(host.yaml_cli, CONFIGS / config, models_dir / "out", cwd=models_dir, process=config == "expo.yml")
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    assert_bit_exact(load_folder(models_dir / "out"), sft, aligned,
                     lambda name: EXPECTED_ALPHA[config](host, name))


@pytest.mark.parametrize("config", sorted(TRAJECTORY))
def test_trajectory_config(host, models_dir, config):
    run_host(host.yaml_cli, CONFIGS / config, models_dir / "out", cwd=models_dir)
    points = run_points(models_dir / "models/sft", [models_dir / f"models/run/checkpoint-{s}" for s in STEPS])
    alpha_for, window = TRAJECTORY[config]
    assert_fit_of(load_folder(models_dir / "out"), points, lambda name: alpha_for(host, name), window)


def test_trajectory_slices_and_filter(host, tmp_path, run_factory):
    # Slices give each block of layers its α; a filter gives embed_tokens its own.
    sft, checkpoints = run_factory()
    alpha = [{"filter": "embed_tokens", "value": 0.0}, {"value": 0.4}]
    slices = [{"sources": [{"model": str(c), "layer_range": [i, i + 1]} for c in [sft, *checkpoints]],
               **({"parameters": {"alpha": 0.6}} if i else {})} for i in range(2)]
    config = {"merge_method": "expo_trajectory", "base_model": str(sft), "slices": slices,
              "parameters": {"alpha": alpha}}
    run_host(host.yaml_cli, write_yaml(tmp_path / "c.yml", config), tmp_path / "out")

    def alpha_for(name):  # the second slice's own α wins there; embeddings follow the first slice,
        if "embed_tokens" in name:  # norm and lm_head the last
            return 0.0
        return 0.4 if ".layers.0." in name else 0.6

    assert_fit_of(load_folder(tmp_path / "out"), run_points(sft, checkpoints), alpha_for)


def test_trajectory_multi_stage(host, tmp_path, run_factory, pair_factory):
    sft, checkpoints = run_factory()
    _, other = pair_factory(seed=7)
    stage = dict(trajectory_config(sft, checkpoints, 0.4, window=4), name="trajectory-stage")
    final = {"merge_method": "linear", "dtype": "bfloat16",
             "models": [{"model": "trajectory-stage", "parameters": {"weight": 0.7}},
                        {"model": str(other), "parameters": {"weight": 0.3}}]}
    config = write_yaml(tmp_path / "multi.yml", [stage, final])
    out = tmp_path / "out"
    if host.multi_cli == "mergekit-multi":
        run_host(host.multi_cli, config, "--intermediate-dir", out, "--out-path", out / "final", cwd=tmp_path)
    else:
        run_host(host.multi_cli, config, out, cwd=tmp_path)
    fitted = load_folder(out / "trajectory-stage")
    assert_fit_of(fitted, run_points(sft, checkpoints), lambda name: 0.4, window=4)


def test_trajectory_two_points_are_expo_bit_for_bit(host, tmp_path, run_factory):
    sft, (checkpoint,) = run_factory(steps=(700,))
    expo = {"merge_method": "expo", "base_model": str(sft),
            "models": [{"model": str(checkpoint), "parameters": {"alpha": 0.37}}]}
    run_host(host.yaml_cli, write_yaml(tmp_path / "e.yml", expo), tmp_path / "expo")
    run_host(host.yaml_cli, write_yaml(tmp_path / "t.yml", trajectory_config(sft, [checkpoint], 0.37)),
             tmp_path / "trajectory")
    expected, got = load_folder(tmp_path / "expo"), load_folder(tmp_path / "trajectory")
    assert set(expected) == set(got)
    assert all(torch.equal(got[k].view(torch.int16), expected[k].view(torch.int16)) for k in expected)


def sft_copy(tmp, sft):
    import shutil

    return shutil.copytree(sft, tmp / "sft-copy")


TRAJECTORY_BAD = {  # build(tmp, sft, checkpoints) -> config; the message's part
    "steps out of order": (lambda tmp, sft, ckpts: trajectory_config(sft, [ckpts[1], ckpts[0]]),
                           "steps must increase down models:"),
    "step 0": (lambda tmp, sft, ckpts: trajectory_config(sft, ckpts[:2], steps=[0, 200]),
               "step must be at least 1"),
    "window larger than the points": (lambda tmp, sft, ckpts: trajectory_config(sft, ckpts[:2], window=4),
                                      "window is 4, but there are only 3 points"),
    "no checkpoint": (lambda tmp, sft, ckpts: trajectory_config(sft, [sft]), "needs at least one checkpoint"),
    "a checkpoint is the SFT model": (
        lambda tmp, sft, ckpts: trajectory_config(sft, [sft_copy(tmp, sft), ckpts[1]], steps=[50, 200]),
        "holds the same weights as base_model"),
    "alpha is NaN": (lambda tmp, sft, ckpts: trajectory_config(sft, ckpts, float("nan")),
                     "alpha must be finite"),
}


@pytest.mark.parametrize("case", sorted(TRAJECTORY_BAD))
def test_trajectory_bad_input_is_our_one_line(host, tmp_path, run_factory, case):
    build, expected = TRAJECTORY_BAD[case]
    sft, checkpoints = run_factory()
    config = write_yaml(tmp_path / "c.yml", build(tmp_path, sft, checkpoints))
    result = run_host(host.yaml_cli, config, tmp_path / "out", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mergekit_expo.errors.ExpoConfigError") and expected in last, last
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_multi_stage_config(host, models_dir):
    # mergekit-multi writes stages to --intermediate-dir; mergekitty-mega writes every
    # named stage, and the final one under the config's name, into one folder.
    out = models_dir / "out"  # absolute: a relative "out/stage" reads like a Hub id
    if host.multi_cli == "mergekit-multi":
        run_host(host.multi_cli, CONFIGS / MULTI, "--intermediate-dir", out, "--out-path",
                 out / "final", cwd=models_dir)
    else:
        run_host(host.multi_cli, CONFIGS / MULTI, out, cwd=models_dir)
        (out / MULTI.removesuffix(".yml")).rename(out / "final")
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    stage = load_folder(out / "expo-stage")
    assert_bit_exact(stage, sft, aligned, lambda name: 0.3)
    other, final = load_folder(models_dir / "models/other"), load_folder(out / "final")
    for name, tensor in final.items():  # stage 2 is the host's linear, in bf16 on some hosts
        want = 0.7 * stage[name].double() + 0.3 * other[name].double()
        assert (tensor.double() - want).abs().max() <= 2**-6 * want.abs().max(), name
    if host.multi_cli == "mergekit-multi":  # the card names each stage's method as mergekit does
        run_host("mergekit-expo", "card", out / "final", "--multi-config", CONFIGS / MULTI, "--overwrite",
                 cwd=models_dir)
        assert "[Linear](https://arxiv.org/abs/2203.05482)" in (out / "final" / "README.md").read_text()


def test_added_tokens_config(host, tmp_path, pair_factory):
    sft_dir, aligned_dir = pair_factory(added_tokens=("<|im_start|>", "<|im_end|>"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models/sft").symlink_to(sft_dir, target_is_directory=True)
    (tmp_path / "models/aligned").symlink_to(aligned_dir, target_is_directory=True)
    run_host(host.yaml_cli, CONFIGS / ADDED_TOKENS, tmp_path / "out", cwd=tmp_path)
    out, sft, aligned = load_folder(tmp_path / "out"), load_folder(sft_dir), load_folder(aligned_dir)
    shared_rows = sft["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert out[name].shape == aligned[name].shape
        # Rows the SFT model lacks keep the aligned model's values exactly.
        assert torch.equal(out[name][shared_rows:], aligned[name][shared_rows:])
        equal, _ = fidelity(out[name][:shared_rows], sft[name], aligned[name][:shared_rows], 0.3)
        assert equal == 1.0, name
    rest = {k: v for k, v in out.items() if "embed" not in k and "lm_head" not in k}
    assert_bit_exact(rest, sft, {k: aligned[k] for k in rest}, lambda name: 0.3)


HELD_OUT = {  # architectures and dtypes the configs above do not use, with a gradient
    "qwen2-float16": (dict(family="qwen2", dtype=torch.float16, num_layers=4), "float16", [0.1, 0.5]),
    "mistral-float32": (dict(family="mistral", dtype=torch.float32, num_layers=5), "float32",
                        [0.2, 0.6, 0.3]),
}


@pytest.mark.parametrize("case", sorted(HELD_OUT))
def test_held_out_architecture_and_dtype_with_gradient(host, tmp_path, pair_factory, case):
    fields, dtype, gradient = HELD_OUT[case]
    sft_dir, aligned_dir = pair_factory(**fields)
    config = write_yaml(tmp_path / "c.yml", {
        "merge_method": "expo", "base_model": str(sft_dir),
        "models": [{"model": str(aligned_dir), "parameters": {"alpha": gradient}}],
        "dtype": dtype,
    })
    run_host(host.yaml_cli, config, tmp_path / "out")
    out, sft, aligned = load_folder(tmp_path / "out"), load_folder(sft_dir), load_folder(aligned_dir)
    assert {t.dtype for t in out.values()} == {fields["dtype"]}
    alphas = {gradient_alpha(gradient, name, fields["num_layers"], host) for name in out}
    assert len(alphas) > len(gradient)  # interpolated values, not just the listed ones
    assert_bit_exact(out, sft, aligned,
                     lambda name: gradient_alpha(gradient, name, fields["num_layers"], host))


BAD = {  # config builder -> the message the last line of the host's traceback carries
    "no base_model": (lambda sft, aligned: {"merge_method": "expo",
                                            "models": [{"model": aligned}]},
                      "expo needs base_model"),
    "two aligned models": (lambda sft, aligned: {"merge_method": "expo", "base_model": sft,
                                                 "models": [{"model": aligned}, {"model": aligned + "2"}]},
                           "exactly one aligned model"),
    "alpha is a word": (lambda sft, aligned: {"merge_method": "expo", "base_model": sft,
                                              "models": [{"model": aligned, "parameters": {"alpha": "strong"}}]},
                        "alpha must be a number, got 'strong'"),
    "alpha is NaN": (lambda sft, aligned: {"merge_method": "expo", "base_model": sft,
                                           "models": [{"model": aligned, "parameters": {"alpha": float("nan")}}]},
                     "alpha must be finite"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_our_one_line_before_anything_is_written(host, tmp_path, llama_pair, case):
    import shutil

    build, expected = BAD[case]
    sft, aligned = (str(p) for p in llama_pair)
    shutil.copytree(aligned, aligned + "2", dirs_exist_ok=True)
    config = write_yaml(tmp_path / "c.yml", build(sft, aligned))
    result = run_host(host.yaml_cli, config, tmp_path / "out", check=False)
    assert result.returncode != 0
    if case == "alpha is a word" and not host.reads_numeric_strings:
        # This host's own config takes numbers only: refused before expo sees it.
        assert "ValidationError" in result.stderr and "models.0.parameters.alpha" in result.stderr
    else:
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("mergekit_expo.errors.ExpoConfigError") and expected in last, last
    assert not list((tmp_path / "out").glob("*.safetensors"))
    assert error_lines(result) == []


def test_start_up_registers_expo_in_a_fresh_interpreter(host):
    code = (
        "import sys\n"
        "assert 'mergekit_expo' in sys.modules, 'start-up hook did not run'\n"
        "assert not {'torch', 'mergekit', 'mergekitty'} & set(sys.modules)\n"
        f"from {host.name}.merge_methods import get\n"
        "method = get('expo')\n"
        "spec = getattr(method, 'spec', None)\n"
        "name = spec.name if spec else method.name()\n"
        "url = spec.reference_url if spec else method.reference_url()\n"
        "assert (name, url) == ('expo', 'https://arxiv.org/abs/2404.16792'), (name, url)\n"
    )
    env = cli_env()
    import os

    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
