"""Search workers sharing one study in a real PostgreSQL server (the `postgres` fixture);
the driver checks; a storage that stops answering mid-search, for every storage kind."""

import json
import re
import shlex
import sys

import pytest
import tomllib

from conftest import REPO, invoke, run_cli, snapshot
from postgres_server import PASSWORD
from test_search_space import SLOW_SCORER, kill_mid_candidate, start_worker

NORM = "float(model.model.embed_tokens.weight.float().norm())"

# Each worker's first candidate waits for the other worker's: both take part, in any order.
RENDEZVOUS_SCORER = f'''import os
import time
from pathlib import Path


def norm(model, tokenizer):
    mine = Path(f"started-{{os.getpid()}}")
    if not mine.exists():
        mine.touch()
        deadline = time.time() + 120
        while len(list(Path().glob("started-*"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
    time.sleep(0.3)
    return {NORM}
'''

# Scores the embeddings' norm, and breaks the storage once, while scoring the second candidate.
BREAKING_SCORER = f'''import os
import sqlite3
import subprocess
from pathlib import Path

held = []


def break_storage():
{{}}


def norm(model, tokenizer):
    if Path("seen").exists() and not Path("broken").exists():
        Path("broken").touch()
        break_storage()
    Path("seen").touch()
    return {NORM}
'''
# the shared filesystem gone: the journal's path no longer a file
JOURNAL_GONE = "    os.rename('study.journal', 'study.journal.away')\n    os.mkdir('study.journal')"
# another program holds the database locked for longer than SQLite waits (5 s)
SQLITE_LOCKED = "    held.append(sqlite3.connect('s/study.db'))\n    held[0].execute('BEGIN EXCLUSIVE')"


def study_of(url):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="expo-search", storage=url).get_trials()


def results_of(out):
    return {row["alpha"]: row["score"] for row in json.loads((out / "results.json").read_text())["results"]}


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def write_prefs(path, rows=4):
    path.write_text("".join(json.dumps({"prompt": f"w{i} w2", "chosen": f"w{i + 3}", "rejected": "w9"}) + "\n"
                            for i in range(rows)))


@pytest.mark.parametrize("url, module, install", [
    ("postgresql://expo:secret@127.0.0.1:9/db", "psycopg", "pip install 'mergekit-expo[postgres]'"),
    ("postgresql+psycopg2://expo:secret@127.0.0.1:9/db", "psycopg2", "pip install psycopg2-binary"),
])
def test_a_missing_driver_is_one_line_naming_what_to_install(url, module, install, llama_pair, tmp_path,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # the driver not installed: `import` fails
    write_prefs(tmp_path / "prefs.jsonl")
    before = snapshot(tmp_path)
    result = invoke("search", *llama_pair, "--data", "prefs.jsonl", "--storage", url, "--out", "./o",
                    cwd=tmp_path)
    assert result.returncode == 1 and len(error_lines(result)) == 1, result.stderr
    assert f"needs the database driver {module}, which cannot be imported" in result.stderr
    assert result.stderr.rstrip().endswith(install) and "secret" not in result.stderr
    assert "Traceback" not in result.stderr and snapshot(tmp_path) == before


def stop_then_resume(tmp_path, pair, break_storage, storage, restore):
    """A worker whose storage ``break_storage`` breaks mid-search stops with one line; once
    ``restore()`` has run, the same command resumes and scores every candidate. Returns the
    error line."""
    (tmp_path / "breaking_scorer.py").write_text(BREAKING_SCORER.format(break_storage))
    command = ("search", *pair, "--scorer", "breaking_scorer:norm", "--alphas", "0.5,1", "--out", "./s",
               *(["--storage", storage] if storage else []))
    try:  # its own process: the rerun must see that the worker holding the candidate is gone
        failed = run_cli("mergekit-expo", *command, cwd=tmp_path, check=False, process=True)
    finally:
        restore()
    assert failed.returncode == 1 and len(error_lines(failed)) == 1, failed.stderr
    assert "Traceback" not in failed.stderr and "StorageInternalError" not in failed.stderr
    assert "rerun the same command to resume once it is reachable again" in failed.stderr
    assert list(results_of(tmp_path / "s")) == [0.0]  # what was scored before it broke
    rerun = invoke(*command, cwd=tmp_path)
    assert rerun.returncode == 0 and "resuming: 1 of 3 α already scored" in rerun.stderr, rerun.stderr
    assert sorted(results_of(tmp_path / "s")) == [0.0, 0.5, 1.0]
    return error_lines(failed)[0]


def test_a_journal_file_gone_mid_search_is_one_line_and_a_rerun_resumes(llama_pair, tmp_path):
    def restore():
        (tmp_path / "study.journal").rmdir()
        (tmp_path / "study.journal.away").rename(tmp_path / "study.journal")

    line = stop_then_resume(tmp_path, llama_pair, JOURNAL_GONE, "./study.journal", restore)
    assert line.startswith("Error: the study (--storage ./study.journal) could not be read or written: "
                           "[Errno 21] Is a directory"), line


@pytest.mark.slow
def test_a_locked_sqlite_study_is_one_line_and_a_rerun_resumes(llama_pair, tmp_path):
    line = stop_then_resume(tmp_path, llama_pair, SQLITE_LOCKED, None, lambda: None)
    assert line.startswith("Error: the study (./s) could not be read or written: (sqlite3.OperationalError) "
                           "database is locked"), line


@pytest.mark.slow
def test_a_server_stopped_mid_search_is_one_line_and_a_rerun_resumes(llama_pair, postgres, tmp_path):
    url = postgres.database("stopped")
    server_stopped = f"    subprocess.run({postgres.stop_command()!r}, shell=True, check=True)"
    line = stop_then_resume(tmp_path, llama_pair, server_stopped, url, postgres.start)
    shown = url.replace(PASSWORD, "***")
    # the cause as psycopg words it: the connection terminated, or refused
    assert line.startswith(f"Error: the study (--storage {shown}) could not be read or written: (psycopg."), line
    assert PASSWORD not in line
    scored = [t.user_attrs["candidate"]["alpha"] for t in study_of(url) if t.state.name == "COMPLETE"]
    assert sorted(scored) == [0.0, 0.5, 1.0]  # the lost candidate scored once, by the rerun


@pytest.mark.slow
def test_two_workers_with_their_own_out_score_each_candidate_once(llama_pair, postgres, tmp_path):
    url = postgres.database("shared")
    (tmp_path / "slow_scorer.py").write_text(RENDEZVOUS_SCORER)
    workers = [start_worker(tmp_path, llama_pair, "--alphas", "0.25,0.5,0.75", "--storage", url, out=out)
               for out in ("./a", "./b")]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
    scored = [t for t in study_of(url) if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["candidate"]["alpha"] for t in scored) == [0.0, 0.25, 0.5, 0.75]  # once each
    assert {t.user_attrs["worker"]["pid"] for t in scored} == {w.pid for w in workers}
    assert sorted(results_of(tmp_path / "a")) == [0.0, 0.25, 0.5, 0.75]
    assert results_of(tmp_path / "a") == results_of(tmp_path / "b")  # every worker reports everyone's


@pytest.mark.slow
def test_a_killed_workers_candidate_is_scored_again_after_its_heartbeats_stop(llama_pair, postgres, tmp_path):
    # The killed worker ran "on another machine" (another hostname), so only the missed
    # heartbeats can tell the later worker that its candidate is lost.
    url = postgres.database("killed")
    (tmp_path / "slow_scorer.py").write_text(SLOW_SCORER.format(pause=1))
    extra = ["--alphas", "0.5,1", "--storage", url, "--heartbeat", "2"]
    elsewhere = start_worker(tmp_path, llama_pair, *extra, out="./b", host="node-b")
    kill_mid_candidate(elsewhere, tmp_path / "b")
    later = start_worker(tmp_path, llama_pair, *extra, out="./a")
    stdout, stderr = later.communicate(timeout=300)
    assert later.returncode == 0, stderr
    assert sorted(results_of(tmp_path / "a")) == [0.0, 0.5, 1.0]
    trials = study_of(url)
    (lost,) = [t for t in trials if t.state.name == "FAIL"]
    assert lost.user_attrs["worker"]["host"] == "node-b"
    (redone,) = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["candidate"] ==
                 lost.user_attrs["candidate"]]
    assert redone.system_attrs["failed_trial"] == lost.number  # optuna's heartbeat retry
    assert redone.user_attrs["worker"]["pid"] == later.pid


