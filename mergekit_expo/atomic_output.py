"""Write a merge to a hidden sibling folder and move it into place only when complete."""

import contextlib
import os
import shutil
from pathlib import Path

from mergekit_expo.errors import ExpoConfigError


def check_output_path(out_path: str, overwrite: bool) -> Path:
    """Fail early, in one line, on output paths the merge could never finish in."""
    out = Path(out_path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ExpoConfigError(f"output path {out_path} is a file: choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExpoConfigError(
            f"output folder {out_path} already exists and is not empty: remove it, "
            "choose another path, or pass --overwrite"
        )
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExpoConfigError(
            f"cannot create {parent} ({error.strerror}): choose a writable output folder"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExpoConfigError(
            f"cannot write to {parent}: choose a writable output folder"
        )
    return out


@contextlib.contextmanager
def staged_folder(out: Path):
    """Yield a staging path named like ``out``; on success it replaces ``out``.

    On any failure or interruption the staging folder is removed, so ``out`` is
    either untouched or a complete merge, never a half-written one.
    """
    staging_root = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging = staging_root / out.name  # same basename: mergekit names the model card after it
    staging_root.mkdir()
    try:
        yield staging
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    retired = staging.parent / "previous"
    out.rename(retired)
    staging.rename(out)
