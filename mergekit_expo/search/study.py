"""The search as an optuna study: what to try next, where trials live, who scores what.

- The sampler says what to try next: optuna's TPE, CMA-ES or random sampler for the
  multi-dimensional spaces; for ``scalar``, the ``--alphas`` grid, enqueued as trials.
- The storage holds every trial: SQLite in ``--out`` by default, any optuna RDB URL
  (PostgreSQL across machines) or a journal file through ``--storage``.
- Any number of worker processes run the same loop on one storage. Enqueued
  candidates are popped atomically by optuna, so a worker never takes one that another
  has; a candidate that shows up twice anyway (two workers enqueueing the same grid at
  once) is scored only in its lowest-numbered live trial, the others are pruned unscored.
- A worker that dies mid-candidate: a worker on the same machine sees its process gone
  and enqueues the candidate again; elsewhere, with a database storage its heartbeats
  stop and, after the grace period, optuna fails the trial and enqueues it again
  (``RetryHeartbeatStaleTrialCallback``); a trial that never named its owner is given
  back after the grace period. Ctrl-C re-enqueues at once.
"""

import contextlib
import errno
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from mergekit_expo.compat.optuna import fail_trial, heartbeats, rdb_storage
from mergekit_expo.compat.optuna import import_optuna as _optuna
from mergekit_expo.errors import ExpoConfigError, ExpoError, ExpoStorageError, first_line
from mergekit_expo.filesystem import owner_record, owner_state
from mergekit_expo.interruption import Interrupted, raise_if_interrupted
from mergekit_expo.search.results import comparable, difference
from mergekit_expo.search.rows import AlphaResult
from mergekit_expo.search.space import Candidate
from mergekit_expo.search.strategies.base import Plan, Unit
from mergekit_expo.search.trial_roles import DUPLICATE, GRID, SAMPLED, SPARE

LOG = logging.getLogger("mergekit_expo")
STUDY = "expo-search"
DEFAULT_STORAGE = "study.db"  # in --out
JOURNAL_SUFFIX = ".journal"
ROLE, CANDIDATE, ROW, WORKER = "role", "candidate", "row", "worker"
PLAN = "plan"  # what its workers search to (the strategy's plan: --trials, or --alphas and --refine)


def storage_url(storage: Optional[str], out: str) -> str:
    return storage or f"sqlite:///{Path(os.path.abspath(out)) / DEFAULT_STORAGE}"


