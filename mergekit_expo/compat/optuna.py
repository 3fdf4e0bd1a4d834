"""optuna, as the search uses it: quiet, checked before any work, and the parts of its
storages the search reaches below the public API."""

import contextlib
import threading
import warnings

from mergekit_expo.compat.extras import import_extra


def import_optuna():
    """optuna, logging warnings only and without the warnings the search expects."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # The heartbeat runs around each candidate here (ask/tell), as Study.optimize would run it.
    warnings.filterwarnings("ignore",
                            message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def check_optuna(sampler) -> None:
    """optuna (and CMA-ES's own package for --sampler cmaes), before anything is read."""
    import_extra("optuna", "search", "the search keeps its candidates in an optuna study, and optuna "
                 "cannot be imported ({error})")
    if sampler == "cmaes":
        import_extra("cmaes", "search", "--sampler cmaes runs optuna's CMA-ES sampler on the cmaes package, "
                     "and cmaes cannot be imported ({error})")


# The search runs its own ask/tell loop rather than Study.optimize: a worker waits for the
# others' running candidates, asks for more (--refine) once the queue is empty, and closes
# duplicates unscored, none of which optimize's loop allows. So the heartbeat that optimize
# would run around each trial is run here, and a dead worker's trial is failed by id.

@contextlib.contextmanager
def heartbeats(storage, trial, interval: float):
    """optuna's heartbeat for ``trial`` while the block runs (database storages only)."""
    optuna = import_optuna()
    if not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="expo-search-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_trial(storage, trial) -> None:
    """Mark another process's running trial failed (its owner is gone)."""
    optuna = import_optuna()
    storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def rdb_storage(url: str, heartbeat: int):
    """optuna's RDB storage with heartbeats; on SQLite every transaction takes the write lock
    first (BEGIN IMMEDIATE): optuna pops a waiting trial by reading it WAITING, then writing
    RUNNING, and SQLite's deferred transactions let two workers both pop the same trial."""
    optuna = import_optuna()
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
    if storage.engine.dialect.name == "sqlite":
        from sqlalchemy import event

        event.listen(storage.engine, "connect", _no_implicit_transactions)
        event.listen(storage.engine, "begin", _begin_immediate)
        storage.engine.dispose()  # connections opened before the listeners are not reused
    return storage


def _no_implicit_transactions(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # the "begin" listener starts each transaction


def _begin_immediate(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
