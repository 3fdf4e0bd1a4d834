"""`mergekit-expo search` on a run's checkpoints (expo_trajectory): the engine's in-place
weights are, bit for bit, what `--write-best` merges from best.yml and the fp64 least-squares
reference rounded once; raced and structured spaces; resuming and refusals; the card."""

import json
import random
import shutil

import pytest
import torch
import yaml

from conftest import hub_cache, invoke, load_folder, run_cli, run_points, snapshot, write_yaml
from fp64_reference import trajectory_reference

STEPS = (100, 200, 300, 400, 500)


@pytest.fixture(scope="module")
def run(run_factory):
    """The SFT model and five checkpoints (checkpoint-100 ... -500, with trainer_state.json)."""
    return run_factory()


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(60)}" for _ in range(n))  # noqa: E731
    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": words(5), "chosen": words(4), "rejected": words(4)}) + "\n"
                            for _ in range(40)))
    return path


def bits(tensor):
    return tensor.contiguous().view(-1).view({1: torch.int8, 2: torch.int16, 4: torch.int32}[tensor.element_size()])


def assert_engine_holds(engine, folder):
    """Every tensor of the merged checkpoint ``folder`` is, bit for bit, the engine's in-place weight."""
    state, merged = engine.model.state_dict(), load_folder(folder)
    assert set(merged) <= set(state)
    for name, tensor in merged.items():
        assert torch.equal(bits(state[name]), bits(tensor)), name


# A user scorer: how far the weights moved from the last checkpoint (α = 0.6 goes further than
# α = 0, the fit at the last step), so the search's pick is the α > 0.
FARTHEST = '''from safetensors.torch import load_file

LAST = load_file({last!r})["lm_head.weight"].double()


def distance(model, tokenizer):
    return float((model.lm_head.weight.detach().double() - LAST).abs().sum())
'''


def test_search_merges_exactly_the_weights_it_scored(run, tmp_path):
    from mergekit_expo.search.hf_engine import HFEngine

    sft, checkpoints = run
    (tmp_path / "farthest.py").write_text(FARTHEST.format(last=str(checkpoints[-1] / "model.safetensors")))
    options = ("--scorer", "farthest:distance", "--alphas", "0,0.6", "--out", tmp_path / "s",
               "--write-best", tmp_path / "best")
    arguments = ("search", sft, *checkpoints, *options, "--window", "4")
    run_cli("mergekit-expo", *arguments, cwd=tmp_path)
    saved = json.loads((tmp_path / "s" / "results.json").read_text())["settings"]
    assert saved["checkpoints"] == [str(c) for c in checkpoints] and saved["steps"] == list(STEPS)
    assert saved["window"] == 4 and "aligned" not in saved
    best = yaml.safe_load((tmp_path / "s" / "best.yml").read_text())
    assert best["merge_method"] == "expo_trajectory" and best["base_model"] == str(sft)
    assert best["models"] == [{"model": str(c), "parameters": {"step": s}} for c, s in zip(checkpoints, STEPS)]
    assert best["parameters"] == {"alpha": 0.6, "window": 4}

    engine = HFEngine(str(sft), *map(str, checkpoints), window=4)  # steps read from the folders
    engine.set_alpha(0.0)
    engine.set_alpha(0.6)  # after another α: nothing may accumulate
    assert_engine_holds(engine, tmp_path / "best")
    points = run_points(sft, checkpoints)  # and that is the least-squares fit, rounded once
    for name, tensor in load_folder(tmp_path / "best").items():
        want, _ = trajectory_reference([p[name] for p in points], (0, *STEPS), 0.6, tensor.dtype, 4)
        assert torch.equal(bits(tensor), bits(want)), name

    card = (tmp_path / "best" / "README.md").read_text()
    assert "## How α was chosen" in card and "| 0.6 | " in card and "| **chosen** |" in card
    for checkpoint, step in zip(checkpoints, STEPS):
        assert f"  - `{checkpoint}`: step {step}\n" in card
    assert "not with the search's choice" not in card
    # the same command resumes; other checkpoints or another window are another search
    again = run_cli("mergekit-expo", *arguments, "--overwrite", cwd=tmp_path)
    assert "resuming: 2 of 2 α already scored" in again.stderr
    before = snapshot(tmp_path / "s")
    other = [("search", sft, *checkpoints[1:], *options, "--window", "4"), (*arguments[:-1], "3")]
    for refused, differs in zip(other, ("the checkpoints was [", "--window was 4, now 3")):
        result = invoke(*refused, cwd=tmp_path)
        assert result.returncode == 1 and "holds results of a different search: " in result.stderr, result.stderr
        assert differs in result.stderr
    assert snapshot(tmp_path / "s") == before


