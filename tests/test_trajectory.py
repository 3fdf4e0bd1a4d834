"""expo_trajectory through real `mergekit-yaml` runs (mergekit 0.1.5): every element against
numpy's least squares rounded once; with two points it is expo, byte for byte; mergekit's
recipes (slices, filters, gradients, mergekit-multi)."""

import os
from pathlib import Path

import pytest
import torch

from conftest import DTYPES, expo_config, load_folder, run_cli, run_points, trajectory_config, write_yaml
from fp64_reference import trajectory_reference

STEPS = (100, 200, 300, 400, 500)


def assert_fit_of(out, points, steps, alpha_for, window=None):
    """Every element of every tensor equals the least-squares fit rounded once."""
    assert set(out) == set(points[-1])
    decided_exactly = 0
    for name, tensor in out.items():
        want, undecided = trajectory_reference([p[name] for p in points], (0, *steps), alpha_for(name),
                                               tensor.dtype, window)
        decided_exactly += undecided
        same = tensor.view(-1).view(torch.int8) == want.view(-1).view(torch.int8)
        assert bool(same.all()), (name, int((~same).sum()))
    return decided_exactly


@pytest.mark.parametrize("dtype,alpha,window", [
    ("bfloat16", 0.5, None),
    ("float16", 0.3, 3),  # a decimal α, the fit through the last three checkpoints only
    ("float32", 1.25, None),
])
def test_fit_equals_numpy_least_squares_rounded_once(tmp_path, run_factory, dtype, alpha, window):
    sft, checkpoints = run_factory(dtype=DTYPES[dtype])
    config = trajectory_config(sft, checkpoints, alpha, window=window, dtype=dtype)
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    out = load_folder(tmp_path / "out")
    assert {t.dtype for t in out.values()} == {DTYPES[dtype]}
    ties = assert_fit_of(out, run_points(sft, checkpoints), STEPS, lambda name: alpha, window)
    if dtype == "bfloat16":
        assert ties > 0  # exact ties of the fit occur, and land on the right side


def test_steps_written_for_folders_that_state_none(tmp_path, run_factory):
    # Irregular steps, no trainer_state.json, folders named otherwise: the written step: counts.
    import shutil

    steps = (37, 150, 410, 1000)
    sft, checkpoints = run_factory(steps=steps, trainer_state=False)
    renamed = [Path(shutil.copytree(folder, tmp_path / f"save-{i}")) for i, folder in enumerate(checkpoints)]
    config = trajectory_config(sft, renamed, 0.7, steps=steps)
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    assert_fit_of(load_folder(tmp_path / "out"), run_points(sft, checkpoints), steps, lambda name: 0.7)


@pytest.mark.parametrize("large", [False, True], ids=["small", "fused-bf16"])
def test_two_points_are_expo_byte_for_byte(tmp_path, run_factory, large):
    from mergekit_expo.numerics import _FUSED_MIN_ELEMENTS

    shape = dict(hidden_size=256, intermediate_size=16384, num_layers=1) if large else {}
    sft, (checkpoint,) = run_factory(steps=(700,), **shape)
    alpha = 0.5 + 2.0 ** -20  # false ties through fp32 on many elements
    expo = write_yaml(tmp_path / "expo.yml", expo_config(sft, checkpoint, alpha))
    trajectory = write_yaml(tmp_path / "t.yml", trajectory_config(sft, [checkpoint], alpha))
    run_cli("mergekit-yaml", expo, tmp_path / "expo")
    run_cli("mergekit-yaml", trajectory, tmp_path / "trajectory")
    weights = sorted(p.name for p in (tmp_path / "expo").glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in (tmp_path / "trajectory").glob("*.safetensors"))
    for name in weights:
        assert (tmp_path / "expo" / name).read_bytes() == (tmp_path / "trajectory" / name).read_bytes()
    if large:
        assert max(t.numel() for t in load_folder(tmp_path / "expo").values()) >= _FUSED_MIN_ELEMENTS


def test_gradient_and_filter(tmp_path, run_factory):
    # α per layer (a gradient list) and per tensor (a filter), as mergekit resolves them.
    sft, checkpoints = run_factory()
    config = trajectory_config(sft, checkpoints, [{"filter": "embed_tokens", "value": 0.0},
                                                  {"value": [0.1, 0.5]}])
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")

    def alpha_for(name):  # 2 layers: t = layer; tensors outside the stack take t = 0
        if "embed_tokens" in name:
            return 0.0
        return 0.5 if ".layers.1." in name else 0.1

    assert_fit_of(load_folder(tmp_path / "out"), run_points(sft, checkpoints), STEPS, alpha_for)


