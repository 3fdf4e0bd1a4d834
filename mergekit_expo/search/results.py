"""Reports of an α search: results.json/csv, the plot, and a ready mergekit config.

The search's state lives in its optuna study (:mod:`.study`); these files are read
from it and rewritten atomically after every candidate, by whichever worker scored
it, so Ctrl-C or kill -9 leaves the last complete state. Every file is written as a
temporary file renamed over the old one: a hard-linked backup of the folder
(``cp -al``) keeps its contents.
"""

import csv
import io
import json
from pathlib import Path
from typing import List, Optional

import yaml

from mergekit_expo.compat.extras import import_extra
from mergekit_expo.compat.optuna import import_optuna
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.filesystem import write_file_atomically
from mergekit_expo.search import rows as candidate_rows
from mergekit_expo.search.registry import SPACES, STRATEGIES
from mergekit_expo.search.rows import AlphaResult

RESULTS = "results.json"
PLOT = "score_vs_alpha.png"  # also copied, under this name, beside a model card


def check_plotting() -> None:
    """The search ends with a plot: fail now, not after hours of scoring."""
    import_extra("matplotlib", "search", f"the search draws {PLOT} with matplotlib, which cannot be "
                 "imported ({error})")


class SearchResults:
    def __init__(self, folder: Path, settings: dict, rows: List[AlphaResult],
                 max_drop: Optional[float] = None, about: Optional[dict] = None,
                 storage: Optional[str] = None):
        self.folder, self.settings, self.rows = folder, settings, rows
        # The study's storage (None: study.db in the folder): the folder belongs to that study.
        self.storage = storage
        # Not a search setting: a rerun with another --max-drop reuses every score.
        self.max_drop = max_drop
        # What reports and model cards say of the search (the data file's name), also
        # not part of its settings: a moved data file with the same content still resumes.
        self.about = dict(about or {})
        # a strategy's record (a race's rounds, rows scored of a full search's, why it ended)
        self.race: Optional[dict] = None
        self.finished = False  # the reports after each unit are of a search still under way

    @classmethod
    def load(cls, folder: str) -> "SearchResults":
        """A search as it is on disk, with the --max-drop of its last run (for a model card)."""
        path = Path(folder)
        if not (path / RESULTS).is_file():
            raise ExpoConfigError(f"{folder} holds no {RESULTS}: pass the --out folder of a "
                                  "`mergekit-expo search`")
        saved = read_json(path / RESULTS)
        try:
            rows = [AlphaResult.stored(row) for row in saved["results"]]
            settings, about = saved["settings"], saved.get("about") or {}
        except (KeyError, TypeError):
            raise ExpoConfigError(f"{path / RESULTS} is not a search's results: pass the --out folder "
                                  "of a `mergekit-expo search`") from None
        if not rows:
            raise ExpoConfigError(f"{path / RESULTS} holds no scored alpha yet: finish the search first")
        if not saved.get("finished", True):  # (earlier versions did not record it)
            raise ExpoConfigError(f"the search in {folder} did not finish (stopped with {len(rows)} "
                                  "candidates scored): rerun its command to finish it, then write the card")
        loaded = cls(path, settings, rows, about.get("max_drop"), about)
        loaded.race, loaded.finished = saved.get("race"), True
        return loaded

    def save(self) -> None:
        about = dict(self.about, max_drop=self.max_drop)
        out = {r.key for r in self.excluded()}
        rows = [dict(r.record(), excluded=r.key in out) if self.guarded else r.record() for r in self.rows]
        saved = {"settings": self.settings, "storage": self.storage, "about": about,
                 "finished": self.finished, "results": rows}
        if self.race is not None:
            saved["race"] = self.race
        write_file_atomically(self.folder / RESULTS, json.dumps(saved, indent=2))

    @property
    def space(self) -> str:
        return self.settings.get("space") or SPACES.having("grid")[0].name

    @property
    def scalar(self) -> bool:
        """One α per candidate (the --alphas grid), rather than a vector of them."""
        return "grid" in SPACES.get(self.space).traits

    @property
    def reference_words(self) -> str:
        """What α = 0 is: the aligned model, or a run's fit at its last checkpoint's step."""
        if "checkpoints" in self.settings:
            return "the fit at the last checkpoint's step"
        return "the aligned model"

    def baseline(self) -> Optional[AlphaResult]:
        return next((r for r in self.rows if r.is_reference), None)

    def excluded(self) -> List[AlphaResult]:
        """Candidates whose guard score fell more than --max-drop below the guard at α = 0."""
        return candidate_rows.excluded(self.rows, self.max_drop)

    def best(self) -> AlphaResult:
        """The pick (:func:`.rows.best`)."""
        return candidate_rows.best(self.rows, self.max_drop)

    def eligible(self) -> List[AlphaResult]:
        """The candidates the pick is chosen from (:func:`.rows.eligible`)."""
        return candidate_rows.eligible(self.rows, self.max_drop)

    @property
    def strategy(self):
        """The strategy class that wrote ``race``, as the settings name it (None for a full search)."""
        return STRATEGIES.get(strategy_named(self.settings)).load() if self.race else None

    @property
    def unscored(self) -> List[dict]:
        return self.strategy.unscored(self.race) if self.race else []

    def write_tables(self) -> dict:
        """results.json and results.csv, one row per candidate with its α vector."""
        self.save()  # this run's --max-drop, even when every candidate was scored before
        csv_path = self.folder / "results.csv"
        with io.StringIO(newline="") as handle:
            writer = csv.writer(handle)
            coordinates = list(self.rows[0].coordinates) if self.rows else ["alpha"]
            extra_keys = sorted({k for r in self.rows for k in (r.extra or {})})
            guard = ["guard", "guard_low", "guard_high", "guard_reference", "excluded"] \
                if self.guarded else []
            raced = ["dropped_in", "retired_in", "pick_score"] if self.race is not None else []
            excluded = {r.key for r in self.excluded()}
            writer.writerow([*coordinates, "score", "low", "high", "n", "seconds", *guard, *raced,
                             *extra_keys, "candidate"])
            for r in self.rows:
                guarded = [r.guard, r.guard_low, r.guard_high, r.guard_reference, r.key in excluded] \
                    if self.guarded else []
                values = r.coordinates
                went = [r.dropped_in, r.retired_in, r.pick_score] if raced else []
                writer.writerow([*[values.get(c) for c in coordinates], r.score, r.low, r.high, r.n,
                                 round(r.seconds, 3), *guarded, *went,
                                 *[(r.extra or {}).get(k) for k in extra_keys], r.key])
            for left in self.unscored:  # the grid's α the strategy never scored: no score, 0 rows
                writer.writerow([left["alpha"], "", "", "", 0, 0, *[""] * (len(guard) + len(raced)),
                                 *[""] * len(extra_keys), left["candidate"]])
            write_file_atomically(csv_path, handle.getvalue())
        return {"csv": csv_path, "json": self.folder / RESULTS}

    def write_reports(self, config_of) -> dict:
        """results.json/csv, score_vs_alpha.png and best.yml; return their paths.

        ``config_of(coordinates)`` is the mergekit config of a candidate: the same function
        (:meth:`.space.CandidateResolver.config`) whose α the engine scored.
        """
        self.finished = True
        paths = self.write_tables()
        best = self.best()
        best_path = self.folder / "best.yml"
        guard_line = ""
        if self.guarded and self.max_drop is not None:
            guard_line = (f"# guarded by {self.settings['guard']}: {best.guard:.6g} "
                          f"(at most {self.max_drop:g} below alpha = 0)\n")
        what = "alpha" if self.scalar else f"candidate ({best.label})"
        write_file_atomically(
            best_path,
            f"# best {what} by {self.settings['scorer']}: score {best.score:.6g}\n" + guard_line
            + yaml.safe_dump(config_of(best.coordinates), sort_keys=False),
        )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = self._plot(plt) if self.scalar else self._plot_vectors()
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=100, bbox_inches="tight")  # the legends beside included
        plt.close(figure)
        write_file_atomically(self.folder / PLOT, image.getvalue())
        return dict(paths, best=best_path, plot=self.folder / PLOT)

    def why_best(self, best: AlphaResult) -> str:
        """Why the strategy's pick is the pick (a race or the curve search)."""
        if best.kept:
            return self.strategy.why_picked(self.race)
        return ("the guard excludes every alpha the strategy kept to the end, so the pick is the best of "
                f"those it allows that were scored on the most rows ({best.n}); 'pick there' is the race's "
                "leader's mean on each alpha's rows")

    @property
    def guarded(self) -> bool:
        return bool(self.settings.get("guard"))

    def _plot(self, plt):
        """Score (and guard) against α, on ``plt`` (pyplot)."""
        panels = 2 if self.guarded else 1
        figure, axes = plt.subplots(panels, 1, figsize=(5.5, 5 * panels), sharex=True, squeeze=False)
        excluded = self.excluded()
        best = self.best()
        score_axis = axes[0][0]
        self._curve(score_axis, "score", self.settings["scorer"], excluded)
        why = "" if not self.race else " (the race's pick)" if best.kept else " (allowed by the guard)"
        score_axis.scatter([best.alpha], [best.score], color="red", zorder=3,
                           label=f"best α = {best.alpha:g}{why}")
        raced = [r for r in self.rows if r.pick_score is not None and r.key != best.key]
        if raced:  # the comparison the race made: the pick on each other α's own rows
            score_axis.scatter([r.alpha for r in raced], [r.pick_score for r in raced], marker="_", s=120,
                               color="red", zorder=3,
                               label=f"{'the pick' if best.kept else 'the leader'} on that α's rows")
        if self.unscored:  # where the grid was never scored: ticks on the axis
            bottom = min(r.score if r.low is None else r.low for r in self.rows)
            score_axis.plot([left["alpha"] for left in self.unscored], [bottom] * len(self.unscored),
                            marker="|", markersize=12, linestyle="none", color="gray",
                            label="not scored (covered by the curve)")
        score_axis.set_title("ExPO: score vs extrapolation strength" + (
            "\nraced: hollow = no longer scored, a mean on its own rows" if self.race else ""),
            fontsize=10)
        _legend_beside(score_axis)
        if self.guarded:
            guard_axis = axes[1][0]
            self._curve(guard_axis, "guard", self.settings["guard"], excluded)
            baseline = self.baseline()
            if self.max_drop is not None and baseline is not None and baseline.guard is not None:
                guard_axis.axhline(baseline.guard - self.max_drop, color="red", linestyle=":",
                                   label=f"α = 0 minus --max-drop {self.max_drop:g}")
                own = [r for r in self.rows if r.guard_reference is not None]
                if own:  # stopped early: measured against α = 0 on the rows each read
                    floors = [r.guard_reference - self.max_drop for r in own]
                    guard_axis.scatter([r.alpha for r in own], floors, marker="_", s=120, color="red",
                                       zorder=3, label="the same, on that α's rows")
            guard_axis.set_title("guard: must stay within --max-drop of α = 0", fontsize=10)
            _legend_beside(guard_axis)
        axes[-1][0].set_xlabel("α")
        return figure

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
            axis.axhline(getattr(baseline, field), linestyle="--", color="gray",
                         label=f"α = 0 ({self.reference_words.removeprefix('the ')})")
        if excluded:
            axis.scatter([r.alpha for r in excluded], [getattr(r, field) for r in excluded], marker="x",
                         s=80, color="black", zorder=4, label="excluded by the guard")
        for marker, went, why in (("o", "dropped_in", "dropped by the race"),
                                  ("s", "retired_in", "within the tolerance of the leader")):
            gone = [r for r in rows if getattr(r, went) is not None]
            if gone:  # no longer scored (on fewer rows, as a rule): hollow
                axis.scatter([r.alpha for r in gone], [getattr(r, field) for r in gone], marker=marker, s=70,
                             facecolors="white", edgecolors="C0", zorder=3, label=why)
        axis.set_ylabel(f"{field} ({label})")

    def _plot_vectors(self):
        """optuna's matplotlib views of the candidates: a contour (heat map) for two
        coordinates, parallel coordinates for more."""
        optuna = import_optuna()
        coordinates = list(self.rows[0].coordinates)
        low = min(min(r.coordinates.values()) for r in self.rows)
        high = max(max(r.coordinates.values()) for r in self.rows)
        distribution = optuna.distributions.FloatDistribution(low, high if high > low else low + 1)
        study = optuna.create_study(direction="maximize")
        excluded = {r.key for r in self.excluded()}
        for r in self.rows:
            if r.key in excluded:
                continue
            study.add_trial(optuna.trial.create_trial(
                params=r.coordinates, distributions={c: distribution for c in coordinates}, value=r.score))
        if len(coordinates) == 2 and len(study.trials) >= 3:
            axes = optuna.visualization.matplotlib.plot_contour(study, target_name=self.settings["scorer"])
        else:
            axes = optuna.visualization.matplotlib.plot_parallel_coordinate(
                study, target_name=self.settings["scorer"])
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        best = self.best()
        figure.suptitle(f"ExPO: best {best.label} (score {best.score:.4g})"
                        + (f"; {len(excluded)} excluded by the guard" if excluded else ""), fontsize=9)
        return figure

    def summary(self) -> str:
        guard = f" {'guard':>10}" if self.guarded else ""
        raced = f" {'pick there':>10}  race" if self.race else ""
        first = "alpha" if self.scalar else "candidate"
        width = max([7] + [len(r.label) for r in self.rows])
        rows = "rows" if self.race else "n"
        lines = [f"{first:>{width}} {'score':>10} {'95% interval':>22} {rows:>5} {'seconds':>8}"
                 f"{guard}{raced}"]
        best = self.best()
        table = []
        for r in self.rows:
            interval = f"[{r.low:.4g}, {r.high:.4g}]" if r.low is not None else "-"
            guard = f" {r.guard:10.4g}" if self.guarded and r.guard is not None else ""
            raced = f" {_number(r.pick_score):>10}  {self.strategy.verdict(r, best, self.race)}" \
                if self.race else ""
            table.append((r.alpha, f"{r.label:>{width}} {r.score:10.4g} {interval:>22} {r.n:5d} "
                                   f"{r.seconds:8.2f}{guard}{raced}"))
        guard = f" {'-':>10}" if self.guarded else ""
        table += [(left["alpha"], f"{left['alpha']:>{width}g} {'-':>10} {'-':>22} {0:5d} {'-':>8}{guard} "
                                  f"{'-':>10}  not scored") for left in self.unscored]  # the grid's others
        lines += [line for _, line in (sorted(table, key=lambda item: item[0]) if self.scalar else table)]
        if self.unscored:
            reasons = "; ".join(sorted({left["why"] for left in self.unscored}))
            alphas = ", ".join(f"{left['alpha']:g}" for left in self.unscored)
            lines.append(f"not scored: alpha {alphas} ({reasons})")
        lines.append(f"best {'alpha = ' if self.scalar else ''}{best.label} (score {best.score:.4g}"
                     + (f" on {best.n} rows): {self.why_best(best)}" if self.race else ")"))
        baseline = self.baseline()
        if baseline is not None:
            lines.append(f"alpha = 0 ({self.reference_words}) scores {baseline.score:.4g}")
        excluded = self.excluded()
        if excluded:
            if all(r.guard_reference is None for r in excluded):
                below = (f"its {_number(baseline.guard)} at alpha = 0 "
                         f"(to {', '.join(_number(r.guard) for r in excluded)})")
            else:  # some read fewer guard rows than α = 0: each against α = 0 on its own rows
                each = "; ".join(f"{r.label}: {_number(r.guard)} against "
                                 f"{_number(candidate_rows.reference_guard(r, baseline))}" for r in excluded)
                below = f"alpha = 0's on the rows each read ({each})"
            lines.append(f"excluded {'alpha ' if self.scalar else ''}{', '.join(r.label for r in excluded)}: "
                         f"the guard {self.settings['guard']} fell more than {self.max_drop:g} below {below}")
        elif self.guarded and self.max_drop is not None:
            lines.append(f"no {'alpha' if self.scalar else 'candidate'} excluded: the guard "
                         f"{self.settings['guard']} stayed within {self.max_drop:g} of alpha = 0")
        return "\n".join(lines)


