"""The α search: the study's workers score what the strategy asks for, then report.

settings → study → strategy → unit → per-tensor α (mergekit's planner) → engine weights →
scores → study → reports. Any number of processes may run this on one study.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import click

from mergekit_expo.errors import ExpoConfigError, ExpoStorageError
from mergekit_expo.filesystem import make_parents, remove_if_empty
from mergekit_expo.search.evaluation import Evaluator
from mergekit_expo.search.ownership import storage_record
from mergekit_expo.search.registry import STRATEGIES
from mergekit_expo.search.results import SearchResults
from mergekit_expo.search.strategies.base import DevRows, Setup
from mergekit_expo.search.study import SearchStudy, last_completed, shown, storage_url


@dataclass
class Plan:
    """What to search: the space, its candidates or budget, how they are drawn and which
    strategy picks what to score."""

    space: object  # space.Space
    resolve: Callable  # candidate -> {checkpoint tensor: α}
    grid: Optional[List[float]] = None  # --space scalar
    refine: bool = False
    trials: Optional[int] = None  # the other spaces
    alpha_range: Tuple[float, float] = (0.0, 1.0)
    sampler: str = "grid"
    seed: int = 0
    storage: Optional[str] = None
    heartbeat: int = 60
    strategy: str = "full"
    options: Dict[str, object] = field(default_factory=dict)  # the strategy's own (--race-tolerance)


def search(out: str, scorer, plan: Plan, *, open_engine: Callable, settings: dict,
           guard=None, max_drop: Optional[float] = None, about: Optional[dict] = None):
    """Score units with the other workers of the study until none is left; write the reports.
    Returns (results, report paths, this worker's log, the strategy)."""
    folder = Path(out)
    created = [] if plan.storage else make_parents(folder)  # the default study lives in --out
    url = storage_url(plan.storage, out)
    evaluator = Evaluator(scorer, guard, space=plan.space, resolve=plan.resolve, open_engine=open_engine,
                          folder=folder, strategy=plan.strategy)
    strategy = make_strategy(plan, max_drop, evaluator)
    study = None
    try:
        where = f"--storage {shown(plan.storage)}" if plan.storage else out
        study = SearchStudy(plan.space, url=url, where=where, sampler=plan.sampler, seed=plan.seed,
                            heartbeat=plan.heartbeat, settings=settings, plan=strategy.plan(),
                            alpha_range=plan.alpha_range)
        results = SearchResults(folder, settings, [], max_drop=max_drop, about=about,
                                storage=storage_record(plan.storage))
        study.enqueue(strategy.start())
        resumed = strategy.resumed(study.scored())
        if resumed:
            click.echo(f"{resumed} in {out}", err=True)
        try:
            log = study.work(lambda unit, trial: evaluator.score(unit, trial, lambda so_far: strategy.go_on(
                                 so_far, study.scored())),
                             lambda: following(strategy, study).next(study.scored()),
                             after=lambda: record(results, following(strategy, study), study))
            log.last_completed = last_completed(study)
        finally:
            evaluator.close()
    except BaseException as error:
        if not isinstance(error, ExpoStorageError):  # a study that cannot be read is left as it is
            _clean_up(study, folder, created, url if not plan.storage else None)
        raise
    results.rows, results.race = following(strategy, study).report(study.scored())
    if not results.rows:
        raise ExpoConfigError("no candidate was scored: check the other workers' errors, or rerun")
    reports = results.write_reports(plan.resolve.config)
    line = results.race and strategy.summary_line(results.race, "generates" in scorer.traits)
    if line:
        click.echo(line, err=True)
    return results, reports, log, strategy


def make_strategy(plan: Plan, max_drop: Optional[float], evaluator: Evaluator):
    """The plan's strategy, with the dev rows it cuts into blocks (counted through the engine
    when no stored unit has counted them)."""
    dev = DevRows(plan.seed, evaluator.row_counts)
    evaluator.dev = dev
    setup = Setup(space=plan.space, grid=plan.grid, trials=plan.trials, refine=plan.refine,
                  options=dict(plan.options), max_drop=max_drop, dev=dev)
    return STRATEGIES.get(plan.strategy).load()(setup)


def following(strategy, study):
    """``strategy`` under the study's plan as it is now: a rerun while no worker scored may have
    changed it, and the workers still running follow."""
    strategy.follow(study.plan)
    return strategy


def record(results: SearchResults, strategy, study) -> None:
    """After each unit: results.json/csv from every worker's units, atomically."""
    results.rows, results.race = strategy.report(study.scored())
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
