"""Dev-set rows from JSONL, a JSON list, CSV, or a folder saved by `datasets`.

Every row is checked when the file is read, before any model is loaded: a bad row
deep in the file is one line naming the row and the field, not an error halfway
through the first α.
"""

import csv
import json
from pathlib import Path
from typing import List, Sequence, Tuple

from mergekit_expo.errors import ExpoInputError


def read_records(path: str, required: Sequence[str]) -> List[dict]:
    """The rows of ``path``; each has every ``required`` field as non-empty text."""
    return [row for _, row in read_located(path, required)]


def read_located(path: str, required: Sequence[str]) -> List[Tuple[str, dict]]:
    """(where, row) for every row of ``path``: where is "line 7" (JSONL, CSV) or "item 3"."""
    file = Path(path)
    if not file.exists():
        raise ExpoInputError(f"data file {path} does not exist: check the path")
    try:
        located = _read(file, path)
    except UnicodeDecodeError:
        raise ExpoInputError(f"data file {path} is not UTF-8 text: save it as UTF-8") from None
    if not located:
        raise ExpoInputError(f"data file {path} is empty: it needs rows with {', '.join(required)}")
    for where, row in located:
        _check_row(path, where, row, required)
    return located


def _read(file: Path, path: str) -> List[Tuple[str, object]]:
    """(where, row) pairs; ``where`` is what the user looks for in the file ("line 7")."""
    if file.is_dir():
        try:
            import datasets
        except ImportError:
            raise ExpoInputError(
                f"{path} is a folder: install `datasets` to read saved datasets, or pass JSONL/CSV"
            ) from None
        try:
            saved = datasets.load_from_disk(str(file))
        except FileNotFoundError:  # datasets' word for a folder it did not write
            raise ExpoInputError(f"data file {path} is a folder, but not a dataset saved by datasets' "
                                 "save_to_disk: give a JSONL, JSON or CSV file, or such a folder") from None
        return [(f"row {index}", dict(r)) for index, r in enumerate(saved)]
    if file.suffix == ".csv":
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, restval="")  # a short line: its last fields are empty
            return [(f"line {reader.line_num}", row) for row in reader]
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as error:
            raise ExpoInputError(f"data file {path} is not valid JSON ({error}): fix it, or write "
                                 "JSONL (one JSON object per line)") from None
        if not isinstance(rows, list):
            raise ExpoInputError(
                f"data file {path} holds a JSON {type(rows).__name__}, not a list of rows: write "
                '[{"prompt": ...}, ...], or JSONL (one object per line)'
            )
        return [(f"item {index}", row) for index, row in enumerate(rows)]
    located = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                located.append((f"line {number}", json.loads(line)))
            except ValueError as error:
                raise ExpoInputError(f"data file {path} line {number} is not JSON ({error}): "
                                     "JSONL needs one JSON object per line") from None
    return located


def _check_row(path: str, where: str, row, required: Sequence[str]) -> None:
    need = ", ".join(required)
    if not isinstance(row, dict):
        raise ExpoInputError(f"data file {path} {where} is {_type(row)}, not an object with "
                             f"{need}: make every row an object with those fields")
    for key in required:
        if key not in row:
            raise ExpoInputError(f"data file {path} {where} has no {key!r}: every row needs {need}")
        value = row[key]
        if not isinstance(value, str):
            raise ExpoInputError(f"data file {path} {where}: {key!r} is {_type(value)}, not text: "
                                 "write it as a string")
        if not value.strip():
            raise ExpoInputError(f"data file {path} {where}: {key!r} is empty: fill it in or "
                                 "remove the row")


def _type(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object", str: "text"}.get(type(value), type(value).__name__)