def test_card_of_the_merge_takes_the_search_of_its_checkpoints(run, prefs, tmp_path):
    sft, checkpoints = run
    run_cli("mergekit-expo", "search", sft, *checkpoints[:3], "--data", prefs, "--alphas", "0,0.4",
            "--out", tmp_path / "s")
    run_cli("mergekit-yaml", tmp_path / "s" / "best.yml", tmp_path / "out")
    ok = invoke("card", tmp_path / "out", "--search", tmp_path / "s", "--overwrite", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## How α was chosen" in card and "the fit at the last checkpoint's step" in card
    assert all(f"  - `{c}`: step {s}\n" in card for c, s in zip(checkpoints[:3], STEPS))
    # a merge of other checkpoints, or at other steps, is not what the search scored
    for changed, message in (
            (dict(models=[{"model": str(c)} for c in checkpoints[1:4]]), "scored the checkpoint 1 "),
            (dict(base_model=str(checkpoints[4])), "scored the SFT model ")):
        config = {**yaml.safe_load((tmp_path / "s" / "best.yml").read_text()), **changed}
        folder = tmp_path / f"other-{len(message)}"
        run_cli("mergekit-yaml", write_yaml(tmp_path / "o.yml", config), folder)
        refused = invoke("card", folder, "--search", tmp_path / "s", "--overwrite", cwd=tmp_path)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
        assert refused.returncode == 1 and len(errors) == 1 and message in errors[0], refused.stderr


def test_raced_search_writes_the_merge_of_its_pick(run, prefs, tmp_path):
    from mergekit_expo.search.hf_engine import HFEngine

    sft, checkpoints = run
    result = invoke("search", sft, *checkpoints, "--data", prefs, "--alphas", "0,0.5,4,16", "--race",
                    "--out", "./s", "--write-best", "./best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["race"]["rows"] == 40 and saved["settings"]["race"] == {"seed": 0}
    pick = yaml.safe_load((tmp_path / "s" / "best.yml").read_text())["parameters"]["alpha"]
    assert pick in (0.0, 0.5, 4.0, 16.0)
    engine = HFEngine(str(sft), *map(str, checkpoints))
    engine.set_alpha(pick)
    assert_engine_holds(engine, tmp_path / "best")


def test_hub_checkpoints_are_named_by_their_ids(run, prefs, tmp_path, monkeypatch):
    # Offline, from a hand-made cache; each step from the trainer_state.json of its snapshot.
    from huggingface_hub import constants

    sft, checkpoints = run
    models = {"org/sft": sft, **{f"org/run-step-{s}": c for s, c in zip(STEPS, checkpoints[:3])}}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", models)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = invoke("search", *models, "--data", prefs, "--alphas", "0.3", "--out", "./s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "s" / "results.json").read_text())["settings"]
    assert saved["sft"] == "org/sft" and saved["checkpoints"] == list(models)[1:] and saved["steps"] == [100, 200, 300]
    best = yaml.safe_load((tmp_path / "s" / "best.yml").read_text())
    assert best["models"] == [{"model": f"org/run-step-{s}", "parameters": {"step": s}} for s in STEPS[:3]]


