"""The vLLM engine on vLLM's CPU build (run in .venv-vllm, see tests/test_vllm_venv.py).

Weights replaced in place through vLLM's own loader must give what an engine loaded
from the `mergekit-yaml` output gives: the same greedy answers, the same log-probs.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from conftest import load_folder, merges_of, run_cli

vllm = pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPTS = ["w1 w2 w3", "w7 w8", "w30 w31 w32 w33", "w5 w9 w11 w2 w40"]
ANSWERS = [[5, 6], [7], [8, 9, 10], [11, 12, 13, 14]]


@pytest.fixture(scope="module")
def pair(pair_factory):
    # vLLM's CPU attention needs head sizes it has kernels for: 128 / 4 = 32.
    return pair_factory(hidden_size=128, intermediate_size=256, delta_scale=0.3)


@pytest.fixture(scope="module")
def merged_at(pair, tmp_path_factory):
    """A checkpoint written by `mergekit-yaml` with merge_method: expo, per α."""
    return merges_of(pair, tmp_path_factory)


@pytest.fixture(scope="module")
def engine(pair):
    """One tensor-parallel-1 engine for the tests that set weights and score (a start
    costs ~45 s on this CPU); each test sets the α it needs first."""
    from mergekit_expo.search.vllm_engine import VLLMEngine

    started = VLLMEngine(str(pair[0]), str(pair[1]))
    yield started
    started.close()


def plain_vllm(folder, tokenizer, parallel):
    """An engine loaded from a checkpoint folder: answers and answer log-probs."""
    llm = vllm.LLM(model=str(folder), tensor_parallel_size=parallel, seed=0)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           vllm.SamplingParams(max_tokens=8, temperature=0.0))
    answers = [tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outputs]
    scored = llm.generate([{"prompt_token_ids": p + a} for p, a in zip(prompts, ANSWERS)],
                          vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0))
    logprobs = [sum(entry[(p + a)[len(p) + i]].logprob for i, entry in enumerate(o.prompt_logprobs[len(p):]))
                for o, p, a in zip(scored, prompts, ANSWERS)]
    llm.llm_engine.engine_core.shutdown()
    return answers, logprobs


@pytest.mark.parametrize("parallel", [1, 2])
def test_in_place_alpha_equals_an_engine_loaded_from_the_merge(pair, merged_at, parallel, request):
    from mergekit_expo.search.sampling import Sampling
    from mergekit_expo.search.vllm_engine import VLLMEngine

    if parallel == 1:
        engine = request.getfixturevalue("engine")
    else:
        engine = VLLMEngine(str(pair[0]), str(pair[1]), tensor_parallel_size=parallel)
    prompts = [engine.tokenizer(p)["input_ids"] for p in PROMPTS]
    found = {}
    for alpha in (0.5, 0.0):  # out of order: nothing may accumulate between α values
        engine.set_alpha(alpha)
        found[alpha] = (engine.generate(prompts, Sampling(max_new_tokens=8)),
                        engine.answer_logprobs(prompts, ANSWERS))
    if parallel != 1:
        engine.close()
    for alpha in (0.5, 0.0):
        assert found[alpha] == plain_vllm(merged_at(alpha), engine.tokenizer, parallel), alpha


def test_a_worker_whose_reload_does_not_load_is_caught(pair, monkeypatch):
    from mergekit_expo.errors import ExpoEngineError
    from mergekit_expo.search import vllm_engine

    monkeypatch.setattr(vllm_engine, "WORKER_EXTENSION", "faulty_worker.FaultyWorkerExtension")
    engine = vllm_engine.VLLMEngine(str(pair[0]), str(pair[1]))
    try:
        covered = engine.probe.covered
        assert len(covered) == 4 and any("norm" in name for name in covered)
        engine.set_alpha(0.3)  # the real reload passes
        for fault in ("does nothing", "reloads from disk"):
            engine.llm.collective_rpc("expo_fault", args=(fault,))
            with pytest.raises(ExpoEngineError) as caught:
                engine.set_alpha(0.5)
            message = str(caught.value)
            assert message.startswith(f"--engine vllm (vllm {vllm.__version__}) does not hold the weights "
                                      "of alpha=0.5: "), (fault, message)
            assert any(f": {name} reads " in message for name in covered), message
    finally:
        engine.close()


def test_preference_log_probs_agree_with_the_transformers_engine(pair, engine):
    from mergekit_expo.search.hf_engine import HFEngine

    hf = HFEngine(str(pair[0]), str(pair[1]), batch_size=4)
    prompts = [engine.tokenizer(p)["input_ids"] for p in PROMPTS]
    for alpha in (0.0, 0.5):
        engine.set_alpha(alpha)
        hf.set_alpha(alpha)
        # Both run the bf16 model, with different kernels (vLLM's fused CPU attention and
        # its own matmul paths): per-sequence sums agree within 2% (measured up to 0.6%).
        for a, b in zip(engine.answer_logprobs(prompts, ANSWERS), hf.answer_logprobs(prompts, ANSWERS)):
            assert a == pytest.approx(b, rel=0.02, abs=0.05)


def test_search_command_resumes_and_writes_the_best_merge(pair, merged_at, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": "w3 w4", "rejected": "w50"}) + "\n"
                            for p in PROMPTS))
    arguments = ("search", *pair, "--engine", "vllm", "--data", data, "--alphas", "0,0.5",
                 "--strategy", "full", "--out", tmp_path / "s", "--write-best", tmp_path / "best")
    run_cli("mergekit-expo", *arguments)
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert [r["alpha"] for r in results["results"]] == [0.0, 0.5]
    assert results["settings"]["engine"] == "vllm"
    best = max(results["results"], key=lambda r: (r["score"], r["extra"]["mean_margin"]))["alpha"]
    written, expected = load_folder(tmp_path / "best"), load_folder(merged_at(best))
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    again = run_cli("mergekit-expo", *arguments, "--overwrite")
    assert "resuming: 2 of 2 α already scored" in again.stderr


def test_bad_vllm_inputs(pair, pair_factory, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1", "chosen": "w2", "rejected": "w3"}) + "\n")
    odd = pair_factory(hidden_size=96, intermediate_size=192, num_heads=3, num_kv_heads=3)
    cases = [
        (pair, ("--tensor-parallel-size", os.cpu_count() + 1), "is more than the"),
        (odd, ("--tensor-parallel-size", 2), "does not divide the model's num_attention_heads (3)"),
    ]
    for models, options, message in cases:
        result = run_cli("mergekit-expo", "search", *models, "--engine", "vllm", "--data", data,
                         *options, "--out", tmp_path / "o", check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr


def test_per_tensor_alpha_equals_an_engine_loaded_from_mergekit_yaml(pair, engine, tmp_path):
    """A module+depth candidate (filters and gradients) set in place through vLLM's loader
    gives what vLLM loaded from the `mergekit-yaml` output of its best.yml gives."""
    from conftest import write_yaml
    from mergekit_expo.search.command import model_space
    from mergekit_expo.search.sampling import Sampling
    from mergekit_expo.search.settings import SearchSettings

    sft, aligned = (str(p) for p in pair)
    space, resolve = model_space(SearchSettings(space="module+depth"), sft, aligned, sft, aligned)
    candidate = {name: 0.2 * (i + 1) for i, name in enumerate(space.coordinates)}
    run_cli("mergekit-yaml", write_yaml(tmp_path / "best.yml", resolve.config(candidate)), tmp_path / "out")
    prompts = [engine.tokenizer(p)["input_ids"] for p in PROMPTS]
    engine.set_alphas(resolve(candidate))
    found = (engine.generate(prompts, Sampling(max_new_tokens=8)), engine.answer_logprobs(prompts, ANSWERS))
    assert found == plain_vllm(tmp_path / "out", engine.tokenizer, 1)


@pytest.fixture(scope="module")
def run(pair, tmp_path_factory):
    """A run from the pair's SFT model to its aligned model: checkpoint-100, -200, -300."""
    from mergekit_expo.synthetic import write_checkpoints

    root = tmp_path_factory.mktemp("run")
    return pair[0], [Path(p) for p in write_checkpoints(str(pair[0]), str(pair[1]), str(root), (100, 200, 300))]


