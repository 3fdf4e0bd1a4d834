"""What a command wrote: a small hidden JSON inside every output folder it publishes.

``--overwrite`` may replace a folder only if it is exactly what one of our commands
wrote: every file listed, unchanged, and nothing else. The manifest names the
command and, per file, its size and a SHA-256 (of the whole file up to
:data:`FULL_HASH_LIMIT`, of sampled blocks above it: hashing every byte of a 70B
model on each overwrite would cost minutes). It travels with the folder through
``cp -r``, ``rsync`` or ``mv``.
"""

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.filesystem import write_file_atomically

MANIFEST = ".mergekit-expo.json"
FULL_HASH_LIMIT = 64 * 1024 * 1024
SAMPLE_BLOCK = 64 * 1024
SAMPLE_COUNT = 16
EDGE_BLOCK = 1024 * 1024  # a safetensors header, and a file's tail, hashed in full

# kind -> the commands that write it, and what the user calls it
WRITERS = {
    "model": "`mergekit-expo run` or `search --write-best`",
    "adapter": "`mergekit-expo lora`",
    "demo": "`mergekit-expo demo`",
}
NOUNS = {"model": "a merged model", "adapter": "a LoRA adapter", "demo": "a demo folder"}
KINDS = {kind: f"{noun} written by {WRITERS[kind]}" for kind, noun in NOUNS.items()}


@dataclass(frozen=True)
class Manifest:
    kind: str
    command: str
    id: str
    files: Dict[str, dict]
    folders: List[str]


def fingerprint(path: Path) -> dict:
    """Size and SHA-256: of the whole file, or above FULL_HASH_LIMIT of its edges and
    SAMPLE_COUNT evenly spaced blocks (any re-save or fine-tune in place changes those)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            return {"size": size, "sha256": digest.hexdigest()}
        spans = [(0, EDGE_BLOCK), (size - EDGE_BLOCK, EDGE_BLOCK)]
        step = (size - SAMPLE_BLOCK) // (SAMPLE_COUNT - 1)
        spans += [(i * step, SAMPLE_BLOCK) for i in range(SAMPLE_COUNT)]
        for offset, length in spans:
            handle.seek(offset)
            digest.update(handle.read(length))
    return {"size": size, "sampled_sha256": digest.hexdigest()}


def write(folder: Path, *, kind: str, command: str, output_id: Optional[str] = None) -> None:
    """List every file and folder under ``folder`` (which must hold only our files).

    ``command`` is how the user ran it, e.g. ``mergekit-expo run``.
    """
    files, folders = {}, []
    for relative, path in _entries(folder):
        if path.is_dir():
            folders.append(relative)
        else:
            files[relative] = fingerprint(path)
    _save(folder, Manifest(kind=kind, command=command, id=output_id or uuid.uuid4().hex, files=files,
                           folders=folders))


def record(folder: Path, names) -> None:
    """Add or update ``names``, files we just wrote into an existing output, in its manifest.

    Every other entry stays as it was, so a file of the user's never becomes ours; a
    folder without a manifest (plain mergekit-yaml output) does not get one.
    """
    try:
        old = read(folder)
    except NotOurs:
        return
    files = dict(old.files, **{name: fingerprint(folder / name) for name in names})
    _save(folder, replace(old, files=files))


def _save(folder: Path, manifest: Manifest) -> None:
    text = json.dumps({"written_by": manifest.command, "kind": manifest.kind, "id": manifest.id,
                       "files": manifest.files, "folders": manifest.folders}, indent=1, sort_keys=True)
    write_file_atomically(folder / MANIFEST, text)


def refresh(folder: Path) -> None:
    """Fingerprint ``folder`` again after we edited our own files in it (same kind and id)."""
    old = read(folder)
    write(folder, kind=old.kind, command=old.command, output_id=old.id)


def read(folder: Path) -> Manifest:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return Manifest(kind=data["kind"], command=data["written_by"], id=data["id"],
                        files=data["files"], folders=data["folders"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise NotOurs(f"has no readable {MANIFEST}") from None


class NotOurs(ExpoConfigError):
    """A folder holds something a command of ours did not write; the message says why and
    reads after the folder's name ("holds notes.txt, which ... did not write")."""


def verify(folder: Path, kind: str) -> Manifest:
    """The manifest of ``folder`` if it is exactly what a ``kind`` command wrote; else NotOurs.

    A listed file that is gone is fine (the user removed it: nothing of theirs is lost
    when the rest is replaced); an extra file, folder or symlink, or a changed file, is not.
    """
    if (folder / MANIFEST).is_symlink():
        raise NotOurs(f"has a symlink as {MANIFEST}")
    try:
        manifest = read(folder)
    except NotOurs:
        also = " (nor is a plain mergekit-yaml output replaced)" if kind == "model" else ""
        raise NotOurs(f"has no {MANIFEST}, so {WRITERS[kind]} did not write it{also}") from None
    if manifest.kind != kind:
        noun = NOUNS.get(manifest.kind, manifest.kind)  # the writer: its own record
        raise NotOurs(f"is {noun} written by `{manifest.command}`, not {KINDS[kind]}")
    folders = set(manifest.folders)
    for relative, path in _entries(folder):
        if path.is_symlink():
            raise NotOurs(f"holds {relative}, a symlink {manifest.command} did not write")
        is_dir = path.is_dir()
        if relative not in (folders if is_dir else manifest.files):
            raise NotOurs(f"holds {relative}{'/' if is_dir else ''}, which {manifest.command} did not write")
        if not is_dir and fingerprint(path) != manifest.files[relative]:
            raise NotOurs(f"has {relative} changed since {manifest.command} wrote it")
    return manifest


def remove(folder: Path, manifest: Manifest) -> bool:
    """Delete the files and folders ``manifest`` lists, and ``folder`` itself if then empty.

    Returns False if something unlisted is still there (it appeared after the check):
    it is left in place.
    """
    for relative in [*manifest.files, MANIFEST]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / relative)
    try:
        for relative in sorted(manifest.folders, key=lambda r: r.count("/"), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(folder / relative)
        os.rmdir(folder)
    except OSError:
        return False
    return True


def _entries(folder: Path):
    """(relative path, path) of everything under ``folder`` but the manifest, sorted, links not followed."""
    found = ((path.relative_to(folder).as_posix(), path) for path in Path(folder).rglob("*"))
    return sorted(entry for entry in found if entry[0] != MANIFEST)
