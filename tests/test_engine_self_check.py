"""The transformers engine checks every α it sets: a loader that does nothing, or reloads
from disk, is caught before anything is scored (vLLM's: tests/with_vllm)."""

import json
import logging

import pytest

from mergekit_expo.checkpoint import load_all
from mergekit_expo.errors import ExpoEngineError
from mergekit_expo.search import self_check
from mergekit_expo.search.hf_engine import HFEngine


class LoadsNothing(HFEngine):
    """As if transformers silently ignored the tensors it is handed."""

    def _load_weights(self, alpha):
        pass


class ReloadsFromDisk(HFEngine):
    """As if the loader read the aligned checkpoint from disk instead."""

    def _load_weights(self, alpha):
        self.model.load_state_dict(load_all(self.aligned_folder))


@pytest.fixture(scope="module")
def pair(pair_factory):
    return tuple(map(str, pair_factory(delta_scale=0.3)))


@pytest.mark.parametrize("faulty", [LoadsNothing, ReloadsFromDisk])
def test_a_loader_that_does_not_load_is_caught(pair, faulty):
    import transformers

    engine = faulty(*pair)
    engine.aligned_folder = pair[1]
    engine.set_alpha(0.0)  # α = 0 is the aligned model: nothing to tell apart
    with pytest.raises(ExpoEngineError) as caught:
        engine.set_alpha(0.3)
    message = str(caught.value)
    assert message.startswith(f"--engine hf (transformers {transformers.__version__}) does not hold "
                              "the weights of alpha=0.3: ")
    assert any(f": {name} reads " in message for name in engine.probe.covered), message
    assert "nothing was scored" in message and "\n" not in message


def test_nothing_is_scored_after_a_failed_check(pair, tmp_path):
    from mergekit_expo.search.runner import search
    from mergekit_expo.search.scorers import PreferenceScorer

    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "chosen": "w3", "rejected": "w4"}) + "\n")
    with pytest.raises(ExpoEngineError):
        from mergekit_expo.search.command import model_space
        from mergekit_expo.search.runner import Plan
        from mergekit_expo.search.settings import SearchSettings

        space, resolve = model_space(SearchSettings(), *pair, *pair)
        search(str(tmp_path / "s"), PreferenceScorer(str(data)), Plan(space=space, resolve=resolve, grid=[0.3]),
               settings={}, open_engine=lambda: LoadsNothing(*pair))
    # α = 0, the reference scored first, is the aligned model: a loader that loads nothing
    # passes there. α = 0.3 is caught before it is scored.
    results = tmp_path / "s" / "results.json"
    assert [r["alpha"] for r in json.loads(results.read_text())["results"]] == [0.0]


def test_what_the_check_reads_back(pair, pair_factory):
    engine = HFEngine(*pair)
    covered = engine.probe.covered
    assert len(covered) == 4 and len(set(covered)) == 4
    assert any("norm" in name for name in covered) and any("proj" in name for name in covered)
    for alpha in (0.5, 0.0, 0.3):
        engine.set_alpha(alpha)  # the real loader passes
    # renamed or fused tensors are not read back: Mixtral's experts are fused on load
    moe = HFEngine(*map(str, pair_factory(family="mixtral")))
    assert moe.probe.covered and not any("experts" in name for name in moe.probe.covered)


@pytest.mark.parametrize("version, warns", [("5.19.0", False), ("5.25.3", False), ("5.18.2", True),
                                             ("5.26.0", True), ("6.0.0", True)])
def test_the_tested_range_is_inclusive_by_minor_version(caplog, monkeypatch, version, warns):
    # a stated version, not the installed one: a newer release must never fail a test
    monkeypatch.setitem(self_check.TESTED, "hf", ("transformers", "5.19", "5.25"))
    monkeypatch.setattr(self_check, "library_version", lambda engine: version)
    self_check.warn_if_untested.cache_clear()
    with caplog.at_level(logging.WARNING, logger="mergekit_expo"):
        self_check.warn_if_untested("hf")
    self_check.warn_if_untested.cache_clear()
    assert bool(caplog.messages) == warns, caplog.messages


def test_an_untested_version_warns_once(caplog, monkeypatch):
    import transformers

    monkeypatch.setitem(self_check.TESTED, "hf", ("transformers", "4.40", "4.41"))
    self_check.warn_if_untested.cache_clear()
    with caplog.at_level(logging.WARNING, logger="mergekit_expo"):
        self_check.warn_if_untested("hf")
        self_check.warn_if_untested("hf")
    self_check.warn_if_untested.cache_clear()
    assert caplog.messages == [f"transformers {transformers.__version__} is outside the versions --engine hf "
                               "was tested with (transformers 4.40 to 4.41): each α's weights are checked "
                               "after loading"]


def test_a_run_is_checked_with_the_trajectorys_own_arithmetic(run_factory):
    # The real loader passes only if the check computes the fit (affine_parts/evaluate), not
    # expo of the SFT model and the last checkpoint; one that loads nothing is caught even at
    # α = 0, the fit at the last step, which is not the last checkpoint.
    sft, checkpoints = str(run_factory()[0]), [str(c) for c in run_factory()[1][:3]]
    engine = HFEngine(sft, *checkpoints)
    assert len(engine.probe.covered) == 4
    for alpha in (0.5, 0.0):
        engine.set_alpha(alpha)
    faulty = LoadsNothing(sft, *checkpoints)
    with pytest.raises(ExpoEngineError, match="does not hold the weights of alpha=0: "):
        faulty.set_alpha(0.0)
