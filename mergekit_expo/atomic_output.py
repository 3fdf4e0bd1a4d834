"""Publishing an output folder: written beside its final path, moved in only when complete.

Paths are checked first by :mod:`mergekit_expo.output_guard`. Here, the move itself
must be safe against whatever is at the output path *at that moment*:

- the new folder is renamed in with no-replace semantics (``renameat2`` with
  ``RENAME_NOREPLACE`` on Linux), so a folder that appeared meanwhile — another
  run's result, a file the user put there — is never replaced;
- with ``--overwrite``, the previous output is moved aside, checked again against
  the manifest it was checked against before (same output, nothing added or
  changed), and deleted file by file only after the new one is in place; anything
  else is put back;
- a staging folder names its process (``.OUT.partial-PID/new/OUT``): a second process
  writing the same output is refused early, and staging folders of processes that
  are gone (``kill -9``) are cleaned up by the next run, only those.
"""

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional

from mergekit_expo import manifest
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.filesystem import (
    make_parents,
    owner_record,
    owner_state,
    remove_if_empty,
    rename_no_replace,
    start_time,
    usual_permissions,
    write_file_atomically,
)
from mergekit_expo.interruption import deferred, raise_if_interrupted, record_published

LOG = logging.getLogger("mergekit_expo")
# Inside a staging folder (fixed names: no output name can collide with them):
OWNER = "owner.json"  # which process writes it
NEW = "new"  # NEW/<output name>: the output being written (mergekit names the card after it)
PREVIOUS = "previous"  # the output being replaced, while it is


# -- staging folders ----------------------------------------------------------------------

def _staging_roots(out: Path) -> List[Path]:
    pattern = re.compile(rf"\.{re.escape(out.name)}\.partial-(\d+)")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def _owner_of(root: Path) -> dict:
    pid = int(root.name.rsplit("-", 1)[1])
    try:
        recorded = json.loads((root / OWNER).read_text())
    except (OSError, ValueError):  # not written yet, or lost: judge by the PID alone
        recorded = {"start": start_time(pid)}
    return {"pid": pid, "start": recorded.get("start"), "host": recorded.get("host")}


def refuse_other_writers(out: Path, given, *, mine: Optional[Path] = None) -> None:
    """Another live process is writing ``out``: refuse now rather than race it.

    With ``mine`` (our own staging folder, just made), two processes that started at
    the same moment see each other; the one that started later gives way.
    """
    for root in _staging_roots(out):
        if root == mine:
            continue
        owner = _owner_of(root)
        state = owner_state(owner)
        if state == "gone":
            continue
        if mine is not None and state == "alive" and _order(owner) > _order(owner_record()):
            continue  # it started after us: it gives way
        where = f" on {owner['host']}" if state == "elsewhere" else ""
        raise ExpoConfigError(
            f"another mergekit-expo process (PID {owner['pid']}{where}) is writing {given}: wait "
            f"for it to finish or choose another output path (if no such process is running, "
            f"delete {root})"
        )


def _order(owner: dict):
    return (owner["start"] if owner["start"] is not None else -1, owner["pid"])


def clean_stale(out: Path) -> None:
    """Remove the staging folders of processes that are gone, and only those.

    A replacement killed half-way may have left the previous output aside in its
    staging folder: it goes back to ``out`` if the new output was not published;
    if it was, the old one is deleted only if it is still exactly what was checked.
    """
    for root in _staging_roots(out):
        if owner_state(_owner_of(root)) != "gone":
            continue
        previous = root / PREVIOUS
        if previous.is_dir():
            if (root / NEW / out.name).exists():  # not published: the old output goes back
                with contextlib.suppress(OSError):
                    rename_no_replace(previous, out)
            else:
                with contextlib.suppress(manifest.NotOurs):
                    manifest.remove(previous, manifest.verify(previous, manifest.read(previous).kind))
        _discard(root, out)


