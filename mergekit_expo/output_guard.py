"""Where a command may write: never over an input, and never over something it did not make.

Every command checks its output paths with :func:`check_output` before it reads a
single tensor. Two rules:

1. An output may not be, contain, or sit inside anything the job reads (model and
   adapter folders, the config file, data files, the search folder), compared both
   as written (a folder of symlinks is still the user's) and with symlinks resolved.
2. An existing, non-empty output is replaced only with ``--overwrite``, and only when
   it is exactly what a command of ours wrote there (its :mod:`~mergekit_expo.manifest`:
   same kind, no file added, none changed). The replacement itself is in
   :mod:`~mergekit_expo.atomic_output`.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

from mergekit_expo import manifest
from mergekit_expo.atomic_output import clean_stale, refuse_other_writers
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.filesystem import make_parents, remove_if_empty

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Output:
    """An output path that passed the checks, and what ``--overwrite`` may replace there."""

    path: Path  # absolute
    given: str  # as the user wrote it, for messages
    kind: str  # see manifest.KINDS
    command: str  # how the user ran it, recorded in the manifest
    replaces: Optional[str] = None  # manifest id of the previous output checked; None: nothing


def check_output(
    out_path: PathLike,
    *,
    reads: Iterable[Tuple[str, Optional[PathLike]]],
    kind: str,
    command: str,
    overwrite: bool = False,
) -> Output:
    """Return the checked output, or raise ExpoConfigError in one line.

    ``reads`` pairs a description ("the aligned model") with a path the job reads;
    paths that are None are skipped; paths not on disk yet (a search folder) count.
    """
    out = _absolute(out_path)
    check_no_overlap(out, out_path, reads)
    if out.is_symlink():
        raise ExpoConfigError(f"output path {out_path} is a symlink: give the folder it should be "
                              "written to itself")
    if out.exists() and not out.is_dir():
        raise ExpoConfigError(f"output path {out_path} is a file: choose a folder path")
    clean_stale(out)
    refuse_other_writers(out, out_path)
    replaces = None
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExpoConfigError(
                f"output folder {out_path} already exists and is not empty: choose another "
                f"path, or pass --overwrite to replace it (only {manifest.KINDS[kind]} is replaced)"
            )
        try:
            replaces = manifest.verify(out, kind).id
        except manifest.NotOurs as reason:
            raise ExpoConfigError(
                f"--overwrite refused: {out_path} {reason}; it may hold something of yours: "
                "choose another output path, or move it away yourself"
            ) from None
    check_writable_parent(out)
    return Output(path=out, given=str(out_path), kind=kind, command=command, replaces=replaces)


def check_no_overlap(out: Path, out_path: PathLike, reads: Iterable[Tuple[str, Optional[PathLike]]], *,
                     what: str = "output path", fix: str = "write the output to a path outside every input",
                     ) -> None:
    if not str(out_path).strip():  # an unset shell variable: it would resolve to the current folder
        raise ExpoConfigError(f"{what} is empty ({str(out_path)!r}): give the folder to write to")
    for role, path in reads:
        relation = path is not None and _overlap(out, _absolute(path))
        if relation:
            raise ExpoConfigError(f"{what} {out_path} {relation} {role} {path}: {fix}")


def _absolute(path: PathLike) -> Path:
    # abspath also folds "a/../b", which Path.absolute() keeps.
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _overlap(out: Path, source: Path) -> Optional[str]:
    # Both as written and resolved: ./models may be a folder of symlinks the user
    # made, and ./out may be a symlink into a model folder.
    for first, second in ((out, source), (Path(os.path.realpath(out)), Path(os.path.realpath(source)))):
        if first == second:
            return "is"
        if second.is_relative_to(first):
            return "contains"
        if first.is_relative_to(second):
            return "is inside"
    return None


def check_writable_parent(out: Path) -> None:
    """Try creating the missing parent folders, then remove them again: the command
    creates them only when it writes, and removes them if it fails."""
    try:
        created = make_parents(out.parent)
    except OSError as error:
        raise ExpoConfigError(
            f"cannot create {out.parent} ({error.strerror}): choose a writable output folder"
        ) from None
    try:
        writable = os.access(out.parent, os.W_OK | os.X_OK)
    finally:
        remove_if_empty(created)
    if not writable:
        raise ExpoConfigError(f"cannot write to {out.parent}: choose a writable output folder")
