"""`mergekit-expo search`: the in-place path equals the real merge, scores equal a direct
computation on merged checkpoints, results resume, reports are valid."""

import json
import shutil
import signal
import subprocess
import time

import pytest
import torch
import yaml

from conftest import BIN, cli_env, expo_config, invoke, load_folder, merges_of, run_cli, write_yaml


@pytest.fixture(scope="module")
def pair(pair_factory):
    return pair_factory(delta_scale=0.3)


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory):
    import random

    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(60)}" for _ in range(n))  # noqa: E731
    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": words(5), "chosen": words(4), "rejected": words(4)}) + "\n"
        for _ in range(10)))
    return path


@pytest.fixture(scope="module")
def merged_at(pair, tmp_path_factory):
    """A checkpoint written by `mergekit-yaml` with merge_method: expo, per α."""
    return merges_of(pair, tmp_path_factory)


def results_of(folder):
    return {round(r["alpha"], 6): r for r in json.loads((folder / "results.json").read_text())["results"]}


def test_in_place_weights_equal_the_merged_checkpoint_bit_for_bit(pair, merged_at):
    from mergekit_expo.search.hf_engine import HFEngine

    engine = HFEngine(str(pair[0]), str(pair[1]))
    for alpha in (0.5, 0.3):  # out of order: nothing may accumulate between α values
        engine.set_alpha(alpha)
        merged = load_folder(merged_at(alpha))
        state = engine.model.state_dict()
        for name, tensor in merged.items():
            assert torch.equal(state[name], tensor), (alpha, name)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_moe_weights_equal_the_merged_checkpoint_as_transformers_loads_it(family, pair_factory, tmp_path):
    # transformers 5 fuses per-expert checkpoint tensors on load (experts.gate_up_proj):
    # the in-place weights must be what the merged checkpoint loads to.
    import transformers

    from mergekit_expo.search.hf_engine import HFEngine

    sft, aligned = pair_factory(family=family)
    engine = HFEngine(str(sft), str(aligned))
    assert any("experts.gate_up_proj" in name for name in engine.model.state_dict())
    for alpha in (0.5, 0.0):
        config = write_yaml(tmp_path / f"c{alpha}.yml", expo_config(sft, aligned, alpha))
        run_cli("mergekit-yaml", config, tmp_path / f"out{alpha}")
        expected = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"out{alpha}").state_dict()
        engine.set_alpha(alpha)
        state = engine.model.state_dict()
        assert set(state) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(state[name], tensor), (alpha, name)