def _discard(root: Path, out: Path) -> None:
    """Delete a staging folder. A previous output still aside in it (it could not be put
    back, or something appeared in it while it was being removed) is kept beside ``out``."""
    previous = root / PREVIOUS
    if previous.is_dir():
        kept = out.parent / f"{out.name}.previous-{root.name.rsplit('-', 1)[1]}"
        with contextlib.suppress(OSError):
            rename_no_replace(previous, kept)
            LOG.warning("the previous %s could not be put back or removed safely: it is kept as %s",
                        out, kept)
    if not previous.exists():
        shutil.rmtree(root, ignore_errors=True)


# -- publishing -------------------------------------------------------------------------------

@contextlib.contextmanager
def staged_output(target):
    """Yield a staging path (absent: the command creates it) for the checked ``target``
    (an :class:`~mergekit_expo.output_guard.Output`); on success it becomes ``target.path``.

    On any failure or interruption, the staging folder and any parent folder made for
    it are removed: the output path is then untouched, or holds a complete output. A
    signal during the publish itself is raised once it is done (the output is then
    complete, and recorded as such for the message).
    """
    out = target.path
    clean_stale(out)
    refuse_other_writers(out, target.given)
    created = make_parents(out.parent)
    root = out.parent / f".{out.name}.partial-{os.getpid()}"
    published = False
    try:
        try:
            os.mkdir(root)
        except FileExistsError:
            raise ExpoConfigError(f"this process is already writing {target.given}") from None
        write_file_atomically(root / OWNER, json.dumps(owner_record()))
        refuse_other_writers(out, target.given, mine=root)
        staging = root / NEW / out.name
        staging.parent.mkdir()
        yield staging
        usual_permissions(staging)
        manifest.write(staging, kind=target.kind, command=target.command)
        raise_if_interrupted()  # a signal dropped inside a callback still stops the publish
        # Once begun, the publish finishes (a signal is raised after it): an output half moved
        # in, or a previous output moved aside and not back, would be neither old nor new.
        with deferred():
            _publish(staging, target, root / PREVIOUS)
            published = True
            record_published(out, target.given)
    finally:
        with deferred():
            _discard(root, out)
            if not published:
                remove_if_empty(created)


def _publish(staging: Path, target, aside: Path) -> None:
    out, given = target.path, target.given
    if target.replaces is None:
        _move_in(staging, out, given, over_empty=True)
        return
    try:
        rename_no_replace(out, aside)
    except FileNotFoundError:  # the previous output is gone: the path is free
        _move_in(staging, out, given)
        return
    try:
        if aside.is_symlink():
            raise manifest.NotOurs("is now a symlink")
        previous = manifest.verify(aside, target.kind)
        if previous.id != target.replaces:
            raise manifest.NotOurs("is another output than the one there when the command started")
    except manifest.NotOurs as reason:
        _put_back(aside, out)
        raise ExpoConfigError(
            f"{given} changed while the command ran (it {reason}): it was left as it is and this "
            "output was discarded: check what is there, then rerun"
        ) from None
    try:
        _move_in(staging, out, given)
    except BaseException:
        _put_back(aside, out)
        raise
    # Deleted only now, file by file as checked; what appeared since stays (see _discard).
    manifest.remove(aside, previous)


def _move_in(staging: Path, out: Path, given, *, over_empty: bool = False) -> None:
    """Rename ``staging`` to ``out``, where nothing may be; ``over_empty``: an empty folder
    there (made by the user, or left empty) gives way, any other does not."""
    try:
        if over_empty and out.is_dir() and not out.is_symlink():
            os.rmdir(out)
        rename_no_replace(staging, out)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        raise ExpoConfigError(_appeared(out, given)) from None


def _appeared(out: Path, given) -> str:
    with contextlib.suppress(OSError):
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            return (f"{given} was created while the command ran and now holds {entries[0]}: it "
                    "was left as it is and this output was discarded: write to another path")
    return (f"{given} was created while the command ran (another process?): it was left as it "
            "is and this output was discarded: write to another path")


def _put_back(aside: Path, out: Path) -> None:
    with contextlib.suppress(OSError):
        rename_no_replace(aside, out)  # if this fails, _discard keeps it beside out