def test_raced_trajectory_search_merges_the_weights_vllm_held(run, tmp_path):
    """A raced search of a run's checkpoints: the pick's --write-best merge is, bit for bit, every
    weight vLLM holds under its checkpoint name after the in-place update, and a vLLM loaded from
    it answers and scores as the updated one does (fused and repacked weights included)."""
    from mergekit_expo.search.sampling import Sampling
    from mergekit_expo.search.vllm_engine import VLLMEngine

    sft, checkpoints = run
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{p} w{i}", "chosen": "w3 w4", "rejected": f"w{50 + i}"}) + "\n"
                            for i in range(8) for p in PROMPTS))
    run_cli("mergekit-expo", "search", sft, *checkpoints, "--engine", "vllm", "--data", data, "--race",
            "--alphas", "0,0.5,8", "--out", tmp_path / "s", "--write-best", tmp_path / "best")
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["race"]["rows"] == 32 and results["settings"]["steps"] == [100, 200, 300]
    pick = yaml.safe_load((tmp_path / "s" / "best.yml").read_text())["parameters"]["alpha"]
    merged = load_folder(tmp_path / "best")

    engine = VLLMEngine(str(sft), *map(str, checkpoints))  # steps read from the folders
    try:
        engine.set_alpha(0.5 if pick != 0.5 else 8.0)
        engine.set_alpha(pick)  # after another α: nothing may accumulate
        held = engine.llm.collective_rpc("expo_held")[0]
        readable = {name: list(range(merged[name].numel())) for name, (shape, _) in held.items()
                    if name in merged and tuple(shape) == tuple(merged[name].shape)}
        assert "lm_head.weight" in readable and any("norm" in name for name in readable)
        for name, values in engine.llm.collective_rpc("expo_read", args=(readable,))[0].items():
            got = torch.tensor(values, dtype=torch.float64).to(merged[name].dtype)  # exact: read as doubles
            assert torch.equal(got.view(torch.int16), merged[name].reshape(-1).view(torch.int16)), name
        prompts = [engine.tokenizer(p)["input_ids"] for p in PROMPTS]
        found = (engine.generate(prompts, Sampling(max_new_tokens=8)), engine.answer_logprobs(prompts, ANSWERS))
    finally:
        engine.close()
    assert found == plain_vllm(tmp_path / "best", engine.tokenizer, 1)
