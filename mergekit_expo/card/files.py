"""Putting a card into an output folder: atomically, marked as ours, never over someone's README.

A card we write ends with an HTML comment holding the SHA-256 of everything above it
(the Hub does not render it, and it travels with the file), so a later run tells its
own unedited card from one a user edited and from a README it never wrote.
"""

import hashlib
import itertools
import re
from enum import Enum
from pathlib import Path
from typing import Dict, Optional

import yaml

from mergekit_expo import manifest
from mergekit_expo.card.search_section import HEADING
from mergekit_expo.compat.mergekit import card_generator
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.filesystem import write_file_atomically

README = "README.md"
MARK = "<!-- written by mergekit-expo card; sha256 {digest} -->"
_MARK = re.compile(r"\n<!-- written by mergekit-expo card; sha256 ([0-9a-f]{64}) -->\n*\Z")
CONFIGURATION = "## Configuration"  # the heading after the search section


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
    if config_source is not None and is_mergekit_card(text, config_source, folder.name):
        return Readme.MERGEKIT
    return Readme.OTHER


def is_mergekit_card(text: str, config_source: str, name: str) -> bool:
    """Whether ``text`` is, to the byte, the card mergekit writes for this config into a
    folder called ``name``: regenerated with mergekit's own generator.

    Two things of that card depend on where and when the merge ran, and are read from
    ``text`` itself: which inputs mergekit took for Hub ids (its ``base_model`` list) and
    the order of its lists (mergekit lists the inputs in set order).
    """
    from mergekit.config import MergeConfiguration

    front = text.split("\n---\n", 1)[0]
    try:
        hub = yaml.safe_load(front[len("---\n"):]).get("base_model") if front.startswith("---\n") else None
        config = MergeConfiguration.model_validate(yaml.safe_load(config_source))
    except Exception:  # noqa: BLE001 - no front matter or config mergekit could have written
        return False
    if not isinstance(hub, list) or not all(isinstance(reference, str) for reference in hub):
        return False
    with card_generator(hub) as generate_card:
        cards = [generate_card(config, config_source, title) for title in (name, None)]
    return _unordered(text) in map(_unordered, cards)


def _unordered(card: str) -> str:
    """The card with each list above the config sorted (``- `` and ``* `` lines)."""
    head, fence, config = card.partition("```yaml\n")
    lines = []
    for is_item, run in itertools.groupby(head.split("\n"), key=lambda line: line.startswith(("- ", "* "))):
        group = list(run)
        lines.extend(sorted(group) if is_item else group)
    return "\n".join(lines) + fence + config


def kept_search_section(folder: Path) -> Optional[str]:
    """The "How α was chosen" section of the folder's card, if it is our unedited card."""
    if readme_kind(folder, None) is not Readme.OURS:
        return None
    text = (folder / README).read_text(encoding="utf-8")
    start = text.find(f"\n{HEADING}\n") + 1
    return text[start:text.index(f"\n{CONFIGURATION}\n", start)] if start else None


def check_card_targets(folder: Path, config_source: str, new_files: Dict[str, bytes], *,
                       overwrite: bool) -> None:
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
            f"{where} was not written by mergekit or mergekit-expo (or was edited since, or the folder "
            "renamed): move it away yourself (--overwrite replaces only an unedited generated card)")
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
        write_file_atomically(folder / name, files[name])
    manifest.record(folder, files)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
