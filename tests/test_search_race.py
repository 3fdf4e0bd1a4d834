"""`search --race`: the α grid scored block by block of dev rows, clear losers dropped, with
real scorers on tiny generated pairs; workers share the race through the study."""

import csv
import json

import pytest
import torch

from conftest import invoke
from mergekit_expo.search.race import row_blocks
from test_search_space import kill_mid_candidate, start_worker, study_trials

# A user scorer that reads the α the in-place weights have back from them: its per-row
# scores peak at α = 0.3, plus seeded noise per (row, α); calls are logged.
PROBE = '''"""Per-row scores with a known peak."""
import json
import random
import time

from safetensors.torch import load_file

SFT = load_file({sft!r})["model.embed_tokens.weight"].double()
ALIGNED = load_file({aligned!r})["model.embed_tokens.weight"].double()


def alpha_of(model):
    delta = ALIGNED - SFT
    weights = model.model.embed_tokens.weight.detach().double()
    return round(float(((weights - ALIGNED) * delta).sum() / (delta * delta).sum()), 2)


def norm(model, tokenizer, rows):
    time.sleep({pause})
    alpha = alpha_of(model)
    with open("calls.jsonl", "a") as log:
        log.write(json.dumps({{"alpha": alpha, "rows": rows}}) + "\\n")
    return [-4 * (alpha - 0.3) ** 2 + random.Random(row * 1000 + round(alpha * 100)).gauss(0, {noise})
            for row in rows]


norm.rows = {rows}


def guard(model, tokenizer, rows):
    alpha = alpha_of(model)
    return [-alpha + random.Random(row + 7).gauss(0, 0.02) for row in rows]


guard.rows = 24


def plain(model, tokenizer):
    return 1.0
'''


@pytest.fixture(scope="module")
def f32_pair(pair_factory):
    return pair_factory(dtype=torch.float32, delta_scale=0.3)


def write_probe(folder, pair, *, rows=64, noise=1.0, pause=0.0):
    (folder / "slow_scorer.py").write_text(PROBE.format(
        sft=str(pair[0] / "model.safetensors"), aligned=str(pair[1] / "model.safetensors"), rows=rows,
        noise=noise, pause=pause))


def saved(out):
    return json.loads((out / "results.json").read_text())


def by_alpha(out):
    return {row["alpha"]: row for row in saved(out)["results"]}


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


# -- preference, end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def preferences(llama_pair, tmp_path_factory):
    """64 rows whose chosen answer is the one the aligned model prefers (read from a full
    search at α = 0): far α lose rows that α = 0 wins, by a clear margin."""
    import random

    folder = tmp_path_factory.mktemp("race-prefs")
    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(60)}" for _ in range(n))  # noqa: E731
    rows = [{"prompt": words(5), "chosen": words(4), "rejected": words(4)} for _ in range(64)]
    (folder / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("search", *llama_pair, "--data", "raw.jsonl", "--alphas", "0", "--out", "./full0",
                    "--strategy", "full", cwd=folder)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in (folder / "full0/answers/alpha=0.jsonl").read_text().splitlines()]
    flipped = [dict(row, chosen=row["rejected"], rejected=row["chosen"])
               if answer["logp_chosen"] < answer["logp_rejected"] else row
               for row, answer in zip(rows, answers)]
    (folder / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in flipped))
    return folder / "prefs.jsonl", answers