def _legend_beside(axis) -> None:
    """The legend right of the panel, where it hides no point of the curve."""
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8)


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value + 0.0:.4g}"  # + 0.0: -0.0 (a negated zero) as 0


def saved_about(folder: Path) -> Optional[dict]:
    """What the folder's results.json says of its last run (its --max-drop and, for a race, its
    tolerance and kind); None without one."""
    try:
        saved = read_json(Path(folder) / RESULTS)
        race = saved.get("race") or {}
        return dict(saved.get("about") or {}, tolerance=race.get("tolerance"), kind=race.get("kind"))
    except (OSError, ExpoConfigError, AttributeError):
        return None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ExpoConfigError(f"{path} is not valid JSON: delete it to start over") from None


# settings key -> how the user sets it
OPTION_NAMES = {
    "sft": "the SFT model", "aligned": "the aligned model", "checkpoints": "the checkpoints",
    "steps": "--steps (the checkpoints' steps)", "window": "--window", "scorer": "--scorer",
    "guard": "--guard",
    "data": "--data (its contents)", "reward_model": "--reward-model", "engine": "--engine",
    "dtype": "--dtype", "max_new_tokens": "--max-new-tokens", "sample": "--sample/--greedy",
    "temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k", "seed": "--seed",
    "presence_penalty": "--preset", "frequency_penalty": "--preset", "limit": "--limit",
    "num_fewshot": "--num-fewshot", "metrics": "--metric", "tasks": "--scorer/--guard lm-eval tasks",
    "tasks_path": "--tasks-path", "space": "--space", "alpha_range": "--alpha-range", "sampler": "--sampler",
    "trials": "--trials", "alphas": "--alphas", "refine": "--refine", "race": "--race",
    "strategy": "--strategy",
    "tolerance": "--race-tolerance", "max_drop": "--max-drop",
}


