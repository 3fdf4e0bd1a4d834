"""optuna, as the search uses it: quiet, and checked before any work."""

import warnings

from mergekit_expo.compat.extras import import_extra


def import_optuna():
    """optuna, logging warnings only and without the warnings the search expects."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # The heartbeat runs around each candidate here (ask/tell), as Study.optimize would run it.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def check_optuna(sampler) -> None:
    """optuna (and CMA-ES's own package for --sampler cmaes), before anything is read."""
    import_extra("optuna", "search", "the search keeps its candidates in an optuna study, and optuna "
                 "cannot be imported ({error})")
    if sampler == "cmaes":
        import_extra("cmaes", "search", "--sampler cmaes runs optuna's CMA-ES sampler on the cmaes package, "
                     "and cmaes cannot be imported ({error})")
