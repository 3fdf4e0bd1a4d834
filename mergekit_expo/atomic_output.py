"""Write an output beside its final path and move it into place only when complete.

Paths are checked first by :mod:`mergekit_expo.output_guard`; these helpers only
make the replacement atomic: the old output, if any, is moved aside and removed
only once the new one is in place.
"""

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def staged_folder(out: Path):
    """Yield a staging path named like ``out``; on success it replaces ``out``.

    On any failure or interruption the staging folder is removed, so ``out`` is
    either untouched or a complete output, never a half-written one.
    """
    staging_root = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging = staging_root / out.name  # same basename: mergekit names the model card after it
    staging_root.mkdir()
    try:
        yield staging
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


@contextlib.contextmanager
def replaced_folder(out: Path):
    """Yield ``out`` itself, empty; a previous ``out`` comes back if the job fails.

    For outputs whose files must name their final paths while being written (the
    demo's config names its model folders), so they cannot be staged elsewhere.
    """
    retired = out.parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        out.rename(retired)
    try:
        out.mkdir(parents=True)
        yield out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if retired.exists():
            retired.rename(out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    retired = staging.parent / "previous"
    out.rename(retired)
    staging.rename(out)
