"""Where a command may write: never over an input, and never over something it did not make.

Every command checks its output paths with :func:`check_output` before it reads a
single tensor. Two rules:

1. An output may not be, contain, or sit inside anything the job reads (model and
   adapter folders, the config file, data files, the search folder), compared both
   as written (a folder of symlinks is still the user's) and with symlinks resolved.
2. An existing, non-empty output is replaced only with ``--overwrite``, and only when
   it is clearly a previous output of the same kind (see :data:`KINDS`); the old one
   is moved aside and removed only after the new one is in place.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Tuple, Union

from mergekit_expo.errors import ExpoConfigError

PathLike = Union[str, Path]
DEMO_MARKER = ".mergekit-expo-demo"
WEIGHT_GLOBS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class OutputKind:
    """What a previous output of one command looks like, in the user's words."""

    description: str
    is_previous: Callable[[Path], bool]


def _flat(folder: Path) -> bool:
    # Outputs of mergekit and of our commands have no subfolders; a folder with
    # subfolders is someone's workspace, however model-like its top level is.
    return not any(entry.is_dir() for entry in folder.iterdir())


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_GLOBS)


def _is_merged_model(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / "mergekit_config.yml").is_file()
        and _has_weights(folder)
        and _flat(folder)
    )


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and _has_weights(folder) and _flat(folder)


def _is_demo(folder: Path) -> bool:
    return (folder / DEMO_MARKER).is_file()


KINDS = {
    "model": OutputKind(
        "a merged model written by mergekit (config.json, weights and mergekit_config.yml, no subfolders)",
        _is_merged_model,
    ),
    "adapter": OutputKind(
        "a LoRA adapter folder (adapter_config.json and weights, no subfolders)", _is_adapter
    ),
    "demo": OutputKind(f"a folder written by `mergekit-expo demo` (it holds {DEMO_MARKER})", _is_demo),
}


def check_output(
    out_path: PathLike,
    *,
    reads: Iterable[Tuple[str, Optional[PathLike]]],
    kind: str,
    overwrite: bool = False,
    option: str = "--overwrite",
) -> Path:
    """Return the absolute output folder, or raise ExpoConfigError in one line.

    ``reads`` pairs a description ("the aligned model") with a path the job reads;
    paths that are None are skipped; paths not on disk yet (a search folder) count.
    """
    out = _absolute(out_path)
    check_no_overlap(out, out_path, reads)
    if out.exists() and not out.is_dir():
        raise ExpoConfigError(f"output path {out_path} is a file: choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        previous = KINDS[kind]
        if not overwrite:
            raise ExpoConfigError(
                f"output folder {out_path} already exists and is not empty: choose another "
                f"path, or pass {option} to replace it (only {previous.description} is replaced)"
            )
        if not previous.is_previous(out):
            raise ExpoConfigError(
                f"{option} refused: {out_path} is not {previous.description}, so it may hold "
                "something of yours: choose another output path, or move it away yourself"
            )
    check_writable_parent(out)
    return out


def check_no_overlap(out: Path, out_path: PathLike, reads: Iterable[Tuple[str, Optional[PathLike]]]) -> None:
    for role, path in reads:
        if path is None:
            continue
        relation = _overlap(out, _absolute(path))
        if relation:
            raise ExpoConfigError(
                f"output path {out_path} {relation} {role} {path}: write the output to a "
                "path outside every input"
            )


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
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExpoConfigError(
            f"cannot create {parent} ({error.strerror}): choose a writable output folder"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExpoConfigError(f"cannot write to {parent}: choose a writable output folder")