def shown(url: str) -> str:
    """``url`` as messages print it: a database URL's password masked."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):  # not a URL SQLAlchemy can parse: shown as given
        return make_url(url).render_as_string(hide_password=True)
    return url


# How to install the driver SQLAlchemy picks for a URL; others get a generic line.
DRIVERS = {
    "psycopg": "pip install 'mergekit-expo[postgres]'",  # postgresql:// and postgresql+psycopg://
    "psycopg2": "pip install psycopg2-binary",  # postgresql+psycopg2://
}


def check_driver(url: str) -> None:
    """The database driver SQLAlchemy uses for ``url`` can be imported: else one line naming it."""
    from sqlalchemy.engine import make_url

    try:
        dialect = make_url(url).get_dialect()
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: opening it says why
        return
    try:
        dialect.import_dbapi()
    except ImportError as error:
        install = DRIVERS.get(dialect.driver, f"install the Python package that provides {dialect.driver}")
        raise ExpoConfigError(f"--storage {shown(url)} needs the database driver {dialect.driver}, which "
                              f"cannot be imported ({first_line(error)}): {install}") from None


def disk_full(error: BaseException) -> bool:
    """SQLite's "database or disk is full", or the OS's ENOSPC."""
    return "database or disk is full" in str(error) or getattr(error, "errno", None) == errno.ENOSPC


def open_storage(url: str, heartbeat: int, *, out: Optional[str] = None):
    """An optuna storage for ``url``; one error line when it cannot be opened. ``out``: the
    --out folder whose default study this is (None: a --storage the user gave)."""
    optuna = _optuna()
    if url.endswith(JOURNAL_SUFFIX) and "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        if not Path(url).parent.is_dir():
            raise ExpoConfigError(f"--storage {url}: folder {Path(url).parent} does not exist: create it "
                                  "(on a filesystem every worker sees) or give another path")
        try:
            # The open(2)-based lock also works on NFS, where symlink locks may not.
            return optuna.storages.JournalStorage(
                JournalFileBackend(url, lock_obj=optuna.storages.journal.JournalFileOpenLock(url)))
        except Exception as error:  # noqa: BLE001 - optuna's and the OS's failures become one line
            raise ExpoConfigError(f"--storage {url} cannot be opened: {first_line(error)}") from None
    if url.startswith("postgres://"):
        raise ExpoConfigError(f"--storage {shown(url)}: SQLAlchemy, which optuna opens databases with, "
                              "names this scheme postgresql://: write --storage postgresql://"
                              f"{shown(url)[len('postgres://'):]}")
    if "://" not in url:
        raise ExpoConfigError(f"--storage {url} is neither a database URL (sqlite:///path, "
                              "postgresql://user@host/db) nor a journal file (a path ending in "
                              f"{JOURNAL_SUFFIX})")
    check_driver(url)
    for attempt in range(10):
        try:
            return rdb_storage(url, heartbeat)
        except Exception as error:  # noqa: BLE001
            # Workers started together race to create the tables: the loser finds them made.
            racing = ("already exists", "UNIQUE constraint failed", "database is locked")
            if any(text in str(error) for text in racing) and attempt < 9:
                time.sleep(0.2 * (attempt + 1))
                continue
            if out is not None and disk_full(error):
                raise ExpoConfigError(f"the disk under --out {out} is full: the study ({DEFAULT_STORAGE}) "
                                      "cannot be written there: free space, or choose --out on another "
                                      "disk") from None
            if out is not None:
                raise ExpoConfigError(f"the study {DEFAULT_STORAGE} in --out {out} cannot be opened: "
                                      f"{first_line(error)}: check that the folder is writable, or choose "
                                      "another --out") from None
            fix = "free space on that disk" if disk_full(error) else \
                "check the URL and that the server is running"
            raise ExpoConfigError(f"--storage {shown(url)} cannot be opened: {first_line(error)}: "
                                  f"{fix}") from None


def storage_failures(method):
    """A storage that fails mid-search (server down, file gone, locked too long) is one
    line saying so; what it holds is kept, so the same command resumes."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return method(self, *args, **kwargs)
        except ExpoError:
            raise
        except (StorageInternalError, SQLAlchemyError, OSError) as error:  # no user code runs in these
            cause = first_line(error.__cause__ or error)
            if disk_full(error.__cause__ or error):
                cause += " (free space on that disk)"
            raise ExpoStorageError(f"the study ({self.where}) could not be read or written: {cause}: the "
                                   "candidates scored so far are kept; rerun the same command to resume once "
                                   "it is reachable again") from None

    return wrapper


def make_sampler(name: str, seed: int):
    """optuna's sampler ``name``, seeded per trial number from ``seed``: one worker's rerun
    draws the same candidates, and workers asking at the same moment never share a stream."""
    optuna = _optuna()
    makers = {
        # constant_liar: running trials count as bad ones, so parallel workers spread out.
        # multivariate: the coordinates are modelled jointly (measured: closer to a hidden
        # target in 40 trials than independent TPE, CMA-ES or random search).
        "tpe": lambda s: optuna.samplers.TPESampler(seed=s, multivariate=True, constant_liar=True),
        "cmaes": lambda s: optuna.samplers.CmaEsSampler(seed=s, warn_independent_sampling=False),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
        "grid": lambda s: optuna.samplers.RandomSampler(seed=s),  # never drawn from: the grid is enqueued
    }
    make = makers[name]

    class PerTrialSeed(optuna.samplers.BaseSampler):
        def __init__(self):
            self._number, self._sampler = None, None

        def _for(self, trial):
            if trial.number != self._number:
                self._number, self._sampler = trial.number, make((seed * 1_000_003 + trial.number) % 2 ** 32)
            return self._sampler

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._for(trial).after_trial(study, trial, state, values)

    return PerTrialSeed()


