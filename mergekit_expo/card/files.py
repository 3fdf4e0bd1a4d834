"""Putting a card into an output folder: atomically, marked as ours, never over someone's README.

A card we write ends with an HTML comment holding the SHA-256 of everything above it
(the Hub does not render it, and it travels with the file), so a later run tells its
own unedited card from one a user edited and from a README it never wrote.
"""

import hashlib
import os
import re
import string
import tempfile
from enum import Enum
from pathlib import Path
from typing import Dict, Optional

import yaml

from mergekit_expo import manifest
from mergekit_expo.errors import ExpoConfigError

README = "README.md"
MARK = "<!-- written by mergekit-expo card; sha256 {digest} -->"
_MARK = re.compile(r"\n<!-- written by mergekit-expo card; sha256 ([0-9a-f]{64}) -->\n*\Z")
MERGEKIT_METADATA = {"base_model", "tags", "library_name"}  # what mergekit's card puts there


class Readme(Enum):
    ABSENT = "absent"
    OURS = "a card mergekit-expo wrote, unedited"
    OURS_EDITED = "a card mergekit-expo wrote, edited since"
    MERGEKIT = "mergekit's own card, unedited"
    OTHER = "a README mergekit-expo did not write"


def marked(text: str) -> str:
    """``text`` with the mark that identifies it as our unedited card."""
    body = text.rstrip("\n") + "\n"
    return f"{body}\n{MARK.format(digest=_digest(body))}\n"


def readme_kind(folder: Path, config_source: Optional[str]) -> Readme:
    path = folder / README
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return Readme.OTHER  # replacing a link would cut it from what it points to, which is someone's
    if not path.exists():
        return Readme.ABSENT
    text = path.read_text(encoding="utf-8", errors="replace")
    match = _MARK.search(text)
    if match:
        return Readme.OURS if _digest(text[:match.start()]) == match.group(1) else Readme.OURS_EDITED
    if config_source is not None and is_mergekit_card(text, config_source):
        return Readme.MERGEKIT
    return Readme.OTHER


def is_mergekit_card(text: str, config_source: str) -> bool:
    """Whether ``text`` is mergekit's generated card for this config, as mergekit wrote it."""
    from mergekit.card import CARD_TEMPLATE

    pattern = []
    for literal, field, _, _ in string.Formatter().parse(CARD_TEMPLATE):
        pattern.append(re.escape(literal))
        if field == "config_yaml":
            pattern.append(re.escape(config_source))
        elif field in ("metadata", "model_list"):
            pattern.append(f"(?P<{field}>.*?)")
        elif field is not None:
            pattern.append(r"[^\n]*")
    match = re.fullmatch("".join(pattern), text, flags=re.S)
    if not match:
        return False
    try:
        metadata = yaml.safe_load(match.group("metadata"))
    except yaml.YAMLError:
        return False
    return isinstance(metadata, dict) and set(metadata) <= MERGEKIT_METADATA


def check_card_targets(folder: Path, config_source: str, new_files: Dict[str, bytes], *, overwrite: bool) -> None:
    """Refuse, in one line, to replace anything the user may have written."""
    kind = readme_kind(folder, config_source)
    where = folder / README
    if kind is Readme.OURS_EDITED:
        raise ExpoConfigError(
            f"{where} was edited after mergekit-expo wrote it: move it away first (the new card "
            "would not keep your edits), then copy your text into the new one")
    if kind is Readme.MERGEKIT and not overwrite:
        raise ExpoConfigError(
            f"{where} is mergekit's model card: pass --overwrite to replace it with the ExPO card")
    if kind is Readme.OTHER:
        raise ExpoConfigError(
            f"{where} was not written by mergekit or mergekit-expo (or was edited since): move it "
            "away yourself (--overwrite replaces only an unedited generated card)")
    for name, content in new_files.items():
        path = folder / name
        if name == README or not (path.exists() or path.is_symlink()):
            continue
        ours = kind is Readme.OURS and f"]({name})" in where.read_text(encoding="utf-8")
        if not (path.is_file() and not path.is_symlink() and (ours or path.read_bytes() == content)):
            raise ExpoConfigError(
                f"{path} exists and is not a file an earlier card of this folder embeds: move it away "
                "yourself")


def publish(folder: Path, files: Dict[str, bytes]) -> None:
    """Write each file beside its final name and rename it into place, README last.

    Each rename is atomic, and the README that embeds the other files appears only
    once they are in place. An output of ours lists them in its manifest, so that a later
    --overwrite still knows the folder as its own.
    """
    for name in sorted(files, key=lambda n: n == README):
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(files[name])
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the card from others
            os.replace(temporary, folder / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    manifest.record(folder, files)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
