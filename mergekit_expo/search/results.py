"""Results of an α search on disk: resumable JSON, CSV, plot, and a ready mergekit config.

results.json is rewritten atomically after every α, so Ctrl-C or kill -9 leaves the
last complete state and a rerun with the same settings skips the α values it has.
"""

import csv
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import yaml

from mergekit_expo.errors import ExpoConfigError

RESULTS = "results.json"


@dataclass
class AlphaResult:
    alpha: float
    score: float
    low: Optional[float]
    high: Optional[float]
    n: int
    seconds: float  # weight update plus scoring
    extra: Optional[dict] = None
    update_seconds: Optional[float] = None  # setting the weights in place alone


class SearchResults:
    def __init__(self, folder: Path, settings: dict, rows: List[AlphaResult]):
        self.folder, self.settings, self.rows = folder, settings, rows

    @classmethod
    def open(cls, folder: str, settings: dict) -> "SearchResults":
        """Resume from ``folder`` if it holds results of the same search settings."""
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise ExpoConfigError(f"--out {folder} is a file: choose a folder")
        path.mkdir(parents=True, exist_ok=True)
        rows = []
        if (path / RESULTS).is_file():
            try:
                saved = json.loads((path / RESULTS).read_text())
            except ValueError:
                raise ExpoConfigError(
                    f"{path / RESULTS} is not valid JSON: delete it to start over"
                ) from None
            if saved.get("settings") != settings:
                raise ExpoConfigError(
                    f"{folder} holds results of a different search (other models, data or "
                    "settings): use another --out, or delete it to start over"
                )
            rows = [AlphaResult(**row) for row in saved["results"]]
        return cls(path, settings, rows)

    def done(self, alpha: float) -> bool:
        return any(abs(row.alpha - alpha) < 1e-9 for row in self.rows)

    def add(self, row: AlphaResult) -> None:
        self.rows.append(row)
        self.rows.sort(key=lambda r: r.alpha)
        _write_atomically(
            self.folder / RESULTS,
            json.dumps({"settings": self.settings, "results": [asdict(r) for r in self.rows]}, indent=2),
        )

    def best(self) -> AlphaResult:
        """Highest score; ties (common for accuracies) go to the larger mean margin."""
        return max(self.rows, key=lambda r: (r.score, (r.extra or {}).get("mean_margin", float("-inf"))))

    def write_reports(self, sft: str, aligned: str, dtype: Optional[str]) -> dict:
        """results.csv, score_vs_alpha.png and best.yml; return their paths."""
        csv_path = self.folder / "results.csv"
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            extra_keys = sorted({k for r in self.rows for k in (r.extra or {})})
            writer.writerow(["alpha", "score", "low", "high", "n", "seconds", *extra_keys])
            for r in self.rows:
                writer.writerow([r.alpha, r.score, r.low, r.high, r.n, round(r.seconds, 3),
                                 *[(r.extra or {}).get(k) for k in extra_keys]])
        best = self.best()
        config = {
            "merge_method": "expo",
            "base_model": sft,
            "models": [{"model": aligned, "parameters": {"alpha": best.alpha}}],
        }
        if dtype:
            config["dtype"] = dtype
        best_path = self.folder / "best.yml"
        best_path.write_text(
            f"# best alpha by {self.settings['scorer']}: score {best.score:.6g}\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        plot_path = self.folder / "score_vs_alpha.png"
        self._plot(plot_path)
        return {"csv": csv_path, "json": self.folder / RESULTS, "best": best_path, "plot": plot_path}

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        alphas = [r.alpha for r in self.rows]
        scores = [r.score for r in self.rows]
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(alphas, scores, marker="o", label="score")
        banded = [r for r in self.rows if r.low is not None]
        if banded:
            axis.fill_between([r.alpha for r in banded], [r.low for r in banded],
                              [r.high for r in banded], alpha=0.2, label="95% interval")
        baseline = next((r for r in self.rows if r.alpha == 0), None)
        if baseline is not None:
            axis.axhline(baseline.score, linestyle="--", color="gray", label="α = 0 (aligned model)")
        best = self.best()
        axis.scatter([best.alpha], [best.score], color="red", zorder=3, label=f"best α = {best.alpha:g}")
        axis.set_xlabel("α")
        axis.set_ylabel(f"score ({self.settings['scorer']})")
        axis.set_title("ExPO: score vs extrapolation strength")
        axis.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)

    def summary(self) -> str:
        lines = [f"{'alpha':>7} {'score':>10} {'95% interval':>22} {'n':>5} {'seconds':>8}"]
        for r in self.rows:
            interval = f"[{r.low:.4g}, {r.high:.4g}]" if r.low is not None else "-"
            lines.append(f"{r.alpha:7.3g} {r.score:10.4g} {interval:>22} {r.n:5d} {r.seconds:8.2f}")
        best = self.best()
        lines.append(f"best alpha = {best.alpha:g} (score {best.score:.4g})")
        baseline = next((r for r in self.rows if r.alpha == 0), None)
        if baseline is not None:
            lines.append(f"alpha = 0 (the aligned model) scores {baseline.score:.4g}")
        return "\n".join(lines)


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