def test_preference_race_drops_clear_losers_on_fewer_rows(llama_pair, preferences, tmp_path):
    data, full_answers = preferences
    alphas = [0.0, 0.5, 2.0, 8.0, 16.0]
    result = invoke("search", *llama_pair, "--data", data, "--alphas", ",".join(f"{a:g}" for a in alphas),
                    "--out", "./s", "--race", "--seed", "3", "--write-best", "./best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "s"
    race, rows = saved(out)["race"], by_alpha(out)
    blocks = row_blocks(64, seed=3)
    assert race["rows"] == 64 and race["block_rows"] == len(blocks[0]) == 16 and race["tolerance"] == 3.0
    assert sorted(rows) == alphas
    dropped = {a: r["dropped_in"] for a, r in rows.items() if r["dropped_in"] is not None}
    retired = {a: r["retired_in"] for a, r in rows.items() if r["retired_in"] is not None}
    survivors = [a for a, r in rows.items() if a not in dropped and a not in retired]
    assert 16.0 in dropped and survivors  # far α lose clearly
    for alpha, round_number in (dropped | retired).items():  # scored up to the round it went in
        assert rows[alpha]["n"] == 16 * round_number < 64
    assert {rows[a]["n"] for a in survivors} == {16 * race["rounds"]}
    assert race["ended"] == "every row is scored" or race["rounds"] < len(blocks)
    assert race["rows_scored"] == sum(r["n"] for r in rows.values()) < race["rows_full"] == 64 * 5
    # Each candidate's answers are the rows of its blocks, in the seeded order, and its score is their mean.
    for row in rows.values():
        answers = [json.loads(line) for line in (out / "answers" / f"{row['candidate']}.jsonl")
                   .read_text().splitlines()]
        assert [a["row"] for a in answers] == [i for block in blocks[:row["n"] // 16] for i in block]
        assert sum(a["score"] for a in answers) / len(answers) == pytest.approx(row["score"])
    # α = 0's rows score what the full search gave them.
    for answer in (json.loads(line) for line in (out / "answers/alpha=0.jsonl").read_text().splitlines()):
        assert answer["logp_chosen"] == pytest.approx(
            max(full_answers[answer["row"]]["logp_chosen"], full_answers[answer["row"]]["logp_rejected"]),
            abs=1e-3)
    with open(out / "results.csv", newline="") as handle:
        table = {float(r["alpha"]): r for r in csv.DictReader(handle)}
    assert table[16.0]["dropped_in"] == str(dropped[16.0]) and table[survivors[0]]["dropped_in"] == ""
    assert [line for line in result.stderr.splitlines() if line.startswith("race: ")] == [
        f"race: scored {race['rows_scored']} of 320 candidate rows "
        f"({100 * race['rows_scored'] / 320:.0f}%) in {race['rounds']} "
        f"round{'s' if race['rounds'] > 1 else ''}; "
        f"ended: {race['ended']}"]
    best = max(survivors, key=lambda a: rows[a]["score"])
    assert f"alpha: {best}" in (out / "best.yml").read_text()
    card = (tmp_path / "best" / "README.md").read_text()
    assert "raced (`--race`)" in card and f"{race['rows_scored']} of 320 candidate rows" in card
    assert "unable to beat it by more than 3 standard errors of their paired difference" in card
    rounds = f"in {race['rounds']} round{'s' if race['rounds'] != 1 else ''} (ended: {race['ended']}); "
    assert rounds + "the rows column gives how many rows each candidate was scored on" in card
    assert f"| 16 (dropped in round {dropped[16.0]}) |" in card
    assert retired, rows  # 8.0 goes as unable to beat the leader by the tolerance
    assert all(f"| {16 * r} (within the tolerance from round {r}) |" in card for r in retired.values())
    assert race["retired"].keys() == {rows[a]["candidate"] for a in retired}
    # What a reader sees: each mean beside its rows, the pick's mean on the same rows, each verdict,
    # and why the pick is the pick (a mean over fewer rows can be higher than the pick's).
    lines = result.stdout.splitlines()
    header, table = lines[0], lines[1:1 + len(rows)]
    summary = {line.split()[0]: line for line in table}
    assert "pick there" in header and "rows" in header.split()
    for alpha, row in rows.items():
        line = summary[f"{alpha:g}"]
        picked = race["survivors"] == [row["candidate"]]
        assert line.split()[4] == str(row["n"]) and line.endswith(
            "pick" if picked else f"dropped in round {dropped[alpha]}" if alpha in dropped
            else f"within the tolerance from round {retired[alpha]}")
        leader = [a["score"] for a in map(json.loads, (out / "answers/alpha={:g}.jsonl".format(best))
                                          .read_text().splitlines())]
        assert row["pick_score"] == (None if picked else pytest.approx(sum(leader[:row["n"]]) / row["n"]))
    assert f"best alpha = {best:g} (score {rows[best]['score']:.4g} on {rows[best]['n']} rows): the race's " \
        "leader; each other alpha was dropped" in result.stdout
    assert all("(the leader then" in why for why in (*race["dropped"].values(), *race["retired"].values()))


def test_an_out_holding_someone_elses_results_json_is_refused_untouched(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=40, noise=0.05)
    for name, text in (("not-json", "nope\n"), ("other-json", '{"hello": 1}\n'), ("empty-json", "{}\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
        result = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--alphas", "0.3",
                        "--out", f"./{name}", cwd=tmp_path)
        lines = error_lines(result)
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert "is not the results.json of a search: use another --out" in lines[0]
        assert [p.name for p in (tmp_path / name).iterdir()] == ["results.json"]
        assert (tmp_path / name / "results.json").read_text() == text


def test_a_rerun_with_another_tolerance_says_so(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=40, noise=0.05)
    command = ("search", *f32_pair, "--scorer", "slow_scorer:norm", "--race", "--alphas", "0.3,0.6",
               "--out", "./s")
    assert invoke(*command, cwd=tmp_path).returncode == 0
    again = invoke(*command, "--race-tolerance", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert ("--race-tolerance was 3, now 2: every score is reused and the race judged again under the new "
            "tolerance") in again.stderr


# -- callables, refusals ------------------------------------------------------------------------
def test_a_callable_with_rows_races_and_one_without_is_refused(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=40, noise=0.05)
    result = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--alphas", "0.3,1,3", "--race",
                    "--out", "./s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    first = row_blocks(40, seed=0)[0]
    assert len(calls) == 4 and all(call["rows"] == first for call in calls)  # one round, 16 of 40 rows
    assert sorted(call["alpha"] for call in calls) == [0.0, 0.3, 1.0, 3.0]
    race, rows = saved(tmp_path / "s")["race"], by_alpha(tmp_path / "s")
    assert race["ended"] == "one candidate left" and race["rows_scored"] == 64 and race["rows_full"] == 160
    assert [a for a, r in rows.items() if r["dropped_in"] is None] == [0.3]
    # Another search on the same --out: refused, naming --race.
    again = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--alphas", "0.3,1,3", "--out", "./s",
                   cwd=tmp_path)
    assert again.returncode != 0 and "--race was set, now not set" in error_lines(again)[-1]
    # --race-tolerance alone would be a silently full search
    alone = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--race-tolerance", "1",
                   "--out", "./refused", cwd=tmp_path)
    assert alone.returncode == 1 and "add --race" in error_lines(alone)[0], alone.stderr
    assert not (tmp_path / "refused").exists()

    refusals = [(["--scorer", "slow_scorer:plain"], "has no `rows` attribute"),
                (["--scorer", "slow_scorer:norm", "--space", "module", "--race-tolerance", "1"],
                 "--race-tolerance ends the race of the --alphas grid"),
                (["--scorer", "slow_scorer:norm", "--refine"], "--race cannot --refine"),
                (["--scorer", "slow_scorer:norm", "--race-tolerance", "inf"], "must be a finite number"),
                (["--scorer", "slow_scorer:norm", "--guard", "slow_scorer:plain", "--max-drop", "0.1"],
                 "--race cannot use --guard slow_scorer:plain")]
    for extra, message in refusals:
        refused = invoke("search", *f32_pair, *extra, "--race", "--out", "./refused", cwd=tmp_path)
        lines = error_lines(refused)
        assert refused.returncode == 1 and len(lines) == 1 and message in lines[0], refused.stderr
        assert not (tmp_path / "refused").exists()


DOCS_PRELUDE = """
from slow_scorer import alpha_of

DEV = [0.1 * i for i in range({rows})]


def my_row_score(model, tokenizer, x):
    return -((alpha_of(model) - 0.3) ** 2) + x
"""


def docs_snippet(marker: str) -> str:
    """The Python block of docs/search.md that contains ``marker``, dedented, as written."""
    import re
    import textwrap
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "search.md").read_text()
    blocks = [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", text, re.S)]
    return next(block for block in blocks if marker in block)


def test_the_docs_racing_function_runs_raced_and_full(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=1, noise=0.0)
    snippet = docs_snippet("score.rows = len(DEV)")
    (tmp_path / "dev_scorer.py").write_text(DOCS_PRELUDE.format(rows=20) + snippet)
    (tmp_path / "tiny_scorer.py").write_text(DOCS_PRELUDE.format(rows=5) + snippet)
    runs = {name: invoke("search", *f32_pair, "--scorer", "dev_scorer:score", "--alphas", "0.3,1", *extra,
                         "--out", f"./{name}", cwd=tmp_path)
            for name, extra in (("full", ()), ("raced", ("--race",)))}
    assert all(result.returncode == 0 for result in runs.values()), runs["full"].stderr + runs["raced"].stderr
    full = by_alpha(tmp_path / "full")
    for alpha in (0.0, 0.3, 1.0):  # every row, against the function's own arithmetic
        expected = sum(-((alpha - 0.3) ** 2) + 0.1 * i for i in range(20)) / 20
        assert full[alpha]["n"] == 20 and full[alpha]["score"] == pytest.approx(expected, abs=1e-9)
        assert full[alpha]["low"] < expected < full[alpha]["high"]
    assert saved(tmp_path / "raced")["race"]["rows"] == 20
    # A race of one block cannot drop anything before every row is scored: it says so.
    tiny = invoke("search", *f32_pair, "--scorer", "tiny_scorer:score", "--alphas", "0.3", "--race",
                  "--out", "./tiny", cwd=tmp_path)
    assert tiny.returncode == 0, tiny.stderr
    assert "--race: --scorer tiny_scorer:score scores 5 dev rows, one block" in tiny.stderr
    assert "this is a full search" in tiny.stderr
    assert "one block" not in runs["raced"].stderr


def test_a_rerun_continues_the_race_under_another_tolerance(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=64, noise=0.3)
    common = ["--scorer", "slow_scorer:norm", "--alphas", "0.2,0.3,0.4,2", "--race", "--out", "./s"]
    first = invoke("search", *f32_pair, *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    scored = saved(tmp_path / "s")["race"]["rows_scored"]
    again = invoke("search", *f32_pair, *common, "--race-tolerance", "0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    race = saved(tmp_path / "s")["race"]
    assert race["tolerance"] == 0 and race["rows_scored"] > scored  # continued: more rows, same study


def probe_mean(alpha: float, rows: int, noise: float) -> float:
    """The probe's score of an embedding α over all its rows, computed as it computes it."""
    import random

    alpha = round(alpha, 2)
    return sum(-4 * (alpha - 0.3) ** 2 + random.Random(row * 1000 + round(alpha * 100)).gauss(0, noise)
               for row in range(rows)) / rows


def test_a_sampled_space_prunes_clear_losers_block_by_block(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=64, noise=0.5)
    result = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--space", "module", "--sampler",
                    "random", "--trials", "6", "--alpha-range", "0,3", "--race", "--out", "./s",
                    "--write-best", "./best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = saved(tmp_path / "s")
    race, rows = found["race"], found["results"]
    blocks = row_blocks(64, seed=0)
    assert race["kind"] == "sampled" and race["rows"] == 64 and len(rows) == 7  # α = 0 and 6 drawn
    pruned = [r for r in rows if r["dropped_in"] is not None]
    assert pruned and all(r["n"] == 16 * r["dropped_in"] < 64 for r in pruned)
    assert all(r["n"] == 64 for r in rows if r["dropped_in"] is None)
    assert not any(rows[0]["alphas"].values()) and rows[0]["dropped_in"] is None  # α = 0: never pruned
    # each candidate was scored on the first blocks of the seeded order, block by block
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [(c["alpha"], c["rows"]) for c in calls] == [
        (round(row["alphas"]["other"], 2), block) for row in rows for block in blocks[:row["n"] // 16]]
    # the candidate best on all rows is never pruned, and the pick is the best fully scored one
    truth = {r["candidate"]: probe_mean(r["alphas"]["other"], 64, 0.5) for r in rows}
    assert max(truth, key=truth.get) not in {r["candidate"] for r in pruned}
    best = max((r for r in rows if r["dropped_in"] is None), key=lambda r: r["score"])
    assert f"other={best['alphas']['other']:.4g})" in (tmp_path / "s" / "best.yml").read_text()
    # optuna sees the pruned candidates as PRUNED, each block's running mean reported
    states = {t.user_attrs["row"]["candidate"]: t for t in study_trials(tmp_path / "s") if "row" in t.user_attrs}
    for row in rows:
        trial = states[row["candidate"]]
        assert trial.state.name == ("PRUNED" if row["dropped_in"] else "COMPLETE")
        assert sorted(trial.intermediate_values) == [16 * (i + 1) for i in range(row["n"] // 16)]
    assert race["rows_scored"] == sum(r["n"] for r in rows) < race["rows_full"] == 64 * 7
    assert f"pruning {len(pruned)} candidates" in [line for line in result.stderr.splitlines()
                                                   if line.startswith("race: ")][0]
    card = (tmp_path / "best" / "README.md").read_text()
    assert "pruned once clearly worse than the best candidate scored on every row so far" in card
    assert f"| {pruned[0]['n']} (pruned after block {pruned[0]['dropped_in']}) |" in card


def test_a_guarded_sampled_space_says_who_the_guard_pruned_and_that_they_stay_pruned(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=64, noise=0.3)
    common = ("search", *f32_pair, "--scorer", "slow_scorer:norm", "--guard", "slow_scorer:guard", "--space",
              "module", "--sampler", "random", "--trials", "4", "--alpha-range", "0,3", "--race", "--out", "./s")
    result = invoke(*common, "--max-drop", "0.2", "--write-best", "./best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = saved(tmp_path / "s")
    by_guard = [row for row in found["results"] if "guard" in found["race"]["dropped"].get(row["candidate"], "")]
    assert by_guard and all(row["dropped_in"] == 1 for row in by_guard)  # the guard falls by α, 0.2 allowed
    card = (tmp_path / "best" / "README.md").read_text()
    assert f"| {by_guard[0]['n']} (pruned by the guard after block 1) |" in card
    said = result.stdout + result.stderr
    assert f"dropped by the guard after {by_guard[0]['n']} rows" in said
    pruned = len(found["race"]["dropped"])
    assert f"pruning {pruned} candidates ({len(by_guard)} by the guard)" in said
    assert "on the rows both were scored on, or its guard clearly more than --max-drop below alpha = 0's" in said
    assert "so far, or its guard clearly more than --max-drop below α = 0's (95% confidence" in card
    again = invoke(*common, "--max-drop", "5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert ("--max-drop was 0.2, now 5: every score is reused and the pick chosen again among the candidates "
            "scored on every row (those pruned stay pruned)") in again.stderr
    assert saved(tmp_path / "s")["race"]["dropped"] == found["race"]["dropped"]


def test_guarded_race_keeps_alpha_0_and_never_picks_an_unguarded_alpha(f32_pair, tmp_path):
    write_probe(tmp_path, f32_pair, rows=48, noise=0.3)
    result = invoke("search", *f32_pair, "--scorer", "slow_scorer:norm", "--guard", "slow_scorer:guard",
                    "--max-drop", "0.2", "--alphas", "0.1,0.3,0.6", "--race", "--out", "./s",
                    "--write-best", "./best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    race, rows = saved(tmp_path / "s")["race"], by_alpha(tmp_path / "s")
    assert rows[0.3]["dropped_in"] == 1 and rows[0.6]["dropped_in"] == 1  # the guard falls by 0.3 and 0.6
    assert "guard" in race["dropped"]["alpha=0.3"]
    # how the race ended, and each dropped row, name the guard (none of them was below the pick)
    assert race["ended"] == ("every other candidate is below alpha=0.1, within the tolerance of it or "
                             "dropped by the guard")
    card = (tmp_path / "best" / "README.md").read_text()
    assert f"| {rows[0.3]['n']} (dropped by the guard in round 1) |" in card
    assert rows[0.0]["n"] == 16 * race["rounds"]  # α = 0: on every block of the race
    assert rows[0.1]["dropped_in"] is None and abs(rows[0.1]["guard"] - rows[0.0]["guard"]) < 0.2
    assert "alpha: 0.1" in (tmp_path / "s" / "best.yml").read_text()
    # The guard's rows: its own 24, cut into as many blocks as the score's 48.
    units = [t.user_attrs["row"] for t in study_trials(tmp_path / "s") if t.state.name == "COMPLETE"]
    guard_blocks = row_blocks(24, seed=0, count=3)
    assert all(unit["guard_rows"] == guard_blocks[unit["block"]] for unit in units)


def test_the_card_does_not_call_a_gain_noise_that_the_race_found_clear(f32_pair, tmp_path):
    """Rows differ far more than α does: each mean's interval is wide, but every row moves α = 0
    and the pick together, so the race's paired test drops α = 0 at once."""
    write_probe(tmp_path, f32_pair, rows=64)
    with (tmp_path / "slow_scorer.py").open("a") as module:
        module.write("\n\ndef shared(model, tokenizer, rows):\n    alpha = alpha_of(model)\n"
                     "    return [random.Random(row).gauss(0, 1) - 2 * (alpha - 0.3) ** 2 for row in rows]\n\n\n"
                     "shared.rows = 64\n")
    result = invoke("search", *f32_pair, "--scorer", "slow_scorer:shared", "--alphas", "0.3,0.6", "--race",
                    "--out", "./s", "--write-best", "./best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = by_alpha(tmp_path / "s")
    assert rows[0.0]["dropped_in"] == 1 and rows[0.3]["low"] <= rows[0.0]["high"]  # paired clear, intervals not
    card = (tmp_path / "best" / "README.md").read_text()
    assert "within the noise" not in card
    assert "the race found α = 0 clearly below its leader then (dropped in round 1)" in card


def test_a_rerun_under_a_looser_rule_reports_what_a_fresh_run_would(f32_pair, tmp_path):
    """A looser --race-tolerance ends the race earlier than the rows an earlier run read: the
    reports show the race as judged now (the rows it reads), as a fresh run under it does."""
    import shutil

    write_probe(tmp_path, f32_pair, rows=64, noise=0.3)
    common = ("search", *f32_pair, "--scorer", "slow_scorer:norm", "--alphas", "0.25,0.3,0.35", "--race")
    assert invoke(*common, "--out", "./tight", cwd=tmp_path).returncode == 0
    shutil.copytree(tmp_path / "tight", tmp_path / "rerun")
    rerun = invoke(*common, "--race-tolerance", "30", "--out", "./rerun", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert invoke(*common, "--race-tolerance", "30", "--out", "./fresh", cwd=tmp_path).returncode == 0

    def rows(out):
        return [{k: v for k, v in row.items() if k not in ("seconds", "update_seconds", "trial")}
                for row in saved(tmp_path / out)["results"]]

    assert sum(row["n"] for row in rows("fresh")) < sum(row["n"] for row in rows("tight"))
    assert rows("rerun") == rows("fresh") and saved(tmp_path / "rerun")["race"] == saved(tmp_path / "fresh")["race"]


# -- reward model and lm-eval --------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_model(llama_pair, tmp_path_factory):
    import transformers

    from mergekit_expo.synthetic import PairSpec, model_config

    torch.manual_seed(1)
    config = model_config(PairSpec(), vocab_size=64)
    config.num_labels = 1
    folder = tmp_path_factory.mktemp("reward")
    transformers.LlamaForSequenceClassification(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(llama_pair[0]).save_pretrained(folder)
    return folder


def test_reward_model_races_on_generations(llama_pair, reward_model, tmp_path):
    prompts = "".join(json.dumps({"prompt": f"w{i} w{i + 3} w{i + 5}"}) + "\n" for i in range(20))
    (tmp_path / "prompts.jsonl").write_text(prompts)
    result = invoke("search", *llama_pair, "--scorer", "reward-model", "--reward-model", reward_model,
                    "--data", "prompts.jsonl", "--max-new-tokens", 3, "--alphas", "0.5,20", "--race",
                    "--out", "./s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    race, rows = saved(tmp_path / "s")["race"], by_alpha(tmp_path / "s")
    assert race["rows"] == 20 and race["block_rows"] == 16 and race["rows_full"] == 60
    assert all(row["n"] in (16, 20) for row in rows.values())
    for row in rows.values():
        answers = [json.loads(line) for line in (tmp_path / "s" / "answers" / f"{row['candidate']}.jsonl")
                   .read_text().splitlines()]
        assert len(answers) == row["n"] and all("answer" in a for a in answers)
        assert sum(a["score"] for a in answers) / row["n"] == pytest.approx(row["score"], rel=1e-6)
    line = next(line for line in result.stderr.splitlines() if line.startswith("race: "))
    assert line.endswith(f"; generations: {race['rows_scored']} of the 60 a full search makes")


@pytest.fixture(scope="module")
def choice_task(tmp_path_factory):
    import random

    import yaml

    folder = tmp_path_factory.mktemp("race-tasks")
    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(4, 60)}" for _ in range(n))  # noqa: E731
    docs = [{"question": words(4), "choices": [words(3) for _ in range(3)], "label": rng.randrange(3)}
            for _ in range(24)]
    (folder / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "race_choice.yaml").write_text(yaml.safe_dump({
        "task": "race_choice", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(folder / "choice.jsonl")}},
        "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "label", "metric_list": [{"metric": "acc"}]}))
    return folder


def test_lm_eval_races_on_documents(pair_factory, choice_task, tmp_path):
    pair = pair_factory(delta_scale=0.3)
    common = ["--scorer", "lm-eval:race_choice", "--tasks-path", choice_task, "--alphas", "0.5",
              "--batch-size", 4]
    raced = invoke("search", *pair, *common, "--race", "--race-tolerance", "0", "--out", "./raced",
                   cwd=tmp_path)
    assert raced.returncode == 0, raced.stderr
    full = invoke("search", *pair, *common, "--out", "./full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    race, rows = saved(tmp_path / "raced")["race"], by_alpha(tmp_path / "raced")
    whole = by_alpha(tmp_path / "full")
    assert race["rows"] == 24 and race["rows_full"] == 48
    units = [t.user_attrs["row"] for t in study_trials(tmp_path / "raced") if t.state.name == "COMPLETE"]
    assert all(set(unit["values"]) <= {0.0, 1.0} for unit in units)  # each document's accuracy
    assert {row["n"] for row in rows.values()} <= {16, 24} and race["rows_scored"] > 32
    for alpha, row in rows.items():
        if row["n"] == 24:  # every document: lm-eval's own score of the whole task
            assert row["score"] == pytest.approx(whole[alpha]["score"])


# -- workers ------------------------------------------------------------------------------------
def unit_counts(out):
    counts = {}
    for trial in study_trials(out):
        if trial.state.name == "COMPLETE":
            key = (trial.user_attrs["candidate"]["alpha"], trial.user_attrs["candidate"]["block"])
            counts[key] = counts.get(key, 0) + 1
    return counts


def scores_alone(pair, folder, alphas, *options):
    folder.mkdir()
    write_probe(folder, pair, rows=32)
    result = invoke("search", *pair, "--scorer", "slow_scorer:norm", "--alphas", alphas, "--race", *options,
                    "--out", "./s", cwd=folder)
    assert result.returncode == 0, result.stderr
    return {a: (r["score"], r["n"], r["dropped_in"]) for a, r in by_alpha(folder / "s").items()}


def test_two_workers_score_each_candidate_block_once(f32_pair, tmp_path):
    alphas = "0.3,0.6,1,3"
    write_probe(tmp_path, f32_pair, rows=32, pause=0.3)
    exact = ("--race-tolerance", "0")  # no equivalence stop: the race needs its second round
    workers = [start_worker(tmp_path, f32_pair, "--alphas", alphas, "--race", *exact) for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
    counts = unit_counts(tmp_path / "s")
    assert set(counts.values()) == {1}  # each (candidate, block) scored exactly once
    race = saved(tmp_path / "s")["race"]
    assert len(counts) == race["rows_scored"] // 16 < 5 * 2 and race["rounds"] == 2
    pids = {t.user_attrs["worker"]["pid"] for t in study_trials(tmp_path / "s") if t.state.name == "COMPLETE"}
    assert len(pids) == 2  # both did some of the work
    shared = {a: (r["score"], r["n"], r["dropped_in"]) for a, r in by_alpha(tmp_path / "s").items()}
    assert shared == scores_alone(f32_pair, tmp_path / "alone", alphas, *exact)


@pytest.mark.slow
def test_a_race_killed_mid_unit_resumes_and_completes(f32_pair, tmp_path):
    alphas = "0.3,0.6,1,3"
    write_probe(tmp_path, f32_pair, rows=32, pause=1.0)
    first = start_worker(tmp_path, f32_pair, "--alphas", alphas, "--race", "--heartbeat", 1)
    kill_mid_candidate(first, tmp_path / "s")
    assert saved(tmp_path / "s").get("race", {}).get("ended") is None  # mid-race
    second = start_worker(tmp_path, f32_pair, "--alphas", alphas, "--race", "--heartbeat", 1)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert "resuming the race" in stderr
    assert set(unit_counts(tmp_path / "s").values()) == {1}
    resumed = {a: (r["score"], r["n"], r["dropped_in"]) for a, r in by_alpha(tmp_path / "s").items()}
    assert resumed == scores_alone(f32_pair, tmp_path / "alone", alphas)
