"""lm-evaluation-harness, as the lm-eval scorer uses it (the ``[lm-eval]`` extra:
lm-eval 0.4.9 to 0.4.x): what it lacks an option for, done here."""

import logging
import subprocess
from typing import List

from mergekit_expo.compat.extras import import_extra


def import_lm_eval() -> None:
    import_extra("lm_eval.tasks", "lm-eval", "the lm-eval scorer needs lm-evaluation-harness")


def quiet_lm_eval() -> None:
    # lm-eval logs every task's defaults at WARNING; our tqdm bars and summary are the report.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # It records `git describe` of the working folder in every result, and outside a git
    # checkout git prints "fatal: not a git repository" once per evaluation. lm-eval has no
    # option for it: the same call, with git's stderr silenced.
    import lm_eval.evaluator

    if hasattr(lm_eval.evaluator, "get_git_commit_hash"):
        lm_eval.evaluator.get_git_commit_hash = _git_commit_hash


def _git_commit_hash():
    try:
        described = subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL)
        return described.strip().decode()
    except (subprocess.CalledProcessError, OSError):
        return None


def dataset_of(manager, name: str) -> str:
    """`` path (subset)`` of the dataset task ``name`` loads, from lm-eval's task index; "" if none."""
    entry = manager.task_index.get(name)
    config = getattr(entry, "cfg", None) or {}
    path = config.get("dataset_path")
    if not path:
        return ""
    subset = config.get("dataset_name")
    return f" {path}" + (f" ({subset})" if subset else "")


def filter_names(task) -> List[str]:
    """A task's filters (private to it), whose results lm-eval reports as 'metric,filter'."""
    return [getattr(f, "name", "none") for f in getattr(task, "_filters", [])] or ["none"]
