"""mergekit_expo.extrapolate on state dicts and modules."""

import pytest
import torch

import mergekit_expo
from fp64_reference import expo_fp64, fidelity


def small_model(seed, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32))
    model.register_buffer("steps", torch.tensor([3, 4]))
    return model.to(dtype)


def test_modules_and_state_dicts_give_the_fp64_result():
    sft, aligned = small_model(0), small_model(1)
    from_modules = mergekit_expo.extrapolate(sft, aligned, alpha=0.3)
    from_dicts = mergekit_expo.extrapolate(sft.state_dict(), aligned.state_dict(), 0.3)
    s, a = sft.state_dict(), aligned.state_dict()
    for name in a:
        assert torch.equal(from_modules[name], from_dicts[name])
        if a[name].is_floating_point():
            assert torch.equal(from_modules[name], expo_fp64(s[name], a[name], 0.3).float())
        else:
            assert torch.equal(from_modules[name], a[name])  # agreed buffers are copied
    assert not any(t.requires_grad for t in from_modules.values())


def test_bf16_state_dicts_meet_the_rounding_rule():
    sft, aligned = small_model(0, torch.bfloat16), small_model(1, torch.bfloat16)
    out = mergekit_expo.extrapolate(sft, aligned, alpha=0.37)
    for name, tensor in out.items():
        if tensor.is_floating_point():
            equal, worst = fidelity(tensor, sft.state_dict()[name], aligned.state_dict()[name], 0.37)
            assert equal == 1.0 and worst <= 1.0


def test_result_loads_back_into_the_module():
    sft, aligned = small_model(0), small_model(1)
    aligned.load_state_dict(mergekit_expo.extrapolate(sft, aligned, alpha=0.5))


def test_shape_mismatch_names_the_tensor_and_both_shapes():
    sft = {"w": torch.zeros(3, 4)}
    aligned = {"w": torch.zeros(5, 4)}
    with pytest.raises(mergekit_expo.ExpoInputError, match=r"w has shape \(3, 4\).*\(5, 4\)"):
        mergekit_expo.extrapolate(sft, aligned)


def test_missing_tensor_is_named():
    with pytest.raises(mergekit_expo.ExpoInputError, match="tensor b exists only in the aligned"):
        mergekit_expo.extrapolate({"a": torch.zeros(2)}, {"a": torch.zeros(2), "b": torch.zeros(2)})


def test_integer_tensors_that_differ_are_an_expo_error():
    sft = {"w": torch.zeros(2), "step": torch.tensor([1, 2, 3])}
    with pytest.raises(mergekit_expo.ExpoInputError, match="step is int64, not floating point, and differs"):
        mergekit_expo.extrapolate(sft, {"w": torch.ones(2), "step": torch.tensor([1, 2, 4])})
    with pytest.raises(mergekit_expo.ExpoInputError, match="step is int64 in the SFT model and float32"):
        mergekit_expo.extrapolate(sft, {"w": torch.ones(2), "step": torch.tensor([1.0, 2.0, 3.0])})
    # Equal ones are copied, as mergekit does.
    merged = mergekit_expo.extrapolate(sft, {"w": torch.ones(2), "step": torch.tensor([1, 2, 3])})
    assert torch.equal(merged["step"], torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), "strong", None])
def test_bad_alpha(alpha):
    with pytest.raises(mergekit_expo.ExpoConfigError, match="alpha must be"):
        mergekit_expo.extrapolate({"a": torch.zeros(2)}, {"a": torch.ones(2)}, alpha=alpha)


def test_fp16_overflow_names_the_tensor_and_the_fix():
    sft = {"big": torch.full((4,), -60000.0, dtype=torch.float16)}
    aligned = {"big": torch.full((4,), 60000.0, dtype=torch.float16)}
    with pytest.raises(mergekit_expo.ExpoNumericsError, match="big overflows float16.*bfloat16"):
        mergekit_expo.extrapolate(sft, aligned, alpha=0.5)


def test_nan_in_an_input_names_the_input_and_tensor():
    sft = {"w": torch.tensor([1.0, float("nan")])}
    with pytest.raises(mergekit_expo.ExpoNumericsError, match="w in the SFT state dict already holds 1 NaN"):
        mergekit_expo.extrapolate(sft, {"w": torch.ones(2)}, alpha=0.3)


def test_large_alpha_warns(caplog, monkeypatch):
    from mergekit_expo import alpha

    # warned once per process: start from a process that has not warned yet
    monkeypatch.setattr(alpha, "_warned_large", set())
    mergekit_expo.extrapolate({"a": torch.zeros(2)}, {"a": torch.ones(2)}, alpha=2.5)
    assert "alpha=2.5 is very large" in caplog.text


def test_a_search_grid_warns_once_for_all_its_large_alphas(caplog, monkeypatch):
    from mergekit_expo import alpha
    from mergekit_expo.search.settings import SearchSettings

    monkeypatch.setattr(alpha, "_warned_large", set())
    settings = SearchSettings(alphas="0.5,2.5,3,4", given=frozenset({"alphas"}))
    assert settings.grid == [0.5, 2.5, 3.0, 4.0] and settings.grid  # asked again: no new line
    warned = [r.getMessage() for r in caplog.records if "very large" in r.getMessage()]
    assert warned == ["alpha=2.5, 3, 4 are very large: past a model-specific point the extrapolated model "
                      "degrades sharply"]
    # the merges the search then plans at those α say nothing more
    mergekit_expo.extrapolate({"a": torch.zeros(2)}, {"a": torch.ones(2)}, alpha=3.0)
    assert len([r for r in caplog.records if "very large" in r.getMessage()]) == 1