@pytest.mark.slow
def test_a_worker_with_other_settings_is_refused(llama_pair, postgres, tmp_path):
    url = postgres.database("settings")
    write_prefs(tmp_path / "prefs.jsonl")
    write_prefs(tmp_path / "other.jsonl", rows=3)
    base = ("search", *llama_pair, "--alphas", "0.5", "--storage", url)
    assert invoke(*base, "--data", "prefs.jsonl", "--out", "./a", cwd=tmp_path).returncode == 0
    shown = url.replace(PASSWORD, "***")
    (tmp_path / "slow_scorer.py").write_text(SLOW_SCORER.format(pause=0))
    for args, difference in [(["--data", "other.jsonl"], "--data: the file's contents"),
                             (["--data", "prefs.jsonl", "--scorer", "slow_scorer:norm"],
                              "--scorer was 'preference', now 'slow_scorer:norm'")]:
        before = snapshot(tmp_path)
        refused = invoke(*base, *args, "--out", "./b", cwd=tmp_path)
        assert refused.returncode == 1 and len(error_lines(refused)) == 1, refused.stderr
        assert f"--storage {shown} holds results of a different search: {difference}" in refused.stderr
        assert PASSWORD not in refused.stderr and snapshot(tmp_path) == before


@pytest.mark.slow
def test_the_documented_lines_work_as_typed(models_dir, postgres):
    text = (REPO / "docs" / "search.md").read_text()
    block = re.search(r"\*\*Across machines\.\*\*.*?```bash\n(.*?)```", text, re.S).group(1)
    install, search = block.replace("\\\n", " ").splitlines()
    # The extra holds [search] and the driver SQLAlchemy uses for postgresql://.
    from packaging.requirements import Requirement
    from sqlalchemy.engine import make_url

    (extra,) = re.fullmatch(r"pip install 'mergekit-expo\[(\w+)\]'", install).groups()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    driver = make_url("postgresql://").get_dialect().driver
    assert driver in {Requirement(requirement).name for requirement in extras[extra]}
    assert set(extras["search"]) <= set(extras[extra])
    url = postgres.database("documented")
    args = shlex.split(re.sub(r"postgresql://\S+", url, search))
    assert args[:2] == ["mergekit-expo", "search"]
    write_prefs(models_dir / "dev_prefs.jsonl")
    run_cli(*args, cwd=models_dir)
    assert sorted(results_of(models_dir / "expo-search")) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert len([t for t in study_of(url) if t.state.name == "COMPLETE"]) == 7
