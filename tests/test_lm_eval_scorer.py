"""`search --scorer lm-eval:…` and `--guard`: each α scores what lm-eval's own
`simple_evaluate` gives for the `mergekit-yaml` output at that α, on local tasks, offline."""

import json
import random
import sys

import lm_eval  # noqa: F401  (a declared test dependency: a broken install fails here, never skips)
import pytest
import yaml

from conftest import invoke, merges_of, run_cli

ALPHAS = (0.0, 0.5, 1.0)
BATCH = 4


@pytest.fixture(scope="module")
def pair(pair_factory):
    return pair_factory(delta_scale=0.3)


@pytest.fixture(scope="module")
def merged_at(pair, tmp_path_factory):
    return merges_of(pair, tmp_path_factory)


def words(rng, n):
    return " ".join(f"w{rng.randrange(4, 60)}" for _ in range(n))


def greedy_answers(model_dir, prompts, tokens):
    """What the model itself answers, so the exact-match task has hits to lose or gain."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory, pair):
    """Two user tasks in local YAML over local JSONL: multiple choice and generate_until."""
    folder = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    choices = [{"question": words(rng, 4), "choices": [words(rng, 3) for _ in range(3)],
                "label": rng.randrange(3)} for _ in range(24)]
    (folder / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choices))
    prompts = [words(rng, 5) for _ in range(12)]
    answers = greedy_answers(str(pair[1]), prompts, tokens=2)
    # Half the targets are the aligned model's own answers, half are not.
    rows = [{"prompt": p, "answer": a if i % 2 == 0 else words(rng, 2)}
            for i, (p, a) in enumerate(zip(prompts, answers))]
    (folder / "answer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"dataset_path": "json", "test_split": "test"}
    (folder / "toy_choice.yaml").write_text(yaml.safe_dump({
        "task": "toy_choice", **common,
        "dataset_kwargs": {"data_files": {"test": str(folder / "choice.jsonl")}},
        "output_type": "multiple_choice", "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "label",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}))
    (folder / "toy_answer.yaml").write_text(yaml.safe_dump({
        "task": "toy_answer", **common,
        "dataset_kwargs": {"data_files": {"test": str(folder / "answer.jsonl")}},
        "output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["</s>"], "max_gen_toks": 2, "do_sample": False},
        "metric_list": [{"metric": "exact_match"}]}))
    (folder / "toy_group.yaml").write_text(yaml.safe_dump({
        "group": "toy_group", "task": ["toy_choice"],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}))
    return folder


@pytest.fixture(scope="module")
def lm_eval_reference(tasks_dir):
    """reference(model_dir, task, **options) -> lm-eval's results for the merged checkpoint,
    loaded as a user would run it (lm-eval's own model loading)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir))

    def reference(model_dir, task, **options):
        model = HFLM(pretrained=str(model_dir), batch_size=BATCH, device="cpu")
        results = simple_evaluate(model=model, tasks=[task], task_manager=manager, log_samples=False, **options)
        return results["results"][task]

    return reference


def results_of(folder):
    return {round(r["alpha"], 6): r for r in json.loads((folder / "results.json").read_text())["results"]}


def search(pair, out, *args, check=True, cwd=None):
    return run_cli("mergekit-expo", "search", *pair, "--out", out,
                   "--alphas", ",".join(f"{a:g}" for a in ALPHAS), "--batch-size", str(BATCH),
                   *args, check=check, cwd=cwd)


def test_each_alpha_scores_what_lm_eval_gives_the_merged_checkpoint(tmp_path, pair, tasks_dir, merged_at,
                                                                    lm_eval_reference):
    out = tmp_path / "search"
    search(pair, out, "--scorer", "lm-eval:toy_choice,toy_answer", "--tasks-path", tasks_dir)
    found = results_of(out)
    assert sorted(found) == list(ALPHAS)
    for alpha in ALPHAS:
        row = found[alpha]
        choice = lm_eval_reference(merged_at(alpha), "toy_choice")["acc,none"]
        answer = lm_eval_reference(merged_at(alpha), "toy_answer")["exact_match,none"]
        assert row["extra"]["lm_eval:toy_choice"] == choice
        assert row["extra"]["lm_eval:toy_answer"] == answer
        assert row["score"] == pytest.approx((choice + answer) / 2, abs=1e-12)
        assert row["low"] < row["score"] < row["high"]
        assert row["n"] == 24 + 12
    # The exact-match targets are the aligned model's answers: half hit at α = 0, fewer elsewhere.
    assert found[0.0]["extra"]["lm_eval:toy_answer"] == 0.5
    assert len({found[a]["extra"]["lm_eval:toy_answer"] for a in ALPHAS}) > 1


def test_metric_limit_and_few_shot_reach_lm_eval(tmp_path, pair, tasks_dir, merged_at, lm_eval_reference):
    out = tmp_path / "search"
    result = search(pair, out, "--scorer", "lm-eval:toy_choice", "--tasks-path", tasks_dir,
                    "--metric", "acc_norm", "--limit", "10", "--num-fewshot", "2", cwd=tmp_path)
    found = results_of(out)
    expected = lm_eval_reference(merged_at(0.5), "toy_choice", limit=10, num_fewshot=2)
    assert found[0.5]["score"] == expected["acc_norm,none"]
    assert found[0.5]["n"] == 10
    # One accuracy: Wilson's 95% interval of a share of 10 items, inside [0, 1].
    for row in found.values():
        p, n, z = row["score"], row["n"], 1.959963984540054
        center = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
        assert (row["low"], row["high"]) == pytest.approx((center - half, center + half), abs=1e-12)
        assert 0 <= row["low"] <= row["score"] <= row["high"] <= 1
    # Run outside a git checkout: lm-eval's `git describe` stays quiet.
    assert "not a git repository" not in result.stderr


def test_wilson_interval_matches_published_values():
    from mergekit_expo.search.stats import wilson_interval

    assert wilson_interval(0.0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(0.5, 20) == pytest.approx((0.2993, 0.7007), abs=1e-4)
    assert wilson_interval(1.0, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)


def test_a_group_scores_its_aggregate_metric(tmp_path, pair, tasks_dir, merged_at, lm_eval_reference):
    out = tmp_path / "search"
    run_cli("mergekit-expo", "search", *pair, "--out", out, "--alphas", "0.5", "--batch-size", str(BATCH),
            "--scorer", "lm-eval:toy_group", "--tasks-path", tasks_dir)
    assert results_of(out)[0.5]["score"] == lm_eval_reference(merged_at(0.5), "toy_choice")["acc,none"]


def test_guard_excludes_alphas_that_drop_too_far(tmp_path, pair, tasks_dir):
    out = tmp_path / "search"
    result = search(pair, out, "--scorer", "lm-eval:toy_choice", "--guard", "lm-eval:toy_answer",
                    "--max-drop", "0", "--tasks-path", tasks_dir)
    rows = json.loads((out / "results.json").read_text())["results"]
    baseline = next(r for r in rows if r["alpha"] == 0)
    allowed = [r for r in rows if r["guard"] >= baseline["guard"]]
    excluded = [r["alpha"] for r in rows if r["guard"] < baseline["guard"]]
    assert excluded, "the guard at α = 0 is the aligned model's own answers: other α should drop"
    expected = max(allowed, key=lambda r: r["score"])
    best = yaml.safe_load((out / "best.yml").read_text())
    assert best["models"][0]["parameters"]["alpha"] == expected["alpha"]
    assert "excluded alpha " + ", ".join(f"{a:g}" for a in excluded) in result.stdout
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"guard", "guard_low", "guard_high", "excluded"} <= set(header)
    import matplotlib.image

    height, width = matplotlib.image.imread(out / "score_vs_alpha.png").shape[:2]
    assert height > width  # two panels stacked on one α axis

    # Another --max-drop reuses every score (no engine, no rescoring) and may choose again.
    again = search(pair, out, "--scorer", "lm-eval:toy_choice", "--guard", "lm-eval:toy_answer",
                   "--max-drop", "1", "--tasks-path", tasks_dir)
    assert f"resuming: {len(ALPHAS)} of {len(ALPHAS)}" in again.stderr
    assert "--max-drop was 0, now 1: every score is reused and the pick chosen again" in again.stderr
    best = yaml.safe_load((out / "best.yml").read_text())
    assert best["models"][0]["parameters"]["alpha"] == max(rows, key=lambda r: r["score"])["alpha"]


def test_bad_lm_eval_inputs(tmp_path, pair, tasks_dir):
    offline = tmp_path / "offline-tasks"
    offline.mkdir()
    (offline / "needs_hub.yaml").write_text(yaml.safe_dump({
        "task": "needs_hub", "dataset_path": "someone/some-dataset", "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": "{{c}}",
        "doc_to_target": "label"}))
    local = ["--tasks-path", tasks_dir]
    cases = [
        (["--scorer", "lm-eval:toy_choise", *local], "unknown lm-eval task 'toy_choise'"),
        (["--scorer", "lm-eval:toy_choise", *local], "closest: toy_choice"),
        (["--scorer", "lm-eval:needs_hub", "--tasks-path", offline], "someone/some-dataset"),
        (["--scorer", "lm-eval:toy_choice", "--guard", "lm-eval:toy_answer", *local], "--guard needs --max-drop"),
        (["--scorer", "lm-eval:toy_choice", "--max-drop", "0.1", *local], "--max-drop needs --guard"),
        (["--scorer", "lm-eval:toy_choice", "--metric", "f1", *local], "it reports acc, acc_norm"),
        (["--scorer", "lm-eval:toy_choice", "--metric", "accnorm", *local],
         "does not report --metric 'accnorm' (closest: acc_norm): it reports acc, acc_norm"),
        (["--scorer", "lm-eval:toy_choice", "--engine", "vllm", *local], "runs with --engine hf"),
        (["--scorer", "lm_eval:toy_choice", *local], "did you mean lm-eval:toy_choice"),
        (["--data", tmp_path / "x.jsonl", "--limit", "5"], "--limit only applies to lm-eval scorers"),
    ]
    for args, message in cases:  # in this process: refusals need no ~4 s of imports each
        result = invoke("search", *pair, "--out", tmp_path / "o", *args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "o").exists(), args


def test_missing_lm_eval_names_the_extra(tmp_path, pair, tasks_dir):
    # Python's own way of making a package unimportable, as if it were not installed.
    code = ("import sys; sys.modules['lm_eval'] = None; sys.argv[0] = 'mergekit-expo'; "
            "from mergekit_expo.cli import main; main()")
    result = run_cli(sys.executable, "-c", code, "search", *pair, "--out", tmp_path / "o",
                     "--scorer", "lm-eval:toy_choice", "--tasks-path", tasks_dir, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("pip install 'mergekit-expo[lm-eval]'")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_worked_example_runs(tmp_path):
    import shutil
    import subprocess

    from conftest import BIN, REPO, cli_env

    example = tmp_path / "lm_eval_guard"
    shutil.copytree(REPO / "examples/lm_eval_guard", example,
                    ignore=shutil.ignore_patterns("models", "search"))
    env = dict(cli_env(), PATH=f"{BIN}:{cli_env()['PATH']}")
    result = subprocess.run(["bash", str(example / "run.sh")], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best alpha =" in result.stdout and "the guard lm-eval:toy_recall" in result.stdout
    best = yaml.safe_load((example / "search/best.yml").read_text())
    assert best["merge_method"] == "expo"


def test_worked_example_without_the_package_says_what_to_run(tmp_path):
    import shutil
    import subprocess

    from conftest import REPO

    example = tmp_path / "lm_eval_guard"
    shutil.copytree(REPO / "examples/lm_eval_guard", example,
                    ignore=shutil.ignore_patterns("models", "search"))
    # A shell where neither the project's venv nor an environment with the package is active.
    result = subprocess.run(["bash", str(example / "run.sh")], env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: mergekit-expo with lm-eval is not installed here: run 'bash scripts/setup.sh' in the "
        "repository (or pip install 'mergekit-expo[lm-eval]' and activate that environment)"]
    assert not (example / "models").exists()
