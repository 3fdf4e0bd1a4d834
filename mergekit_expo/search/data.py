"""Dev-set rows from JSONL, a JSON list, CSV, or a folder saved by `datasets`."""

import csv
import json
from pathlib import Path
from typing import List, Sequence

from mergekit_expo.errors import ExpoInputError


def read_records(path: str, required: Sequence[str]) -> List[dict]:
    file = Path(path)
    if not file.exists():
        raise ExpoInputError(f"data file {path} does not exist: check the path")
    if file.is_dir():
        try:
            import datasets
        except ImportError:
            raise ExpoInputError(
                f"{path} is a folder: install `datasets` to read saved datasets, or pass JSONL/CSV"
            ) from None
        rows = [dict(r) for r in datasets.load_from_disk(str(file))]
    elif file.suffix == ".csv":
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif file.suffix == ".json":
        rows = json.loads(file.read_text(encoding="utf-8"))
    else:
        try:
            rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except ValueError as error:
            raise ExpoInputError(f"data file {path} is not JSONL ({error}): one JSON object per line") from None
    if not rows:
        raise ExpoInputError(f"data file {path} is empty: it needs rows with {', '.join(required)}")
    missing = [key for key in required if key not in rows[0]]
    if missing:
        raise ExpoInputError(
            f"data file {path} lacks column(s) {', '.join(missing)}: each row needs "
            f"{', '.join(required)}"
        )
    return rows