def difference(saved: dict, wanted: dict) -> str:
    """Every setting that differs, by its option name, with both values."""
    return "; ".join(differences(saved, wanted)) or "its settings differ"


# Settings that earlier versions did not record: a study saved without one is compared without it.
LATER_SETTINGS = ("weights",)


def comparable(saved: dict, wanted: dict) -> dict:
    """``wanted`` as a study saved as ``saved`` can be compared with."""
    return {key: value for key, value in wanted.items() if key not in LATER_SETTINGS or key in saved}


def differences(saved: dict, wanted: dict) -> List[str]:
    found = []
    # a strategy of dev rows records their order (under "race", as earlier versions did): named
    # with the strategy that differs, not again as a race
    strategy_differs = saved.get("strategy") != wanted.get("strategy")
    for key in sorted(set(saved) | set(wanted)):
        if key == "race" and strategy_differs:
            continue
        old, new = saved.get(key), wanted.get(key)
        if key == "strategy":  # one that earlier versions recorded without its name, by name
            old, new = strategy_named(saved), strategy_named(wanted)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new)
        elif isinstance(old, dict) or isinstance(new, dict):  # an option with settings of its own
            found.append(f"{OPTION_NAMES.get(key, key)} was {'set' if old else 'not set'}, "
                         f"now {'set' if new else 'not set'}")
        elif key == "data":
            found.append("--data: the file's contents (or path) differ from the searched one")
        elif key == "weights":
            found.append("the models' weights differ from the searched ones (other files at the same paths)")
        else:
            found.append(f"{OPTION_NAMES.get(key, key)} was {_shown(old)}, now {_shown(new)}")
    return list(dict.fromkeys(found))  # --preset's two penalties: named once


def strategy_named(settings: dict) -> str:
    """The strategy a study's settings record: by name, or the one recorded without it (a full
    search, or a race: its row order under "race"; a sampled space has an --alpha-range)."""
    if settings.get("strategy"):
        return settings["strategy"]
    kind, rows = ("sampled" if "alpha_range" in settings else "grid"), "race" in settings
    return next(entry.name for entry in STRATEGIES.having("implicit")
                if kind in entry.traits and ("rows" in entry.traits) == rows)


def _shown(value) -> str:
    return "not set" if value is None else repr(value) if isinstance(value, str) else str(value)