def test_slices_take_their_own_alpha(tmp_path, run_factory):
    sft, checkpoints = run_factory()
    slices = [{"sources": [{"model": str(c), "layer_range": [i, i + 1]} for c in [sft, *checkpoints]],
               "parameters": {"alpha": alpha}} for i, alpha in enumerate((0.2, 0.6))]
    config = {"merge_method": "expo_trajectory", "base_model": str(sft), "slices": slices}
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")

    def alpha_for(name):  # embeddings follow the first slice, norm and lm_head the last
        if ".layers." in name:
            return 0.2 if ".layers.0." in name else 0.6
        return 0.2 if "embed_tokens" in name else 0.6

    assert_fit_of(load_folder(tmp_path / "out"), run_points(sft, checkpoints), STEPS, alpha_for)


def test_a_mergekit_multi_stage(tmp_path, run_factory, pair_factory):
    sft, checkpoints = run_factory()
    _, other = pair_factory(seed=7)
    stage = dict(trajectory_config(sft, checkpoints, 0.4), name="trajectory-stage")
    final = {"merge_method": "linear", "dtype": "bfloat16",
             "models": [{"model": "trajectory-stage", "parameters": {"weight": 0.7}},
                        {"model": str(other), "parameters": {"weight": 0.3}}]}
    config = write_yaml(tmp_path / "multi.yml", [stage, final])
    run_cli("mergekit-multi", config, "--intermediate-dir", tmp_path / "stages", "--out-path",
            tmp_path / "out", cwd=tmp_path, process=True)
    fitted = load_folder(tmp_path / "stages" / "trajectory-stage")
    assert_fit_of(fitted, run_points(sft, checkpoints), STEPS, lambda name: 0.4)
    others, out = load_folder(other), load_folder(tmp_path / "out")
    for name, tensor in out.items():
        want = 0.7 * fitted[name].double() + 0.3 * others[name].double()
        assert torch.allclose(tensor.double(), want, rtol=2**-7, atol=1e-6), name


def test_the_host_free_coefficients_give_the_merge(run_factory, tmp_path):
    # What a caller that sets weights itself uses: θ(α) = Σ (p_i + α·q_i)·θ_i; and the affine
    # parts, computed once, give the merge's bits at every α.
    from mergekit_expo.trajectory import fit_coefficients
    from mergekit_expo.trajectory.numerics import affine_parts, evaluate

    sft, checkpoints = run_factory()
    config = trajectory_config(sft, checkpoints, 0.3, window=4)
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    out, points = load_folder(tmp_path / "out"), run_points(sft, checkpoints)
    fit = fit_coefficients((0, *STEPS), window=4)
    assert fit.p[:2] == (0, 0) and sum(fit.p) == 1 and sum(fit.q) == 0
    name = "model.layers.0.mlp.down_proj.weight"
    tensors = [p[name] for p in points]
    approx = sum(c * t.double() for c, t in zip(fit.coefficients(0.3), tensors))
    assert torch.allclose(approx, out[name].double(), rtol=2**-7, atol=0)
    parts = affine_parts(tensors, fit)
    assert torch.equal(evaluate(parts, 0.3).view(torch.int16), out[name].view(torch.int16))
    assert not os.environ.get("PYTHONPATH")  # the installed package is what ran


@pytest.mark.slow
def test_large_bf16_tensors_take_the_fused_pass_with_the_references_bits(tmp_path, run_factory):
    from mergekit_expo.numerics import _FUSED_MIN_ELEMENTS

    steps = (37, 150, 410)  # irregular: fewer exact ties for the slow exact reference to decide
    sft, checkpoints = run_factory(steps=steps, hidden_size=256, intermediate_size=16384, num_layers=1)
    config = trajectory_config(sft, checkpoints, 0.5)
    run_cli("mergekit-yaml", write_yaml(tmp_path / "c.yml", config), tmp_path / "out")
    out = load_folder(tmp_path / "out")
    assert max(t.numel() for t in out.values()) >= _FUSED_MIN_ELEMENTS
    assert_fit_of(out, run_points(sft, checkpoints), steps, lambda name: 0.5)
