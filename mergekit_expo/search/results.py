"""Results of an α search on disk: resumable JSON, CSV, plot, and a ready mergekit config.

results.json is rewritten atomically after every α, so Ctrl-C or kill -9 leaves the
last complete state and a rerun with the same settings skips the α values it has.
Every file is written as a temporary file renamed over the old one: a hard-linked
backup of the folder (``cp -al``) keeps its contents.
"""

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import yaml

from mergekit_expo.atomic_output import write_file_atomically
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
    guard: Optional[float] = None  # the --guard scorer's score at this α
    guard_low: Optional[float] = None
    guard_high: Optional[float] = None


class SearchResults:
    def __init__(self, folder: Path, settings: dict, rows: List[AlphaResult],
                 max_drop: Optional[float] = None, about: Optional[dict] = None):
        self.folder, self.settings, self.rows = folder, settings, rows
        # Not a search setting: a rerun with another --max-drop reuses every score.
        self.max_drop = max_drop
        # What reports and model cards say of the search (the data file's name), also
        # not part of its settings: a moved data file with the same content still resumes.
        self.about = dict(about or {})

    @classmethod
    def open(cls, folder: str, settings: dict, max_drop: Optional[float] = None,
             about: Optional[dict] = None) -> "SearchResults":
        """Resume from ``folder`` if it holds results of the same search settings.

        The folder is not created here: :meth:`add` does, with the first result.
        """
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise ExpoConfigError(f"--out {folder} is a file: choose a folder")
        rows = []
        if (path / RESULTS).is_file():
            saved = _read(path / RESULTS)
            try:
                rows = [AlphaResult(**row) for row in saved["results"]]
            except (KeyError, TypeError):
                raise ExpoConfigError(
                    f"{path / RESULTS} is not a search's results file: use another --out, or "
                    "delete it to start over"
                ) from None
            if saved.get("settings") != settings:
                raise ExpoConfigError(f"{folder} holds results of a different search: "
                                      f"{difference(saved.get('settings') or {}, settings)}: "
                                      "use another --out, or delete it to start over")
        return cls(path, settings, rows, max_drop, about)
    @classmethod
    def load(cls, folder: str) -> "SearchResults":
        """A search as it is on disk, with the --max-drop of its last run (for a model card)."""
        path = Path(folder)
        if not (path / RESULTS).is_file():
            raise ExpoConfigError(f"{folder} holds no {RESULTS}: pass the --out folder of a `mergekit-expo search`")
        saved = _read(path / RESULTS)
        try:
            rows = [AlphaResult(**row) for row in saved["results"]]
            settings, about = saved["settings"], saved.get("about") or {}
        except (KeyError, TypeError):
            raise ExpoConfigError(f"{path / RESULTS} is not a search's results: pass the --out folder "
                                  "of a `mergekit-expo search`") from None
        if not rows:
            raise ExpoConfigError(f"{path / RESULTS} holds no scored alpha yet: finish the search first")
        return cls(path, settings, rows, about.get("max_drop"), about)

    def save(self) -> None:
        about = dict(self.about, max_drop=self.max_drop)
        write_file_atomically(
            self.folder / RESULTS,
            json.dumps({"settings": self.settings, "about": about, "results": [asdict(r) for r in self.rows]},
                       indent=2),
        )

    def done(self, alpha: float) -> bool:
        return any(abs(row.alpha - alpha) < 1e-9 for row in self.rows)

    def add(self, row: AlphaResult) -> None:
        from mergekit_expo.atomic_output import make_parents

        self.rows.append(row)
        self.rows.sort(key=lambda r: r.alpha)
        make_parents(self.folder)
        self.save()

    def baseline(self) -> Optional[AlphaResult]:
        return next((r for r in self.rows if r.alpha == 0), None)

    def excluded(self) -> List[AlphaResult]:
        """α whose guard score fell more than --max-drop below the guard at α = 0."""
        baseline = self.baseline()
        if self.max_drop is None or baseline is None or baseline.guard is None:
            return []
        floor = baseline.guard - self.max_drop
        return [r for r in self.rows if r.guard is not None and r.guard < floor]

    def best(self) -> AlphaResult:
        """Highest score among the allowed α; ties (common for accuracies) go to the larger
        mean margin. α = 0 is never excluded, so some α is always allowed."""
        excluded = {r.alpha for r in self.excluded()}
        allowed = [r for r in self.rows if r.alpha not in excluded]
        return max(allowed, key=lambda r: (r.score, (r.extra or {}).get("mean_margin", float("-inf"))))

    def write_reports(self, sft: str, aligned: str, dtype: Optional[str]) -> dict:
        """results.csv, score_vs_alpha.png and best.yml; return their paths."""
        self.save()  # this run's --max-drop, even when every α was scored before
        csv_path = self.folder / "results.csv"
        with io.StringIO(newline="") as handle:
            writer = csv.writer(handle)
            extra_keys = sorted({k for r in self.rows for k in (r.extra or {})})
            guard = ["guard", "guard_low", "guard_high", "excluded"] if self.guarded else []
            excluded = {r.alpha for r in self.excluded()}
            writer.writerow(["alpha", "score", "low", "high", "n", "seconds", *guard, *extra_keys])
            for r in self.rows:
                guarded = [r.guard, r.guard_low, r.guard_high, r.alpha in excluded] if self.guarded else []
                writer.writerow([r.alpha, r.score, r.low, r.high, r.n, round(r.seconds, 3), *guarded,
                                 *[(r.extra or {}).get(k) for k in extra_keys]])
            write_file_atomically(csv_path, handle.getvalue())
        best = self.best()
        config = {
            "merge_method": "expo",
            "base_model": sft,
            "models": [{"model": aligned, "parameters": {"alpha": best.alpha}}],
        }
        if dtype:
            config["dtype"] = dtype
        best_path = self.folder / "best.yml"
        guard_line = ""
        if self.guarded and self.max_drop is not None:
            guard_line = (f"# guarded by {self.settings['guard']}: {best.guard:.6g} "
                          f"(at most {self.max_drop:g} below alpha = 0)\n")
        write_file_atomically(
            best_path,
            f"# best alpha by {self.settings['scorer']}: score {best.score:.6g}\n" + guard_line
            + yaml.safe_dump(config, sort_keys=False),
        )
        plot_path = self.folder / "score_vs_alpha.png"
        self._plot(plot_path)
        return {"csv": csv_path, "json": self.folder / RESULTS, "best": best_path, "plot": plot_path}

    @property
    def guarded(self) -> bool:
        return bool(self.settings.get("guard"))

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 if self.guarded else 1
        figure, axes = plt.subplots(panels, 1, figsize=(6, 4 * panels), sharex=True, squeeze=False)
        excluded = self.excluded()
        best = self.best()
        score_axis = axes[0][0]
        self._curve(score_axis, "score", self.settings["scorer"], excluded)
        score_axis.scatter([best.alpha], [best.score], color="red", zorder=3, label=f"best α = {best.alpha:g}")
        score_axis.set_title("ExPO: score vs extrapolation strength")
        score_axis.legend()
        if self.guarded:
            guard_axis = axes[1][0]
            self._curve(guard_axis, "guard", self.settings["guard"], excluded)
            baseline = self.baseline()
            if self.max_drop is not None and baseline is not None and baseline.guard is not None:
                guard_axis.axhline(baseline.guard - self.max_drop, color="red", linestyle=":",
                                   label=f"α = 0 minus --max-drop {self.max_drop:g}")
            guard_axis.set_title("guard: must stay within --max-drop of α = 0")
            guard_axis.legend()
        axes[-1][0].set_xlabel("α")
        figure.tight_layout()
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=100)
        plt.close(figure)
        write_file_atomically(path, image.getvalue())

    def _curve(self, axis, field: str, label: str, excluded: List[AlphaResult]) -> None:
        rows = [r for r in self.rows if getattr(r, field) is not None]
        low, high = ("low", "high") if field == "score" else ("guard_low", "guard_high")
        axis.plot([r.alpha for r in rows], [getattr(r, field) for r in rows], marker="o", label=field)
        banded = [r for r in rows if getattr(r, low) is not None]
        if banded:
            axis.fill_between([r.alpha for r in banded], [getattr(r, low) for r in banded],
                              [getattr(r, high) for r in banded], alpha=0.2, label="95% interval")
        baseline = self.baseline()
        if baseline is not None and getattr(baseline, field) is not None:
            axis.axhline(getattr(baseline, field), linestyle="--", color="gray", label="α = 0 (aligned model)")
        if excluded:
            axis.scatter([r.alpha for r in excluded], [getattr(r, field) for r in excluded], marker="x",
                         s=80, color="black", zorder=4, label="excluded by the guard")
        axis.set_ylabel(f"{field} ({label})")

    def summary(self) -> str:
        guard = f" {'guard':>10}" if self.guarded else ""
        lines = [f"{'alpha':>7} {'score':>10} {'95% interval':>22} {'n':>5} {'seconds':>8}{guard}"]
        for r in self.rows:
            interval = f"[{r.low:.4g}, {r.high:.4g}]" if r.low is not None else "-"
            guard = f" {r.guard:10.4g}" if self.guarded and r.guard is not None else ""
            lines.append(f"{r.alpha:7.3g} {r.score:10.4g} {interval:>22} {r.n:5d} {r.seconds:8.2f}{guard}")
        best = self.best()
        lines.append(f"best alpha = {best.alpha:g} (score {best.score:.4g})")
        baseline = self.baseline()
        if baseline is not None:
            lines.append(f"alpha = 0 (the aligned model) scores {baseline.score:.4g}")
        excluded = self.excluded()
        if excluded:
            lines.append(
                f"excluded alpha {', '.join(f'{r.alpha:g}' for r in excluded)}: the guard "
                f"{self.settings['guard']} fell more than {self.max_drop:g} below its {baseline.guard:.4g} "
                f"at alpha = 0 (to {', '.join(f'{r.guard:.4g}' for r in excluded)})")
        elif self.guarded and self.max_drop is not None:
            lines.append(f"no alpha excluded: the guard {self.settings['guard']} stayed within "
                         f"{self.max_drop:g} of alpha = 0")
        return "\n".join(lines)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ExpoConfigError(f"{path} is not valid JSON: delete it to start over") from None


# settings key -> how the user sets it
OPTION_NAMES = {
    "sft": "the SFT model", "aligned": "the aligned model", "scorer": "--scorer", "guard": "--guard",
    "data": "--data (its contents)", "reward_model": "--reward-model", "engine": "--engine",
    "dtype": "--dtype", "max_new_tokens": "--max-new-tokens", "sample": "--sample/--greedy",
    "temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k", "seed": "--seed",
    "presence_penalty": "--preset", "frequency_penalty": "--preset", "limit": "--limit",
    "num_fewshot": "--num-fewshot", "metrics": "--metric", "tasks": "--scorer/--guard lm-eval tasks",
    "tasks_path": "--tasks-path",
}


def difference(saved: dict, wanted: dict) -> str:
    """The first setting that differs, by its option name, with both values."""
    for key in sorted(set(saved) | set(wanted)):
        old, new = saved.get(key), wanted.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            return difference(old, new)
        if key == "data":
            return "--data: the file's contents (or path) differ from the searched one"
        name = OPTION_NAMES.get(key, key)
        return f"{name} was {_shown(old)}, now {_shown(new)}"
    return "its settings differ"


def _shown(value) -> str:
    return "not set" if value is None else repr(value) if isinstance(value, str) else str(value)
