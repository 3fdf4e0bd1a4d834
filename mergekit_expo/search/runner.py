"""The α search: the study's workers score what the strategy asks for, then report.

settings → study → strategy → unit → per-tensor α (mergekit's planner) → engine weights →
scores → study → reports. Any number of processes may run this on one study.
"""

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import click

from mergekit_expo.errors import ExpoConfigError, ExpoStorageError
from mergekit_expo.filesystem import make_parents, remove_if_empty
from mergekit_expo.search.evaluation import Evaluator
from mergekit_expo.search.ownership import storage_record
from mergekit_expo.search.registry import STRATEGIES
from mergekit_expo.search.results import SearchResults, saved_about
from mergekit_expo.search.strategies.base import DevRows, Plan
from mergekit_expo.search.study import SearchStudy, last_completed, shown, storage_url


def search(out: str, scorer, plan: Plan, *, open_engine: Callable, settings: dict, guard=None,
           about: Optional[dict] = None):
    """Score units with the other workers of the study until none is left; write the reports.
    Returns (results, report paths, this worker's log, the strategy)."""
    folder = Path(out)
    created = [] if plan.storage else make_parents(folder)  # the default study lives in --out
    url = storage_url(plan.storage, out)
    evaluator = Evaluator(scorer, guard, plan, open_engine=open_engine, folder=folder)
    strategy = make_strategy(plan, evaluator)
    study = None
    try:
        where = f"--storage {shown(plan.storage)}" if plan.storage else out
        study = SearchStudy(plan, url=url, where=where, settings=settings, agreed=strategy.plan())
        results = SearchResults(folder, settings, [], max_drop=plan.max_drop, about=about,
                                storage=storage_record(plan.storage))
        study.enqueue(strategy.start())
        resumed = strategy.resumed(study.scored())
        if resumed:
            click.echo(f"{resumed} in {out}", err=True)
            _say_changes(folder, plan)
        try:
            log = study.work(lambda unit, trial: evaluator.score(unit, trial, lambda so_far: strategy.go_on(
                                 so_far, study.scored())),
                             lambda scored: strategy.follow(study.plan).next(scored),
                             after=lambda scored: record(results, strategy.follow(study.plan), scored))
            log.last_completed = last_completed(study)
        finally:
            evaluator.close()
    except BaseException as error:
        if not isinstance(error, ExpoStorageError):  # a study that cannot be read is left as it is
            _clean_up(study, folder, created, url if not plan.storage else None)
        raise
    scored = study.scored()
    results.rows, results.race = strategy.follow(study.plan).report(scored)
    if not results.rows:
        raise ExpoConfigError("no candidate was scored: check the other workers' errors, or rerun")
    left_out = sorted({row.key for row in scored} - {row.key for row in results.rows})
    if left_out:  # a rerun with a smaller grid: said, so that a changed table is not a surprise
        click.echo(f"{', '.join(left_out)}: scored by an earlier run in {where}, not in this run's grid: "
                   "kept in its study, left out of the reports (add them to --alphas to see them)", err=True)
    make_parents(folder)  # a worker that found the study finished (--storage) has written nothing yet
    reports = results.write_reports(plan.resolve.config)
    line = results.race and strategy.summary_line(results.race, "generates" in scorer.traits)
    if line:
        click.echo(line, err=True)
    return results, reports, log, strategy


def make_strategy(plan: Plan, evaluator: Evaluator):
    """The plan's strategy, on its own copy of the plan, with the dev rows it cuts into blocks
    (counted through the engine when no stored unit has counted them)."""
    evaluator.dev = DevRows(plan.seed, evaluator.row_counts)
    return STRATEGIES.get(plan.strategy).load()(replace(plan, options=dict(plan.options), dev=evaluator.dev))


def _say_changes(folder: Path, plan: Plan) -> None:
    """--max-drop and --race-tolerance are no search settings (a rerun reuses every score), but
    a new value may change the pick, or how far a race goes: said, as a changed setting would be."""
    saved = saved_about(folder)
    if saved is None:
        return
    reused = "every score is reused and"
    if saved.get("max_drop") != plan.max_drop:
        was, now = (f"{value:g}" if value is not None else "not set"
                    for value in (saved.get("max_drop"), plan.max_drop))
        if saved.get("tolerance") is not None:  # the guard is part of a race's rule
            again = "the race judged again under it (it may read more rows)"
        elif saved.get("kind") == "sampled":  # a pruned candidate is not scored again
            again = ("the pick chosen again among the candidates scored on every row (those pruned stay "
                     "pruned)")
        else:
            again = "the pick chosen again"
        click.echo(f"--max-drop was {was}, now {now}: {reused} {again}", err=True)
    tolerance = plan.options.get("tolerance")
    if None not in (saved.get("tolerance"), tolerance) and saved["tolerance"] != tolerance:
        click.echo(f"--race-tolerance was {saved['tolerance']:g}, now {tolerance:g}: {reused} the race "
                   "judged again under the new tolerance (it may read more rows)", err=True)


def record(results: SearchResults, strategy, scored) -> None:
    """After each unit: results.json/csv from every worker's units, atomically."""
    results.rows, results.race = strategy.report(scored)
    make_parents(results.folder)
    results.write_tables()


def _clean_up(study, folder: Path, created: list, url: Optional[str]) -> None:
    """A run that failed before any candidate was scored leaves nothing behind that it made."""
    if not created or study is not None and (study.scored() or study.others_running()):
        return
    if url is not None:
        database = Path(url[len("sqlite:///"):])
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    remove_if_empty(created)
