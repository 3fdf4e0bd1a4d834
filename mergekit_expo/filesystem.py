"""What every writer shares (outputs, manifests, reports, the search's study): atomic
files, no-replace renames, parent folders, and which process owns something and whether
it still runs. Standard library only.
"""

import contextlib
import ctypes
import errno
import os
import secrets
import socket
from pathlib import Path
from typing import List, Optional, Union


def write_file_atomically(path: Path, data: Union[str, bytes]) -> None:
    """Write a temporary file beside ``path`` and rename it over ``path``.

    A reader never sees half a file, and the old file is replaced, not rewritten in
    place, so a hard-linked copy of it (``cp -al``) keeps its contents. The mode is
    the usual 0666 minus the umask, like any file the process creates.
    """
    path = Path(path)
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def process_umask() -> int:
    """The umask, read without changing it where the system says it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restored at once
    os.umask(mask)
    return mask


def usual_permissions(folder: Path) -> None:
    """Give every file under ``folder`` the mode a new file of this process gets, 0666 minus
    the umask (execute bits kept): safetensors 0.8 writes weights through a private temporary
    file, owner-only (0600), which other users of a shared machine could not read."""
    mask = process_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            current = path.stat().st_mode & 0o777
            mode = (0o666 & ~mask) | (current & 0o111 & ~mask)
            if current != mode:
                os.chmod(path, mode)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
try:  # renameat2(2) with RENAME_NOREPLACE (Linux); elsewhere, the portable equivalent below
    _RENAMEAT2 = ctypes.CDLL(None, use_errno=True).renameat2 if os.name == "posix" else None
except (OSError, AttributeError):
    _RENAMEAT2 = None


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename the folder ``source`` to ``target``; FileExistsError if ``target`` exists,
    even as an empty folder (which POSIX ``rename`` would silently replace)."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                      _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem lacks the flag
            raise OSError(code, os.strerror(code), str(target))
    _rename_onto_new_folder(source, target)


def _rename_onto_new_folder(source: Path, target: Path) -> None:
    """The portable equivalent: claim ``target`` with an exclusive mkdir, then rename onto
    that empty folder; if anything was put into it meanwhile, rename fails (ENOTEMPTY)."""
    if os.name != "posix":
        os.rename(source, target)  # Windows: rename never replaces
        return
    os.mkdir(target)  # FileExistsError if anything is there
    try:
        os.rename(source, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(target)  # ours, if still empty
        raise


def make_parents(folder: Path) -> List[Path]:
    """Create ``folder`` and missing parents; return those created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # another process (a second search worker) made it first: not ours to remove
        created.append(path)
    return created


def remove_if_empty(created: List[Path]) -> None:
    """Undo :func:`make_parents` where nothing was put inside (rmdir fails otherwise)."""
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            return


def start_time(pid: int) -> Optional[int]:
    """When ``pid`` started (clock ticks since boot, Linux), None where unknown or gone.
    A PID that was reused by a later process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie has finished
        return None
    return int(fields[19])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir() or start_time(pid) is not None


def owner_record() -> dict:
    """This process, as a staging folder or a study's trial records its owner."""
    return {"pid": os.getpid(), "start": start_time(os.getpid()), "host": socket.gethostname()}


def owner_state(owner: dict) -> str:
    """'alive', 'gone' (its process ended: what it owns is stale) or 'elsewhere' (another host)."""
    if owner["host"] not in (None, socket.gethostname()):
        return "elsewhere"
    if not _alive(owner["pid"]):
        return "gone"
    if owner["start"] is not None and start_time(owner["pid"]) not in (None, owner["start"]):
        return "gone"  # the PID now belongs to a later process
    return "alive"
