"""α beyond one number: per-module and per-depth candidates, resolved by mergekit's planner,
scored in place, shared by worker processes through one optuna study."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import BIN, cli_env, invoke, load_folder, run_cli, snapshot, write_yaml
from fp64_reference import expo_fp64


@pytest.fixture(scope="module")
def f32_pair(pair_factory):
    # float32 weights: the α each group has can be measured back from them to ~1e-6.
    return pair_factory(dtype=torch.float32, delta_scale=0.3)


def resolver_for(space_name, sft, aligned):
    from mergekit_expo.search.command import model_space
    from mergekit_expo.search.settings import SearchSettings

    return model_space(SearchSettings(space=space_name), str(sft), str(aligned), str(sft), str(aligned))


def layer_of(name):
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def test_depth_and_module_alphas_are_mergekits_filters_and_gradients(llama_pair, tmp_path):
    """Per tensor: the α mergekit's gradient (t = layer / (layers − 1), t = 0 outside the
    layers) and filters give, by hand; the merged weights equal the fp64 reference at it."""
    sft, aligned = llama_pair
    space, resolve = resolver_for("module+depth", sft, aligned)
    candidate = {"attention_first": 0.1, "attention_last": 0.7, "mlp_first": 0.4, "mlp_last": 0.2,
                 "other_first": 0.25, "other_last": 0.9}
    alphas = resolve(candidate)
    for name, alpha in alphas.items():
        group = "attention" if "self_attn" in name else "mlp" if ".mlp." in name else "other"
        t = layer_of(name) if layer_of(name) is not None else 0  # 2 layers: t = 0, 1
        first, last = candidate[f"{group}_first"], candidate[f"{group}_last"]
        assert alpha == pytest.approx(first + (last - first) * t, abs=1e-12), name
    write_yaml(tmp_path / "c.yml", resolve.config(candidate))
    result = invoke("run", tmp_path / "c.yml", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    merged, a, s = load_folder(tmp_path / "out"), load_folder(aligned), load_folder(sft)
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"):
        assert torch.equal(merged[name], expo_fp64(s[name], a[name], alphas[name]).to(a[name].dtype)), name


@pytest.mark.parametrize("family,space_name", [("llama", "module+depth"),
                                               pytest.param("llama", "depth", marks=pytest.mark.slow),
                                               ("mixtral", "module+depth")])
def test_in_place_candidate_equals_mergekit_yaml_bit_for_bit(family, space_name, pair_factory, tmp_path):
    import transformers

    from mergekit_expo.search.hf_engine import HFEngine

    sft, aligned = pair_factory(family=family)
    space, resolve = resolver_for(space_name, sft, aligned)
    candidate = {name: 0.15 * (i + 1) for i, name in enumerate(space.coordinates)}
    run_cli("mergekit-yaml", write_yaml(tmp_path / "best.yml", resolve.config(candidate)), tmp_path / "out")
    engine = HFEngine(str(sft), str(aligned))
    engine.set_alphas(resolve(candidate))
    state = engine.model.state_dict()
    # As transformers loads the merged checkpoint (MoE experts fused on load).
    expected = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


PROBE = '''"""The α each module group has in the in-place weights; rewards a hidden target."""
from safetensors.torch import load_file

SFT = load_file({sft!r})
ALIGNED = load_file({aligned!r})
TARGET = {target!r}


def group(name):
    return "attention" if "self_attn" in name else "mlp" if ".mlp." in name else "other"


def measured(weights):
    """Least-squares α per group: sum((θ - a)(a - s)) / sum((a - s)^2)."""
    top, bottom = {{}}, {{}}
    for name, weight in weights.items():
        delta = (ALIGNED[name] - SFT[name]).double()
        g = group(name)
        top[g] = top.get(g, 0.0) + float(((weight.double() - ALIGNED[name].double()) * delta).sum())
        bottom[g] = bottom.get(g, 0.0) + float((delta * delta).sum())
    return {{g: top[g] / bottom[g] for g in top}}


def closeness(model, tokenizer):
    alphas = measured(model.state_dict())
    return -sum((alphas[g] - TARGET[g]) ** 2 for g in TARGET)
'''


def write_probe(folder, pair, target):
    (folder / "alpha_probe.py").write_text(PROBE.format(sft=str(pair[0] / "model.safetensors"),
                                                        aligned=str(pair[1] / "model.safetensors"),
                                                        target=target))


def test_module_search_finds_a_hidden_target_and_best_yml_reproduces_it(f32_pair, tmp_path):
    target = {"attention": 0.7, "mlp": 0.2, "other": 0.45}
    write_probe(tmp_path, f32_pair, target)
    result = invoke("search", *f32_pair, "--scorer", "alpha_probe:closeness", "--space", "module",
                    "--trials", 40, "--out", "./s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    rows = saved["results"]
    assert len(rows) == 41 and rows[0]["alphas"] == {"attention": 0.0, "mlp": 0.0, "other": 0.0}
    best = max(rows, key=lambda r: r["score"])["alphas"]
    assert all(abs(best[g] - target[g]) < 0.1 for g in target), best
    run_cli("mergekit-yaml", tmp_path / "s" / "best.yml", tmp_path / "merged")
    sys.path.insert(0, str(tmp_path))
    try:
        import alpha_probe

        measured = alpha_probe.measured(load_folder(tmp_path / "merged"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("alpha_probe", None)
    assert measured == pytest.approx(best, abs=1e-5)
    csv_header = (tmp_path / "s" / "results.csv").read_text().splitlines()[0]
    assert csv_header.startswith("attention,mlp,other,score,low,high,n,seconds")
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "s" / "score_vs_alpha.png").shape[2] in (3, 4)


def study_trials(out):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="expo-search", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials()


SLOW_SCORER = '''import time


def norm(model, tokenizer):
    time.sleep({pause})
    return float(model.model.embed_tokens.weight.float().norm())
'''


def start_worker(folder, pair, *extra, out="./s", host=None):
    """A worker process in ``folder``; with ``host``, as if on another machine: under that
    hostname, in a UTS namespace of its own."""
    command = [str(BIN / "mergekit-expo"), "search", str(pair[0]), str(pair[1]), "--scorer", "slow_scorer:norm",
               "--out", out, *map(str, extra)]
    if host is not None:
        namespace = ["unshare", "--uts"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
        command = [*namespace, "sh", "-c", 'hostname "$0" && exec "$@"', host, *command]
    return subprocess.Popen(command, cwd=folder, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def kill_mid_candidate(worker, out):
    """SIGKILL ``worker`` while it scores its second candidate (once its first is in ``out``'s results)."""
    deadline = time.time() + 120
    while not (out / "results.json").exists():
        assert worker.poll() is None and time.time() < deadline, worker.stderr.read() if worker.poll() else ""
        time.sleep(0.2)
    time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()


def test_two_workers_share_one_out_and_score_each_candidate_once(llama_pair, tmp_path):
    (tmp_path / "slow_scorer.py").write_text(SLOW_SCORER.format(pause=0.4))
    alphas = ",".join(f"{a / 10:g}" for a in range(16))
    workers = [start_worker(tmp_path, llama_pair, "--alphas", alphas) for _ in range(2)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
    trials = study_trials(tmp_path / "s")
    scored = [t for t in trials if t.state.name == "COMPLETE"]
    candidates = [t.user_attrs["candidate"]["alpha"] for t in scored]
    assert sorted(candidates) == [a / 10 for a in range(16)]  # each exactly once
    assert len({t.user_attrs["worker"]["pid"] for t in scored}) == 2  # both did some of the work
    # The same scores as one process alone.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "slow_scorer.py").write_text(SLOW_SCORER.format(pause=0))
    result = invoke("search", *llama_pair, "--scorer", "slow_scorer:norm", "--alphas", alphas, "--out", "./s",
                    cwd=alone)
    assert result.returncode == 0, result.stderr
    shared = {r["alpha"]: r["score"] for r in json.loads((tmp_path / "s" / "results.json").read_text())["results"]}
    single = {r["alpha"]: r["score"] for r in json.loads((alone / "s" / "results.json").read_text())["results"]}
    assert shared == single


@pytest.mark.parametrize("storage", ["default", pytest.param("journal", marks=pytest.mark.slow)])
def test_a_killed_workers_candidate_is_completed_by_the_other(storage, llama_pair, tmp_path):
    (tmp_path / "slow_scorer.py").write_text(SLOW_SCORER.format(pause=1.5))
    extra = ["--alphas", "0,0.2,0.4,0.6", "--heartbeat", "1"]
    if storage == "journal":
        extra += ["--storage", tmp_path / "study.journal"]
    first = start_worker(tmp_path, llama_pair, *extra)
    kill_mid_candidate(first, tmp_path / "s")
    second = start_worker(tmp_path, llama_pair, *extra)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    rows = json.loads((tmp_path / "s" / "results.json").read_text())["results"]
    assert sorted(r["alpha"] for r in rows) == [0.0, 0.2, 0.4, 0.6]  # every candidate, once
    if storage == "default":
        trials = study_trials(tmp_path / "s")
        failed = [t for t in trials if t.state.name == "FAIL"]
        assert len(failed) == 1 and failed[0].user_attrs["worker"]["pid"] == first.pid
        redone = [t for t in trials if t.state.name == "COMPLETE"
                  and t.user_attrs["candidate"] == failed[0].user_attrs["candidate"]]
        assert len(redone) == 1 and redone[0].user_attrs["worker"]["pid"] == second.pid


def test_a_candidate_taken_by_a_worker_killed_before_it_named_itself_is_given_back(llama_pair, tmp_path):
    # kill -9 between optuna's ask() and anything the worker records: no owner, no
    # heartbeat. A rerun must not wait for that trial forever.
    import optuna

    from mergekit_expo.search.study import CANDIDATE, GRID, ROLE

    (tmp_path / "slow_scorer.py").write_text(SLOW_SCORER.format(pause=0))
    worker = start_worker(tmp_path, llama_pair, "--alphas", "0,0.2", "--heartbeat", "1")
    assert worker.wait(timeout=300) == 0, worker.stderr.read()
    study = optuna.load_study(study_name="expo-search", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    study.enqueue_trial({}, user_attrs={ROLE: GRID, CANDIDATE: {"alpha": 0.4}})
    orphan = study.ask()  # RUNNING, and its worker is gone before it says who it is
    # The study's --alphas: while the orphan may still be a live worker's, other ones are refused.
    rerun = start_worker(tmp_path, llama_pair, "--alphas", "0,0.2", "--heartbeat", "1")
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    rows = json.loads((tmp_path / "s" / "results.json").read_text())["results"]
    assert sorted(r["alpha"] for r in rows) == [0.0, 0.2, 0.4]
    states = {t.number: t.state.name for t in study_trials(tmp_path / "s")}
    assert states[orphan.number] == "FAIL"


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory, llama_pair):
    """A pair whose tensor names have no self_attn: --space module cannot split it."""
    import shutil

    import transformers

    root = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    for name, perturb in (("sft", 0.0), ("aligned", 0.01)):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(perturb * torch.randn_like(parameter))
        model.save_pretrained(root / name)
        for file in llama_pair[1].glob("tokenizer*"):
            shutil.copy(file, root / name)
    return root / "sft", root / "aligned"


def test_bad_space_inputs_are_one_line_and_write_nothing(llama_pair, gpt2_pair, tmp_path):
    (tmp_path / "prefs.jsonl").write_text(json.dumps({"prompt": "w1", "chosen": "w2", "rejected": "w3"}) + "\n")
    cases = [
        (gpt2_pair, ["--space", "module"], "no tensor of this model is in the attention group"),
        (llama_pair, ["--trials", "5"], "--trials applies to --space module, depth or module+depth"),
        (llama_pair, ["--space", "depth", "--alpha-range", "1,0.5"], "--alpha-range 1,0.5: LO must be below HI"),
        (llama_pair, ["--space", "depth", "--alpha-range", "0,x"],
         "'x' is not a number: write e.g. --alpha-range 0,1"),
        (llama_pair, ["--space", "depth", "--alpha-range", "0,inf"], "write e.g. --alpha-range 0,1"),
        (llama_pair, ["--space", "depth", "--alphas", "0,1"], "--alphas applies to --space scalar"),
        (llama_pair, ["--sampler", "tpe"], "--space scalar scores the --alphas grid"),
        (llama_pair, ["--storage", "postgresql://nobody@127.0.0.1:9/none"], "cannot be opened"),
        (llama_pair, ["--storage", "./missing/study.journal"], "folder missing does not exist"),
        (llama_pair, ["--storage", "nonsense"], "neither a database URL"),
    ]
    for pair, args, message in cases:
        before = snapshot(tmp_path)
        result = invoke("search", *pair, "--data", "prefs.jsonl", "--out", "./o", *args, cwd=tmp_path)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode != 0 and len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert snapshot(tmp_path) == before, args


def test_resuming_with_another_space_or_range_is_refused(llama_pair, tmp_path):
    (tmp_path / "prefs.jsonl").write_text(json.dumps({"prompt": "w1", "chosen": "w2", "rejected": "w3"}) + "\n")
    base = ("search", *llama_pair, "--data", "prefs.jsonl", "--out", "./s", "--space", "depth", "--trials", 2)
    assert invoke(*base, cwd=tmp_path).returncode == 0
    again = invoke(*base[:-2], "--trials", 3, cwd=tmp_path)  # a larger budget continues the search
    assert again.returncode == 0 and "resuming: 3 candidates already scored" in again.stderr, again.stderr
    assert len(json.loads((tmp_path / "s" / "results.json").read_text())["results"]) == 4
    before = snapshot(tmp_path)
    refused = invoke(*base, "--alpha-range", "0,2", cwd=tmp_path)
    assert refused.returncode == 1
    assert "./s holds results of a different search: --alpha-range was [0.0, 1.0], now [0.0, 2.0]" in refused.stderr
    refused = invoke(*base[:-4], "--space", "module", cwd=tmp_path)
    assert "--space was 'depth', now 'module'" in refused.stderr
    assert snapshot(tmp_path) == before


def test_depth_search_writes_answers_and_a_card_with_the_vector(llama_pair, tmp_path):
    rows = [{"prompt": f"w{i} w{i + 1}", "chosen": f"w{i}", "rejected": f"w{i + 2}"} for i in range(4)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("search", *llama_pair, "--data", "prefs.jsonl", "--out", "./s", "--space", "depth",
                    "--trials", 3, "--sampler", "random", "--write-best", "./best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "s" / "results.json").read_text())["results"]
    for row in saved:
        answers = [json.loads(line) for line in (tmp_path / "s" / "answers" / f"{row['candidate']}.jsonl")
                   .read_text().splitlines()]
        assert [a["prompt"] for a in answers] == [r["prompt"] for r in rows]
        assert sum(a["score"] for a in answers) / len(answers) == pytest.approx(row["score"])
        assert all((a["logp_chosen"] > a["logp_rejected"]) == (a["score"] == 1.0) for a in answers)
    best = yaml.safe_load((tmp_path / "s" / "best.yml").read_text())
    assert len(best["models"][0]["parameters"]["alpha"]) == 2  # [α_first, α_last]
    card = (tmp_path / "best" / "README.md").read_text()
    assert "| α alpha first | α alpha last | score |" in card and "**chosen**" in card
    assert "space: `depth`" in card and "not with the search's choice" not in card


def test_help_is_grouped():
    result = invoke("search", "--help", cwd=".")
    for section in ("Scorer options", "lm-eval options", "Engine options", "Generation options",
                    "Space and workers options", "Output options"):
        assert section + ":" in result.stdout, section
    space_section = result.stdout.split("Space and workers options:")[1].split("Output options:")[0]
    assert all(f"--{o}" in space_section for o in ("space", "alpha-range", "trials", "sampler", "storage"))
    # the positional arguments come first, each described
    arguments = result.stdout.split("Arguments:")[1].split("Trajectory options:")[0]
    assert "SFT            The SFT model" in arguments and "CHECKPOINT...  The aligned model" in arguments
    assert "SFT" not in result.stdout.split("Other options:")[1]


def write_prefs(path, count):
    rows = [{"prompt": f"w{i} w{i + 1}", "chosen": f"w{i}", "rejected": f"w{i + 2}"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_an_out_belongs_to_one_study(llama_pair, tmp_path):
    """Reports of one study are never replaced by another's: another storage, data or scorer
    on an --out is refused before any work, naming what differs; the same study resumes."""
    write_prefs(tmp_path / "prefs.jsonl", 3)
    write_prefs(tmp_path / "prefs2.jsonl", 2)
    search = ("search", *llama_pair, "--alphas", "0,0.5", "--strategy", "full")
    assert invoke(*search, "--data", "prefs.jsonl", "--out", "./s", cwd=tmp_path).returncode == 0
    assert invoke(*search, "--data", "prefs.jsonl", "--out", "./j", "--storage", "./one.journal",
                  cwd=tmp_path).returncode == 0
    journal = str(tmp_path / "one.journal")
    (tmp_path / "held").mkdir()  # a default study whose first candidate was never scored
    shutil.copy(tmp_path / "s" / "study.db", tmp_path / "held")
    cases = [
        (["--data", "prefs2.jsonl", "--storage", "./x.journal", "--out", "./s"],
         ["--storage was not set (the study in ./s), now " + str(tmp_path / "x.journal"), "--data"]),
        (["--data", "prefs.jsonl", "--scorer", "nowhere:score", "--storage", "./x.journal", "--out", "./s"],
         ["--storage was not set", "--scorer was 'preference', now 'nowhere:score'"]),
        (["--data", "prefs.jsonl", "--storage", "./two.journal", "--out", "./j"],
         [f"--storage was {journal}, now {tmp_path / 'two.journal'}"]),
        (["--data", "prefs.jsonl", "--out", "./j"], [f"--storage was {journal}, now not set"]),
        (["--data", "prefs.jsonl", "--storage", "./x.journal", "--out", "./held"], ["--storage was not set"]),
    ]
    for args, named in cases:
        before = snapshot(tmp_path)
        result = invoke(*search, *args, cwd=tmp_path)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode == 1 and len(errors) == 1, (args, result.stderr)
        assert all(text in errors[0] for text in named) and "use another --out" in errors[0], errors[0]
        assert "Traceback" not in result.stderr and snapshot(tmp_path) == before, args
    for args in (["--out", "./s"], ["--out", "./j", "--storage", "./one.journal"]):
        again = invoke(*search, "--data", "prefs.jsonl", *args, cwd=tmp_path)
        assert again.returncode == 0 and "resuming: 2 of 2" in again.stderr, again.stderr


def test_workers_of_one_study_take_one_budget(llama_pair, tmp_path):
    """A worker joining with another --trials is refused; a budget raised while a worker runs
    (a rerun that came between its candidates) is followed, so its --out ends with every candidate."""
    import optuna

    from mergekit_expo.search.study import PLAN

    (tmp_path / "slow_scorer.py").write_text(SLOW_SCORER.format(pause=2))
    first = start_worker(tmp_path, llama_pair, "--space", "depth", "--trials", 3, "--sampler", "random")
    deadline = time.time() + 120
    # results.json: the study is set up (reading it earlier races the worker creating its tables)
    while not (tmp_path / "s" / "results.json").exists() or not any(
            t.state.name == "RUNNING" for t in study_trials(tmp_path / "s")):
        assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else ""
        time.sleep(0.1)
    joined = invoke("search", *llama_pair, "--scorer", "slow_scorer:norm", "--out", "./s", "--space", "depth",
                    "--trials", 4, "--sampler", "random", cwd=tmp_path)
    errors = [line for line in joined.stderr.splitlines() if line.startswith("Error:")]
    assert joined.returncode == 1 and len(errors) == 1 and "--trials was 3, now 4" in errors[0], joined.stderr
    study = optuna.load_study(study_name="expo-search", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    study.set_user_attr(PLAN, {"trials": 4})
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    rows = json.loads((tmp_path / "s" / "results.json").read_text())["results"]
    assert len(rows) == 5 and "this worker scored 5 candidates" in stderr