@pytest.mark.parametrize("space_name", ["depth", pytest.param("module", marks=pytest.mark.slow)])
def test_structured_candidate_in_place_equals_the_merge(run, space_name, tmp_path):
    """α per tensor from mergekit's planner of the expo_trajectory config (the fit's shared α)."""
    from mergekit_expo.search.command import space_for
    from mergekit_expo.search.hf_engine import HFEngine
    from mergekit_expo.search.searched_models import read_models
    from mergekit_expo.search.settings import SearchSettings

    sft, checkpoints = run
    models = read_models(str(sft), [str(c) for c in checkpoints[1:]], window=3)
    space, resolve = space_for(SearchSettings(space=space_name), models)
    candidate = {name: 0.3 * (i + 1) for i, name in enumerate(space.coordinates)}
    alphas = resolve(candidate)
    if space_name == "depth":  # a gradient over 2 layers: α_first at layer 0 and outside, α_last at 1
        assert alphas["lm_head.weight"] == alphas["model.layers.0.mlp.up_proj.weight"] == pytest.approx(0.3)
        assert alphas["model.layers.1.mlp.up_proj.weight"] == pytest.approx(0.6)
    else:
        assert alphas["model.layers.1.self_attn.q_proj.weight"] == pytest.approx(0.3)
        assert alphas["model.layers.1.mlp.up_proj.weight"] == pytest.approx(0.6)
        assert alphas["lm_head.weight"] == pytest.approx(0.9)
    config = resolve.config(candidate)
    assert config["merge_method"] == "expo_trajectory" and config["parameters"]["window"] == 3
    run_cli("mergekit-yaml", write_yaml(tmp_path / "best.yml", config), tmp_path / "out")
    engine = HFEngine(str(sft), *models.checkpoints, steps=models.steps, window=3)
    engine.set_alphas(alphas)
    assert_engine_holds(engine, tmp_path / "out")


def _copy(tmp, folder, name, **config_changes):
    target = tmp / name
    shutil.copytree(folder, target)
    (target / "trainer_state.json").unlink(missing_ok=True)
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, **config_changes}))
    return target


# case -> (arguments after the SFT model, given (tmp, sft, checkpoints), part of the one line)
BAD = {
    "a checkpoint twice": (lambda t, s, c: [c[0], c[1], c[1]], "checkpoint-200 is the same folder as checkpoint"),
    "the SFT model as a checkpoint": (lambda t, s, c: [s, c[1]], "is the same folder as the SFT model"),
    "a copy of the SFT model": (lambda t, s, c: [_copy(t, s, "sft-copy"), c[1], "--steps", "50,200"],
                                "holds the same weights as"),
    "repeated steps": (lambda t, s, c: [_copy(t, c[0], "a"), _copy(t, c[1], "b"), "--steps", "100,100"],
                       "both have step 100"),
    "missing steps": (lambda t, s, c: [_copy(t, c[0], "a"), _copy(t, c[1], "b")],
                      "has no step: give every checkpoint's training step with --steps N,N,..."),
    "a step against its folder": (lambda t, s, c: [c[0], c[1], "--steps", "100,250"],
                                  "has --steps 250, but trainer_state.json (global_step) says 200: fix --steps"),
    "steps out of order": (lambda t, s, c: [c[1], c[0]], "steps must increase along the checkpoints given"),
    "step 0": (lambda t, s, c: [_copy(t, c[0], "a"), _copy(t, c[1], "b"), "--steps", "0,200"],
               "step must be at least 1, got 0"),
    "another architecture": (lambda t, s, c: [c[0], _copy(t, c[1], "checkpoint-200", hidden_size=128)],
                             "hidden_size differs: 64 in SFT"),
    "another vocabulary": (lambda t, s, c: [c[0], _copy(t, c[1], "checkpoint-200", vocab_size=65)],
                           "vocab_size differs (64 in SFT"),
    "too few steps": (lambda t, s, c: [c[0], c[1], "--steps", "100"], "--steps gives 1 step(s) for 2 checkpoints"),
    "a step that is no number": (lambda t, s, c: [c[0], c[1], "--steps", "100,2OO"], "'2OO' is not a whole number"),
    "a window of one point": (lambda t, s, c: [c[0], c[1], "--window", "1"], "--window must be a whole number of at"),
    "a window past the points": (lambda t, s, c: [c[0], c[1], "--window", "4"],
                                 "window is 4, but there are only 3 points"),
    "steps for one aligned model": (lambda t, s, c: [c[1], "--steps", "200"], "--steps is for a run's checkpoints"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_before_any_model_is_loaded(run, prefs, tmp_path, case):
    build, message = BAD[case]
    sft, checkpoints = run
    (tmp_path / "made").mkdir()
    arguments = build(tmp_path / "made", sft, checkpoints)
    before = snapshot(tmp_path)
    result = invoke("search", sft, *arguments, "--data", prefs, "--out", "./s", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before