@dataclass
class WorkerLog:
    """What one worker did: for reports and the workers benchmark."""

    scored: List[int] = field(default_factory=list)  # trial numbers this worker scored
    pruned: int = 0  # duplicates and spare trials it closed unscored
    idle_seconds: float = 0.0  # waiting for other workers' candidates
    last_completed: Optional[int] = None


class SearchStudy:
    """One worker's view of the shared study."""

    @storage_failures
    def __init__(self, search: Plan, *, url: str, where: str, settings: dict, agreed: dict):
        """``agreed``: the strategy's plan, which workers scoring together share."""
        self.where = where  # first: storage failures name it
        self.optuna = _optuna()
        self.states = self.optuna.trial.TrialState
        self.space, self.alpha_range, self.heartbeat = search.space, search.alpha_range, search.heartbeat
        self.storage = open_storage(url, self.heartbeat, out=None if where.startswith("--storage") else where)
        self.study = self.optuna.create_study(study_name=STUDY, storage=self.storage, direction="maximize",
                                              sampler=make_sampler(search.sampler, search.seed),
                                              load_if_exists=True)
        self._check_settings(settings)
        self.log = WorkerLog()
        self.draw: Optional[Unit] = None  # what the strategy last asked the sampler to draw
        self._check_plan(agreed)

    # -- settings ---------------------------------------------------------------------------
    def _check_settings(self, settings: dict) -> None:
        saved = self.study.user_attrs.get("settings")
        if saved is None:
            self.study.set_user_attr("settings", settings)
        elif saved != comparable(saved, settings):
            raise ExpoConfigError(f"{self.where} holds results of a different search: "
                                  f"{difference(saved, comparable(saved, settings))}: use another "
                                  f"{'--storage' if self.where.startswith('--storage') else '--out'}, "
                                  "or delete it to start over")

    def _check_plan(self, plan: dict) -> None:
        """Workers scoring together search to one plan; a run while none scores may change it
        (a larger --trials continues the search), and workers still running follow it."""
        saved = self.study.user_attrs.get(PLAN)
        if saved is not None and saved != plan:
            self._recover()
            if self.others_running():
                raise ExpoConfigError(f"another worker is searching {self.where} with other settings: "
                                      f"{difference(saved, plan)}: start every worker with the same; once "
                                      "they are done, a rerun with other ones continues the search")
        if saved != plan:
            self.study.set_user_attr(PLAN, plan)
        self.plan = plan

    @property
    def budget(self) -> Optional[int]:
        """Sampled candidates to score (the other spaces); None for the --alphas grid."""
        return self.plan.get("trials")

    # -- units --------------------------------------------------------------------------------
    @storage_failures
    def trials(self):
        return self.study.get_trials(deepcopy=False)

    def _live(self, trial) -> bool:
        return (trial.state in (self.states.WAITING, self.states.RUNNING, self.states.COMPLETE)
                or _stopped(trial)) and trial.user_attrs.get(ROLE) not in (DUPLICATE, SPARE)

    def _key(self, stored: dict):
        """A unit's identity: its coordinates and blocks (two workers enqueue one grid as one)."""
        unit = Unit.of(stored, self.space.coordinates, GRID)
        return (*(round(float(value), 9) for value in unit.candidate.values()), unit.block, unit.blocks)

    @storage_failures
    def enqueue(self, units: Sequence[Unit], trials: Optional[List] = None) -> int:
        """Enqueue the units no live trial has (of ``trials``, just read; default: the study's);
        return how many were enqueued."""
        known = {self._key(t.user_attrs[CANDIDATE]) for t in (self.trials() if trials is None else trials)
                 if self._live(t) and CANDIDATE in t.user_attrs}
        added = 0
        for unit in units:
            key = self._key(unit.stored())
            if key in known:
                continue
            known.add(key)
            # Inside the range, the sampler sees it as a point like any other.
            params = dict(unit.candidate) if self._in_range(unit.candidate) else {}
            self.study.enqueue_trial(params, user_attrs={ROLE: unit.role, CANDIDATE: unit.stored()})
            added += 1
        return added

    def _in_range(self, candidate: Candidate) -> bool:
        low, high = self.alpha_range
        return self.budget is not None and all(low <= float(candidate[name]) <= high
                                               for name in self.space.coordinates)

    def completed(self, trials: Optional[List] = None) -> List:
        """AlphaResult trials: complete, or stopped by the strategy after some blocks (of
        ``trials``, just read; default: the study's)."""
        return [t for t in (self.trials() if trials is None else trials)
                if t.state == self.states.COMPLETE and ROW in t.user_attrs or _stopped(t)]

    def scored(self, trials: Optional[List] = None) -> List[AlphaResult]:
        """Every scored unit, in trial order."""
        return [AlphaResult.stored(t.user_attrs[ROW], t.number) for t in self.completed(trials)]

    def _sampled_count(self, trials: List, below: Optional[int] = None) -> int:
        return sum(1 for t in trials if self._live(t) and t.user_attrs.get(ROLE, SAMPLED) == SAMPLED
                   and (below is None or t.number < below))

    # -- the worker loop --------------------------------------------------------------------
    def others_running(self) -> bool:
        return any(t.state == self.states.RUNNING for t in self.trials())

    def work(self, score: Callable[[Unit, object], AlphaResult],
             propose: Callable[[List[AlphaResult]], List[Unit]], *,
             after: Callable[[List[AlphaResult]], None], poll: float = 0.5) -> WorkerLog:
        """Score units until none is left: ``propose(scored)`` says what to score next (units to
        enqueue, or ones the sampler draws), ``score(unit, trial)`` scores one, ``after(scored)``
        runs after each (reports). Ends when nothing is waiting, running or proposed.

        The study is read once per unit for all of these (and once more as a unit is taken, for
        its duplicates): each read is a round trip to the storage, which a small unit feels."""
        trials = None  # the study as last read, while this worker has not written or waited since
        while True:
            raise_if_interrupted()
            self.plan = self.study.user_attrs.get(PLAN, self.plan)  # a rerun may have changed it
            trials = self._recover(trials)
            if not any(t.state == self.states.WAITING for t in trials):
                proposed = propose(self.scored(trials))
                if self.enqueue([unit for unit in proposed if unit.candidate is not None], trials):
                    trials = None
                    continue
                self.draw = next((unit for unit in proposed if unit.candidate is None), None)
                if self.draw is None or self.budget is None or self._sampled_count(trials) >= self.budget:
                    if any(t.state == self.states.RUNNING for t in trials):  # theirs may fail and come back
                        start = time.perf_counter()
                        time.sleep(poll)
                        self.log.idle_seconds += time.perf_counter() - start
                        trials = None
                        continue
                    return self.log
            trial = self._take()
            trials = None
            unit = self._unit_of(trial)
            if unit is None:
                continue
            self._score(trial, unit, score)
            trials = self.trials()
            after(self.scored(trials))

    def _drawn(self, trial, role: str, draw: Unit) -> Unit:
        """A candidate the sampler draws in ``trial``, recorded there at once."""
        low, high = self.alpha_range
        candidate = {name: trial.suggest_float(name, low, high) for name in self.space.coordinates}
        unit = Unit(candidate, draw.block, draw.blocks, role)
        trial.set_user_attr(ROLE, role)
        trial.set_user_attr(CANDIDATE, unit.stored())
        return unit

    @storage_failures
    def _unit_of(self, trial) -> Optional[Unit]:
        """The trial's unit, or None when it is closed unscored (a duplicate, or spare)."""
        attributes = trial.user_attrs
        role = attributes.get(ROLE)
        draw = self.draw or Unit(None)
        trials = self.trials()
        if role is None:  # a fresh trial: drawn, if the budget allows
            if self.budget is None or self._sampled_count(trials, below=trial.number) >= self.budget:
                trial.set_user_attr(ROLE, SPARE)
                self.study.tell(trial, state=self.states.PRUNED)
                self.log.pruned += 1
                return None
            unit = self._drawn(trial, SAMPLED, draw)
        elif attributes.get(CANDIDATE) is None:  # a drawn trial that died before it was drawn, retried
            unit = self._drawn(trial, role, draw)
        else:
            unit = Unit.of(attributes[CANDIDATE], self.space.coordinates, role)
            if self._in_range(unit.candidate):  # enqueued with these values: record them as its params
                low, high = self.alpha_range
                for name in self.space.coordinates:
                    trial.suggest_float(name, low, high)
        key = self._key(unit.stored())
        first = min((t.number for t in trials if self._live(t) and CANDIDATE in t.user_attrs
                     and self._key(t.user_attrs[CANDIDATE]) == key), default=trial.number)
        if first < trial.number:  # another trial has it: score it there, once
            trial.set_user_attr(ROLE, DUPLICATE)
            self.study.tell(trial, state=self.states.PRUNED)
            self.log.pruned += 1
            return None
        return unit

    @storage_failures
    def _take(self):
        """A trial, with this process named as its owner at once: a rerun on this host can
        then tell a dead owner's trial from a live one without waiting for heartbeats."""
        trial = self.study.ask()
        trial.set_user_attr(WORKER, owner_record())
        return trial

    def _score(self, trial, unit: Unit, score) -> None:
        try:
            with heartbeats(self.storage, trial, self.heartbeat):
                scored = score(unit, trial)
        except BaseException as error:
            if isinstance(error, (Interrupted, KeyboardInterrupt)):
                # Ctrl-C: give the unit back before leaving, for another worker or a rerun.
                self._requeue(trial)
            with contextlib.suppress(Exception):
                self.study.tell(trial, state=self.states.FAIL)
            raise
        self._record(trial, scored)

    @storage_failures
    def _record(self, trial, scored: AlphaResult) -> None:
        trial.set_user_attr(ROW, scored.record())
        if scored.stopped:  # its blocks' running means are reported: optuna ranks it by them
            self.study.tell(trial, state=self.states.PRUNED)
        else:
            self.study.tell(trial, scored.score)
        self.log.scored.append(trial.number)

    def _requeue(self, trial) -> None:
        attributes = {k: v for k, v in trial.user_attrs.items() if k in (ROLE, CANDIDATE)}
        self.study.enqueue_trial(dict(trial.params), user_attrs=attributes)

    @storage_failures
    def _recover(self, trials: Optional[List] = None) -> List:
        """Put the candidates of dead workers back in the queue; return the study's trials
        then (``trials``: as this worker last read them, if it has not written or waited since).

        A trial is given back when optuna finds its heartbeats stale (database storages),
        when its owner ran on this host and is gone, or when it never named an owner (a
        worker killed right after taking it) and is older than the grace period: no
        RUNNING trial waits forever.
        """
        from datetime import datetime

        if trials is None or any(t.state == self.states.RUNNING for t in trials):  # none running: none stale
            self.optuna.storages.fail_stale_trials(self.study)  # database storages: heartbeats
            trials = self.trials()
        given_back = False
        for trial in trials:
            if trial.state != self.states.RUNNING:
                continue
            owner = trial.user_attrs.get(WORKER)
            if owner:
                dead = owner_state(owner) == "gone"
            else:
                started = trial.datetime_start
                dead = started is not None and (datetime.now() - started).total_seconds() > 3 * self.heartbeat
            if not dead:
                continue
            given_back = True
            # Two workers may both do this: the second copy is then a duplicate, pruned unscored.
            with contextlib.suppress(Exception):  # another worker failed it first
                fail_trial(self.storage, trial)
                self._requeue(trial)
        return self.trials() if given_back else trials

def _stopped(trial) -> bool:
    """A unit the strategy stopped after some of its blocks: scored, and PRUNED for optuna."""
    return trial.state.name == "PRUNED" and ROW in trial.user_attrs


def last_completed(study: SearchStudy) -> Optional[int]:
    """The trial that completed last: its worker merges --write-best."""
    finished = [t for t in study.completed() if t.datetime_complete is not None]
    return max(finished, key=lambda t: (t.datetime_complete, t.number)).number if finished else None
