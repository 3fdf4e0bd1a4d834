"""The α search loop: for each candidate, set the weights, score, record; then report.

settings → study → candidate → per-tensor α (mergekit's planner) → engine weights →
scores → study → reports. Any number of processes may run this on one study.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import click
from tqdm import tqdm

from mergekit_expo.alpha import checked_alpha
from mergekit_expo.errors import ExpoConfigError, ExpoError, ExpoStorageError, first_line
from mergekit_expo.filesystem import make_parents, remove_if_empty, write_file_atomically
from mergekit_expo.search.ownership import storage_record
from mergekit_expo.search.pruning import SampledRace
from mergekit_expo.search.racing import RaceRun, summary_line
from mergekit_expo.search.results import AlphaResult, SearchResults, candidate_name
from mergekit_expo.search.study import SearchStudy, last_completed, shown, storage_url
from mergekit_expo.search.trial_roles import TrialRole

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the paper's range
DEFAULT_TRIALS = 30


def parse_alphas(text: Optional[str]) -> List[float]:
    if not text:
        return list(DEFAULT_ALPHAS)
    values = [checked_alpha(part.strip(), option="--alphas", in_search=True)
              for part in text.split(",") if part.strip()]
    if not values:
        raise ExpoConfigError("--alphas is empty: give e.g. --alphas 0,0.3,0.5")
    return sorted(set(values))


def parse_range(text: Optional[str]) -> Tuple[float, float]:
    """``LO,HI`` of --alpha-range, LO < HI."""
    if not text:
        return (0.0, 1.0)
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2:
        raise ExpoConfigError(f"--alpha-range {text!r} must be two numbers LO,HI: e.g. --alpha-range 0,1")
    low, high = (checked_alpha(part, option="--alpha-range", in_search=True) for part in parts)
    if not low < high:
        example = f"{min(low, high):g},{max(low, high) if low != high else high + 1:g}"
        raise ExpoConfigError(f"--alpha-range {text}: LO must be below HI: e.g. --alpha-range {example}")
    return low, high


def refined(alphas: List[float], best: float) -> List[float]:
    """Midpoints on either side of the best α (coarse-to-fine, one level)."""
    ordered = sorted(alphas)
    index = ordered.index(best)
    neighbours = ordered[max(index - 1, 0):index] + ordered[index + 1:index + 2]
    return [round((neighbour + best) / 2, 6) for neighbour in neighbours]


def fingerprint(*parts: Optional[str]) -> str:
    """Content hash of a data file, so a changed file is a different search."""
    digest = hashlib.sha256()
    for part in parts:
        if part and Path(part).is_file():
            digest.update(Path(part).read_bytes())
        digest.update(str(part).encode())
    return digest.hexdigest()[:16]


@dataclass
class Plan:
    """What to search: the space, its candidates or budget, and how candidates are drawn."""

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
    race: Optional[dict] = None  # --race: its tolerance and --max-drop (racing.plan_of)


def search(out: str, scorer, plan: Plan, *, open_engine: Callable, settings: dict,
           guard=None, max_drop: Optional[float] = None, about: Optional[dict] = None):
    """Score candidates with the other workers of the study until none is left; write the
    reports. Returns (results, report paths, this worker's log)."""
    folder = Path(out)
    created = [] if plan.storage else make_parents(folder)  # the default study lives in --out
    where = f"--storage {shown(plan.storage)}" if plan.storage else out
    url = storage_url(plan.storage, out)
    study = None
    try:
        # What workers running together must agree on; a rerun may change it.
        agreed = {"trials": plan.trials} if plan.grid is None else \
            {"alphas": plan.grid, "refine": plan.refine}
        if plan.race is not None:
            agreed["race"] = plan.race
        study = SearchStudy(plan.space, url=url, where=where, sampler=plan.sampler, seed=plan.seed,
                            heartbeat=plan.heartbeat, settings=settings, plan=agreed,
                            alpha_range=plan.alpha_range)
        results = SearchResults(folder, settings, [], max_drop=max_drop, about=about,
                                storage=storage_record(plan.storage))
        run = _Run(study, results, scorer, guard, plan, open_engine)
        _enqueue_first(study, run, plan, out)
        try:
            if run.race is not None:
                log = study.work(run.race.evaluate, after=run.record, more=run.race.more)
            else:
                log = study.work(run.evaluate, after=run.record, more=run.refinements if plan.grid else None)
            log.last_completed = last_completed(study)
        finally:
            run.close()
    except BaseException as error:
        if not isinstance(error, ExpoStorageError):  # a study that cannot be read is left as it is
            _clean_up(study, folder, created, url if not plan.storage else None)
        raise
    run.refresh()
    if not results.rows:
        raise ExpoConfigError("no candidate was scored: check the other workers' errors, or rerun")
    reports = results.write_reports(plan.resolve.config)
    if results.race:
        click.echo(summary_line(results), err=True)
    return results, reports, log


def _enqueue_first(study, run, plan: Plan, out: str) -> None:
    """What a worker enqueues on arrival (the study keeps one live trial per candidate)."""
    if plan.race is not None and plan.grid is None:  # sampled candidates, pruned block by block
        run.pruning = SampledRace(run, study, plan.seed, plan.trials)
    elif plan.race is not None:  # the first block of every candidate; the race enqueues the rest
        run.race = RaceRun(run, study, plan.grid, plan.seed)
        study.enqueue(run.race.first_units(), TrialRole.GRID)
        done = len(study.rows())
        if done:
            click.echo(f"resuming the race: {done} candidate blocks already scored in {out}", err=True)
        return
    study.enqueue([plan.space.reference()], TrialRole.REFERENCE)
    if plan.grid is not None:
        study.enqueue([{"alpha": alpha} for alpha in plan.grid], TrialRole.GRID)
        done = {r["candidate"] for r in study.rows()}
        every = {f"alpha={alpha:g}" for alpha in [0.0, *plan.grid]}
        resumed, total = len(every & done), len(every)
        if resumed:
            click.echo(f"resuming: {resumed} of {total} α already scored in {out}", err=True)
    else:
        done = len(study.rows())
        if done:
            click.echo(f"resuming: {done} candidates already scored in {out}", err=True)


class _Run:
    """One worker's scoring of candidates, and the reports it keeps current."""

    def __init__(self, study, results, scorer, guard, plan: Plan, open_engine):
        self.study, self.results, self.scorer, self.guard, self.plan = study, results, scorer, guard, plan
        self.open_engine, self.engine = open_engine, None
        self.race = None  # a RaceRun with --race
        self.pruning = None  # a SampledRace with --race in a sampled space

    def opened(self):
        """The engine, opened on first use."""
        if self.engine is None:
            self.engine = self.open_engine()
        return self.engine

    def evaluate(self, candidate: dict, trial) -> dict:
        if self.pruning is not None:
            return self.pruning.evaluate(candidate, trial)
        self.opened()
        name = candidate_name(self.plan.space.name, candidate, trial.number)
        description = self.plan.space.describe(candidate)
        start = time.perf_counter()
        self.engine.set_alphas(self.plan.resolve(candidate))
        updated = time.perf_counter() - start
        score = self.scored("--scorer", self.scorer, name, description)
        checked = self.scored("--guard", self.guard, name, description) if self.guard is not None else None
        seconds = time.perf_counter() - start
        self.write_answers(name, score, checked)
        return dict(alpha=candidate.get("alpha"), score=score.value, low=score.low, high=score.high,
                    n=score.n, seconds=seconds, extra=self.merged_extra(score, checked),
                    update_seconds=updated, guard=checked and checked.value,
                    guard_low=checked and checked.low, guard_high=checked and checked.high,
                    alphas=dict(candidate), candidate=name)

    def scored(self, option: str, scorer, name: str, description: str, rows: Optional[List[int]] = None):
        """The scorer's score (on ``rows`` only, when given); a failure of its code (a user's
        scorer) names it and the candidate."""
        progress = lambda total: tqdm(total=total, desc=description, leave=False)  # noqa: E731
        try:
            return scorer(self.engine, progress=progress, rows=rows)
        except ExpoError:
            raise
        except Exception as error:
            what = type(error).__name__ + (f": {first_line(error)}" if str(error).strip() else "")
            candidate = description if description == name else f"{name} ({description})"
            raise ExpoConfigError(f"{option} {scorer.name} raised {what} while scoring {candidate}: fix it, "
                                  "or run with -v for its traceback") from error

    def write_answers(self, name: str, score, checked, *, keep_other_rows: bool = False) -> None:
        """answers/<candidate>.jsonl: what each row produced and scored, for reading or judging;
        ``keep_other_rows``: a raced candidate's earlier blocks stay, each row once."""
        records = [dict(record) for record in (score.rows or [])]
        if checked is not None and checked.rows and not records:
            records = [dict(record, scorer="guard") for record in checked.rows]
        if not records:
            return
        folder = self.results.folder / "answers"
        make_parents(folder)
        path = folder / f"{name}.jsonl"
        if keep_other_rows and path.is_file():
            new = {record.get("row") for record in records}
            kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            records = [record for record in kept if record.get("row") not in new] + records
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        write_file_atomically(path, text)

    def rows(self):
        rows = [AlphaResult(**{k: v for k, v in row.items() if k in AlphaResult.__dataclass_fields__})
                for row in self.study.rows()]
        return sorted(rows, key=lambda r: r.alpha if self.plan.space.name == "scalar" else r.trial)

    def refresh(self) -> None:
        """The results' rows (and the race's state) from every worker's, as the study holds them."""
        if self.race is None:
            self.results.rows = self.rows()
            if self.pruning is not None:
                self.results.race = self.pruning.report(self.study.rows())
        else:
            self.results.rows, self.results.race = self.race.aggregate(self.study.rows())

    def record(self) -> None:
        """After each candidate: results.json/csv from every worker's rows, atomically."""
        self.refresh()
        make_parents(self.results.folder)
        self.results.write_tables()

    def refinements(self) -> List[dict]:
        """--refine: the midpoints around the best α of the --alphas grid, once."""
        grid = [row for row in self.rows() if row.alpha in set(self.study.plan["alphas"]) | {0.0}]
        if not grid:
            return []
        self.results.rows = grid
        best = self.results.best().alpha
        return [{"alpha": alpha} for alpha in refined([row.alpha for row in grid], best)]

    @staticmethod
    def merged_extra(score, guard) -> Optional[dict]:
        """The score's details, and the guard's under a ``guard_`` prefix."""
        extra = dict(score.extra or {})
        if guard is not None:
            extra.update({f"guard_{key}": value for key, value in (guard.extra or {}).items()})
        return extra or None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _clean_up(study, folder: Path, created: list, url: Optional[str]) -> None:
    """A run that failed before any candidate was scored leaves nothing behind that it made."""
    if not created or study is not None and (study.rows() or study.others_running()):
        return
    if url is not None:
        database = Path(url[len("sqlite:///"):])
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    remove_if_empty(created)
