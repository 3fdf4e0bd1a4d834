"""Which study an ``--out`` belongs to: its reports are never replaced by another study's.

``results.json`` records the study's settings and its storage (None: ``study.db`` in the
folder). A search of another study into that folder is refused before any work, naming
every setting that differs; the same study resumes there.
"""

import os
import re
from pathlib import Path
from typing import Optional

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.search.results import RESULTS, comparable, differences, read_json, strategy_named
from mergekit_expo.search.study import DEFAULT_STORAGE

# Known only once the scorers are loaded: the study itself compares them.
LATE_SETTINGS = ("scorer_settings", "guard_settings")


def storage_record(storage: Optional[str]) -> Optional[str]:
    """How results.json names a --storage: paths made absolute, a password masked."""
    if not storage:
        return None
    if "://" not in storage:  # a journal file
        return os.path.abspath(storage)
    scheme, _, rest = storage.partition("://")
    if scheme.startswith("sqlite") and rest.startswith("/") and not rest.startswith("//"):
        return f"{scheme}:///{os.path.abspath(rest[1:])}"  # sqlite:///relative.db
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", storage)


def check_owner(out_dir: str, storage: Optional[str], settings: dict, *,
                default_note: Optional[str] = None) -> None:
    """Refuse a search whose study is not the one whose reports (or study.db) ``out_dir`` holds.
    ``default_note``: why the defaults chose this search's strategy (the user named none), said
    when it is the strategy that differs."""
    out = Path(out_dir)
    try:
        saved = read_json(out / RESULTS) if (out / RESULTS).is_file() else {}
    except ExpoConfigError:
        saved = None  # not JSON: not ours either
    ours = isinstance(saved, dict) and isinstance(saved.get("settings"), dict)  # every one we write has them
    if (out / RESULTS).is_file() and not ours:
        raise ExpoConfigError(f"{out / RESULTS} is not the results.json of a search: use another --out "
                              "(that file is left as it is)")
    has_study = (out / DEFAULT_STORAGE).is_file()
    if not saved and not has_study:
        return  # a new or empty folder
    if not has_study and saved.get("storage") is None:  # a default study that is gone, or an old version's
        if storage and "storage" not in saved:
            return  # results.json of a version that did not record the storage: the study checks the rest
        if not storage:
            raise ExpoConfigError(
                f"--out {out_dir} holds the results of an earlier search without its study "
                f"({DEFAULT_STORAGE}): give the --storage it was run with, or use another --out "
                "(that folder is left as it is)")
    recorded, wanted = saved.get("storage"), storage_record(storage)
    found = [] if recorded == wanted else [
        f"--storage was {recorded or f'not set (the study in {out_dir})'}, now {wanted or 'not set'}"]
    late = set(LATE_SETTINGS)
    recorded_settings = saved.get("settings", settings)
    found += differences({k: v for k, v in recorded_settings.items() if k not in late},
                         {k: v for k, v in comparable(recorded_settings, settings).items() if k not in late})
    if found:
        why = f"; {default_note}" if default_note and \
            strategy_named(recorded_settings) != strategy_named(settings) else ""
        raise ExpoConfigError(f"--out {out_dir} holds results of a different search: {'; '.join(found)}: "
                              f"use another --out, or that search's settings to resume it{why}")