def direct_preference(model_dir, rows):
    """Independent computation: full-sequence log-softmax, sum over answer positions."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    margins = []
    for row in rows:
        totals = []
        for answer in (row["chosen"], row["rejected"]):
            prompt_ids = tokenizer(row["prompt"])["input_ids"]
            ids = prompt_ids + tokenizer(answer, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            totals.append(sum(float(logp[i - 1, ids[i]]) for i in range(len(prompt_ids), len(ids))))
        margins.append(totals[0] - totals[1])
    return sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins)


def test_preference_scores_match_merged_checkpoints(tmp_path, pair, preference_file, merged_at):
    out = tmp_path / "search"
    result = run_cli("mergekit-expo", "search", *pair, "--data", preference_file,
                     "--out", out, "--alphas", "0,0.3,0.5")
    assert "best alpha =" in result.stdout
    rows = [json.loads(line) for line in preference_file.read_text().splitlines()]
    found = results_of(out)
    assert sorted(found) == [0.0, 0.3, 0.5]
    for alpha in (0.3, 0.5):
        accuracy, margin = direct_preference(merged_at(alpha), rows)
        assert found[alpha]["score"] == pytest.approx(accuracy)
        assert found[alpha]["extra"]["mean_margin"] == pytest.approx(margin, rel=1e-4, abs=1e-4)
        assert found[alpha]["low"] <= found[alpha]["score"] <= found[alpha]["high"]
        assert found[alpha]["n"] == len(rows)

    import matplotlib.image

    assert matplotlib.image.imread(out / "score_vs_alpha.png").shape[2] in (3, 4)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("alpha,score,low,high,n,seconds") and len(csv_lines) == 4
    from mergekit.config import MergeConfiguration

    best = MergeConfiguration.model_validate(yaml.safe_load((out / "best.yml").read_text()))
    best_alpha = max(found.values(), key=lambda r: (r["score"], r["extra"]["mean_margin"]))["alpha"]
    assert best.merge_method == "expo" and best.models[0].parameters["alpha"] == best_alpha


def test_resume_skips_done_alphas_and_refine_adds_midpoints(tmp_path, pair, preference_file):
    out = tmp_path / "search"
    run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", out,
            "--alphas", "0,0.4", "--strategy", "full")
    first = results_of(out)
    run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", out,
            "--alphas", "0,0.4,0.8", "--refine", "--strategy", "full")
    second = results_of(out)
    assert first[0.0] == second[0.0] and first[0.4] == second[0.4]  # not recomputed
    # the best of the grid (score, then mean margin), and exactly the midpoints on either side of it
    coarse = (0.0, 0.4, 0.8)
    best = max(coarse, key=lambda a: (second[a]["score"], second[a]["extra"]["mean_margin"]))
    index = coarse.index(best)
    midpoints = {round((best + coarse[i]) / 2, 6) for i in (index - 1, index + 1) if 0 <= i < len(coarse)}
    assert set(second) == {*coarse, *midpoints}, (best, sorted(second))
    # A full search reports every α its study holds, also after a rerun on a smaller grid.
    third = run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", out,
                    "--alphas", "0,0.4", "--strategy", "full")
    assert results_of(out) == second and "not in this run's grid" not in third.stderr


def test_other_settings_in_the_same_folder_are_refused(tmp_path, pair, preference_file):
    out = tmp_path / "search"
    run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", out, "--alphas", "0")
    result = run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", out,
                     "--alphas", "0", "--dtype", "float32", check=False)
    assert result.returncode != 0
    assert "holds results of a different search: --dtype was not set, now 'float32'" in result.stderr


def test_new_weights_at_the_same_paths_are_another_search(tmp_path, pair_factory, preference_file):
    import shutil

    import optuna

    sft, aligned = (tmp_path / "sft", tmp_path / "aligned")
    shutil.copytree(pair_factory(delta_scale=0.3)[0], sft)
    shutil.copytree(pair_factory(delta_scale=0.3)[1], aligned)
    out = tmp_path / "search"
    search = ("mergekit-expo", "search", sft, aligned, "--data", preference_file, "--out", out, "--alphas", "0,1",
              "--strategy", "full")
    run_cli(*search)
    # An --out of a version that did not record the weights: it resumes as before.
    results = json.loads((out / "results.json").read_text())
    del results["settings"]["weights"]
    (out / "results.json").write_text(json.dumps(results))
    study = optuna.load_study(study_name="expo-search", storage=f"sqlite:///{out / 'study.db'}")
    settings = dict(study.user_attrs["settings"])
    del settings["weights"]
    study.set_user_attr("settings", settings)
    assert "resuming" in run_cli(*search).stderr
    # The aligned model trained again into its folder: its old scores are not reused.
    retrained = pair_factory(delta_scale=0.3, seed=9)[1]
    shutil.copy(retrained / "model.safetensors", aligned / "model.safetensors")
    result = run_cli(*search, check=False)
    assert result.returncode == 1
    assert "the models' weights differ from the searched ones (other files at the same paths)" in result.stderr


def test_a_new_out_on_a_finished_storage_gets_the_reports(tmp_path, pair, preference_file):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    for out in ("first", "second"):  # the second worker finds nothing left to score
        run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", tmp_path / out,
                "--alphas", "0,1", "--storage", storage)
    assert results_of(tmp_path / "second") == results_of(tmp_path / "first")
    assert (tmp_path / "second" / "best.yml").read_text() == (tmp_path / "first" / "best.yml").read_text()


def test_kill_9_leaves_results_intact_and_rerun_completes(tmp_path, pair, preference_file, merged_at):
    out = tmp_path / "search"
    alphas = ",".join(str(a / 10) for a in range(12))
    # --heartbeat 2: a candidate taken by the killed process before it named itself is given
    # back after 3 heartbeats, not 3 minutes
    command = [str(BIN / "mergekit-expo"), "search", str(pair[0]), str(pair[1]),
               "--data", str(preference_file), "--out", str(out), "--alphas", alphas, "--heartbeat", "2",
               "--strategy", "full"]
    process = subprocess.Popen(command, env=cli_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "results.json").exists() or len(results_of(out)) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = results_of(out)  # valid JSON: written atomically
    assert 2 <= len(before) < 12
    # A stopped search is no evidence for a card: it says so, and writes nothing.
    merged = tmp_path / "merged"
    shutil.copytree(merged_at(0.0), merged)
    refused = run_cli("mergekit-expo", "card", merged, "--search", out, check=False)
    assert refused.returncode == 1 and f"the search in {out} did not finish (stopped with " in refused.stderr
    assert not (merged / "README.md").exists() or (merged / "README.md").read_text() == \
        (merged_at(0.0) / "README.md").read_text()
    run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", out,
            "--alphas", alphas, "--heartbeat", "2", "--strategy", "full")
    after = results_of(out)
    assert len(after) == 12 and all(after[a] == before[a] for a in before)
    assert json.loads((out / "results.json").read_text())["finished"] is True


def test_write_best_runs_the_real_merge(tmp_path, pair, preference_file, merged_at):
    out = tmp_path / "search"
    run_cli("mergekit-expo", "search", *pair, "--data", preference_file, "--out", out,
            "--alphas", "0.3", "--write-best", tmp_path / "best-model")
    written, expected = load_folder(tmp_path / "best-model"), load_folder(merged_at(0.3))
    assert all(torch.equal(written[k], expected[k]) for k in expected)


@pytest.fixture(scope="module")
def reward_model(pair, tmp_path_factory):
    import transformers

    from mergekit_expo.synthetic import PairSpec, model_config

    torch.manual_seed(1)
    config = model_config(PairSpec(), vocab_size=64)
    config.num_labels = 1
    model = transformers.LlamaForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("reward")
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(pair[0]).save_pretrained(folder)
    return folder


def test_reward_model_scores_match_merged_checkpoint(tmp_path, pair, reward_model, merged_at):
    import transformers

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\nw1 w2 w3\nw7 w8\nw30 w31 w32 w33\n")
    out = tmp_path / "search"
    run_cli("mergekit-expo", "search", *pair, "--scorer", "reward-model", "--data", prompts,
            "--reward-model", reward_model, "--max-new-tokens", 6, "--out", out, "--alphas", "0.3")
    found = results_of(out)[0.3]

    model = transformers.AutoModelForCausalLM.from_pretrained(merged_at(0.3))
    tokenizer = transformers.AutoTokenizer.from_pretrained(merged_at(0.3))
    judge = transformers.AutoModelForSequenceClassification.from_pretrained(reward_model)
    rewards = []
    for prompt in ("w1 w2 w3", "w7 w8", "w30 w31 w32 w33"):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=3)
            answer = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            scored = tokenizer(f"{prompt} {answer}", return_tensors="pt")
            rewards.append(float(judge(**scored).logits[0, 0]))
    assert found["score"] == pytest.approx(sum(rewards) / 3, rel=1e-5)
    assert found["n"] == 3


def test_callable_scorer_from_the_working_folder(tmp_path, pair):
    # It returns a 0-d tensor computed from the weights: scorers run under torch.no_grad(), so
    # it carries no gradient and torch has nothing to warn about when it becomes a float.
    (tmp_path / "my_scorer.py").write_text(
        "def norm(model, tokenizer):\n"
        "    return model.model.embed_tokens.weight.float().norm()\n")
    out = tmp_path / "search"
    result = run_cli("mergekit-expo", "search", *pair, "--scorer", "my_scorer:norm", "--out", out,
                     "--alphas", "0,1", cwd=tmp_path)
    assert "requires_grad" not in result.stderr
    found = results_of(out)
    assert found[1.0]["score"] > found[0.0]["score"]  # extrapolating away from SFT grows the norm
    assert found[0.0]["low"] is None and found[0.0]["n"] == 1


def test_a_failing_user_scorer_is_named_with_the_candidate(tmp_path, pair):
    (tmp_path / "boom.py").write_text(
        "calls = []\n\n\n"
        "def score(model, tokenizer):\n"
        "    calls.append(1)\n"
        "    if len(calls) > 1:  # alpha = 0, the reference, is scored first\n"
        "        raise RuntimeError('user scorer exploded')\n"
        "    return 1.0\n")
    result = run_cli("mergekit-expo", "search", *pair, "--scorer", "boom:score", "--out", tmp_path / "s",
                     "--alphas", "0,0.5", cwd=tmp_path, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith("Error: --scorer boom:score raised RuntimeError: user scorer exploded "
                                "while scoring alpha=0.5"), errors[0]


def test_bad_search_inputs(tmp_path, pair, pair_factory, preference_file):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    unknown_words = tmp_path / "words.jsonl"  # the tiny tokenizer knows w0..w63 only: all <unk>
    unknown_words.write_text(json.dumps({"prompt": "Hello", "chosen": "Yes", "rejected": "No"}) + "\n")
    mistral = pair_factory(family="mistral")[1]
    cases = [
        (["--data", empty], "is empty"),
        (["--data", unknown_words], "in every row, 'chosen' and 'rejected' encode to the same tokens"),
        (["--data", tmp_path / "nope.jsonl"], "does not exist"),
        (["--scorer", "reward-model", "--data", preference_file, "--reward-model", pair[1]],
         "not a sequence classifier"),
        (["--scorer", "nonsense", "--data", preference_file], "unknown scorer"),
        (["--data", preference_file, "--alphas", "0,abc"], "--alphas: 'abc' is not a number"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--data", preference_file, "--device", "cuda"], "no CUDA device"))
    for args, message in cases:  # in this process: refusals need no ~4 s of imports each
        result = invoke("search", *pair, "--out", tmp_path / "o", *args, cwd=tmp_path)
        assert result.returncode != 0, args
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "o").exists()
    for sft, aligned, message in [(tmp_path / "missing", pair[1], "does not exist"),
                                  (pair[0], mistral, "architectures differ")]:
        result = invoke("search", sft, aligned, "--data", preference_file, "--out", tmp_path / "o2",
                        cwd=tmp_path)
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_accuracy_ties_are_broken_by_the_mean_margin(tmp_path):
    from mergekit_expo.search.results import AlphaResult, SearchResults

    results = SearchResults(tmp_path / "s", {"scorer": "preference"}, [])
    for alpha, margin in ((0.0, 0.1), (0.3, 0.5), (0.5, 0.2)):
        results.rows.append(AlphaResult(alpha=alpha, score=0.75, low=None, high=None, n=4, seconds=1.0,
                                        extra={"mean_margin": margin}))
    assert results.best().alpha == 0.3
    results.rows.append(AlphaResult(alpha=0.6, score=0.8, low=None, high=None, n=4, seconds=1.0,
                                    extra={"mean_margin": -1.0}))
    assert results.best().alpha == 0.6  # the score itself still comes first


def test_sigterm_says_the_results_are_kept(tmp_path, pair, preference_file):
    out = tmp_path / "search"
    alphas = ",".join(str(a / 10) for a in range(30))
    process = subprocess.Popen(
        [str(BIN / "mergekit-expo"), "search", str(pair[0]), str(pair[1]), "--data", str(preference_file),
         "--out", str(out), "--alphas", alphas], env=cli_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "results.json").exists():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 143, stderr
    assert "interrupted (SIGTERM); whatever was scored is kept in the study and results.json" in stderr
    assert 1 <= len(results_of(out)) < 30
