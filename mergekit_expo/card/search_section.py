"""The card's "How α was chosen": the search's scorer, data, table, guard and choice."""

import os
from typing import List, Optional

import yaml

from mergekit_expo.alpha import DEFAULT_ALPHA
from mergekit_expo.card.trajectory_words import checkpoint_step
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.search.registry import ENGINES, SCORERS, SPACES, STRATEGIES
from mergekit_expo.search.rows import reference_guard
from mergekit_expo.trajectory.steps import checkpoint_holders

HEADING = "## How α was chosen"


def search_section(results, stage, *, plot: Optional[str]) -> dict:
    """What the template needs to show a finished search (a ``SearchResults``) of ``stage``."""
    settings = results.settings
    check_same_models(results, stage)
    best, excluded = results.best(), results.excluded()
    excluded_keys = {row.key for row in excluded}
    guarded = bool(settings.get("guard"))
    coordinates = list(best.coordinates)
    rows = []
    for row in results.rows:
        note = []
        if row.is_reference:
            note.append(results.reference_words)
        if row.key == best.key:
            note.append("**chosen**")
        if row.key in excluded_keys:
            note.append("excluded by the guard")
        cells = [f"{row.coordinates[name]:.3g}" for name in coordinates]
        cells += [_number(row.score), _interval(row.low, row.high)]
        if results.race:
            cells.append(str(row.n) + results.strategy.card_rows_note(row, results.race))
        if guarded:
            cells += [_number(row.guard), _interval(row.guard_low, row.guard_high)]
        rows.append([*cells, ", ".join(note)])
    for left in results.unscored:  # the grid's α the strategy never scored
        cells = [f"{left['alpha']:.3g}", "–", "–", "0", *(["–", "–"] if guarded else [])]
        rows.append([*cells, "not scored"])
    if results.scalar:
        rows.sort(key=lambda cells: float(cells[0]))
    names = ["α"] if results.scalar else [f"α {name.replace('_', ' ')}" for name in coordinates]
    header = [*names, "score", "95% interval", *(["rows"] if results.race else []),
              *(["guard", "guard 95% interval"] if guarded else []), ""]
    engine = ENGINES.get(settings.get("engine") or ENGINES.default.name).words
    dtype = settings.get("dtype") or "the checkpoints' own"
    facts = [f"scorer: {scorer_words(settings['scorer'], settings, settings.get('scorer_settings'))}",
             *_data_facts(results), f"engine: {engine}, dtype: {dtype}"]
    if not results.scalar:
        facts.insert(0, space_words(results))
    if guarded:
        guard = f"guard: {scorer_words(settings['guard'], settings, settings.get('guard_settings'))}"
        if results.max_drop is not None:
            guard += (f"; an α is excluded when its guard score falls more than {results.max_drop:g} "
                      "below the guard at α = 0 on the same dev rows")
        facts.append(guard)
    if results.race:
        facts.append(results.strategy.card_sentence(results.race))
    else:  # the full search, which records nothing of its own
        full = next(entry.name for entry in STRATEGIES.having("implicit") if "rows" not in entry.traits)
        facts.append(f"every candidate scored on every dev row (`--strategy {full}`)")
    return {"facts": facts, "header": header, "rows": rows, "choice": choice_words(results, stage),
            "plot": plot}


def space_words(results) -> str:
    settings = results.settings
    low, high = settings.get("alpha_range") or (0, 1)
    sampler = settings.get("sampler") or "tpe"
    drawn = sum(not row.is_reference for row in results.rows)
    first = "α = 0 everywhere, then " if results.baseline() is not None else ""
    return (f"space: `{results.space}`, {SPACES.get(results.space).words}; each coordinate in "
            f"[{low:g}, {high:g}]; {len(results.rows)} candidates: {first}{drawn} drawn by optuna's "
            f"`{sampler}` sampler")


def scorer_words(name: str, settings: dict, details: Optional[dict]) -> str:
    return SCORERS.get(name).load().card_words(name, settings, details)


def _data_facts(results) -> List[str]:
    name = results.settings["scorer"]
    first = results.rows[0]
    traits = SCORERS.get(name).traits
    if "data" in traits:
        data = results.about.get("data_file")
        skipped = int((first.extra or {}).get("skipped") or 0)
        total = (results.race["rows"] if results.race else first.n) + skipped  # raced: n is what each got
        rows = f"{total} row{'s' if total != 1 else ''}"
        if skipped:
            rows += f" ({skipped} skipped: longer than the model's context)"
        return [f"data: `{os.path.basename(data)}`, {rows}" if data else f"data: {rows}"]
    if "tasks" in traits:
        return [f"data: the tasks' own, {first.n} examples"]
    return []


def choice_words(results, stage) -> List[str]:
    """Why the chosen α won, and how far to trust it."""
    best, baseline, excluded = results.best(), results.baseline(), results.excluded()
    allowed = [r for r in results.rows if r not in excluded]
    what = "α values" if results.scalar else "candidates"
    chosen = f"α = {best.label}" if results.scalar else f"The candidate {best.label}"
    if results.race:  # each score is a mean on its own rows: the highest number need not be the pick
        only = excluded and len(allowed) == 1
        among = (f", the only one of the {what} it scored that the guard allows" if only else
                 f" among the {len(allowed)} {what} it scored" + (" that the guard allowed" * bool(excluded)))
        strategy = f"`--strategy {results.strategy.name}`"
        rows = ("every candidate was scored on them" if len({row.n for row in results.rows}) == 1 else
                "each other score is a mean on its own rows (the rows column), not comparable with it")
        words = [f"{chosen} is the pick of the search ({strategy}, above){among}. Its score "
                 f"({_number(best.score)}) is its mean on the {best.n} rows it was scored on; {rows}."]
    elif excluded and len(allowed) == 1:
        words = [f"{chosen} is the only one of the {what} searched that the guard allows (score "
                 f"{_number(best.score)})."]
    else:
        among = f"{len(allowed)} {what}" + (" allowed by the guard" if excluded else " searched")
        words = [f"{chosen} has the highest score ({_number(best.score)}) of the {among}."]
    # Only candidates the pick was chosen from tie with it: a race's retired ones were not.
    ties = [r for r in results.eligible() if r.score == best.score and r is not best]
    if ties:
        rule = ("the larger mean log-likelihood margin (chosen over rejected) breaks the tie"
                if "mean_margin" in (best.extra or {}) else
                "the smaller α is kept" if results.scalar else "the earlier candidate is kept")
        words.append(f"It ties with {'α = ' if results.scalar else ''}{', '.join(r.label for r in ties)} "
                     f"on the score; {rule}.")
    if results.race and not best.kept:
        words.append("The guard excludes every α the strategy kept to the end, so the pick is the best of "
                     f"those it allows that were scored on the most rows ({best.n}).")
    if best.is_reference:
        if not (excluded and len(allowed) == 1):  # (else the first sentence says so)
            allowed_words = " that the guard allows" if excluded else ""
            words.append(f"No α > 0{allowed_words} scored above {results.reference_words} itself on this "
                         "data.")
    elif baseline is not None and None not in (best.low, baseline.high) and best.low <= baseline.high:
        # a race's paired test on the same rows is sharper than two intervals side by side
        words.append(f"Its 95% interval overlaps that of α = 0 ({results.reference_words}): " + (
            "on this data the gain is within the noise." if baseline.dropped_in is None else
            "the two scores vary together from row to row, and on the rows both were scored on the race "
            f"found α = 0 clearly below its leader then (dropped in round {baseline.dropped_in})."))
    if excluded:
        words.append(
            f"Excluded: {'α = ' if results.scalar else ''}"
            f"{(', ' if results.scalar else '; ').join(r.label for r in excluded)}, whose guard "
            "fell more than " + (
                f"{results.max_drop:g} below its {_number(baseline.guard)} at α = 0 "
                f"(to {', '.join(_number(r.guard) for r in excluded)})."
                if all(r.guard_reference is None for r in excluded) else
                f"{results.max_drop:g} below α = 0's on the rows each was scored on ("
                + "; ".join(f"{r.label}: {_number(r.guard)} against {_number(reference_guard(r, baseline))}"
                            for r in excluded) + ")."))
    if not merged_with_choice(results, best, stage):
        words.append("This model was merged with α as configured above, not with the search's choice.")
    return words


def merged_with_choice(results, best, stage) -> bool:
    """Whether the stage's α is the search's choice: one number, or the same filters and
    gradient lists as best.yml's."""
    if results.scalar:
        configured = scalar_alpha(stage)
        return configured is not None and abs(configured - best.alpha) <= 1e-9
    try:
        best_yml = yaml.safe_load((results.folder / "best.yml").read_text())
        chosen = (best_yml if best_yml["merge_method"] == "expo_trajectory" else best_yml["models"][0])[
            "parameters"]["alpha"]
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return False
    config = stage.config
    if config.slices or config.modules:
        return False
    if stage.is_trajectory:  # one α for the fit
        return _plain((config.parameters or {}).get("alpha")) == _plain(chosen)
    aligned = [m for m in config.models or [] if m.model != config.base_model]
    setting = (aligned[0].parameters or {}).get("alpha") if aligned else None
    return _plain(setting) == _plain(chosen)


def _plain(setting):
    """A parameter setting as plain data (mergekit parses filters into objects)."""
    if hasattr(setting, "model_dump"):
        setting = setting.model_dump(exclude_none=True)
    if isinstance(setting, list):
        return [_plain(item) for item in setting]
    if isinstance(setting, dict):
        return {key: _plain(value) for key, value in setting.items() if value is not None}
    return float(setting) if isinstance(setting, (int, float)) and not isinstance(setting, bool) else setting


def scalar_alpha(stage) -> Optional[float]:
    """The aligned model's α when the config gives it as one number everywhere, else None."""
    config = stage.config
    if config.slices or config.modules:
        return None
    aligned = [m for m in config.models or [] if m.model != config.base_model]
    levels = [aligned[0].parameters if aligned else None, config.parameters]
    setting = next((level["alpha"] for level in levels if level and "alpha" in level), DEFAULT_ALPHA)
    try:
        return float(setting)
    except (TypeError, ValueError):
        return None


def check_same_models(results, stage) -> None:
    """A search is evidence for a model only if it scored that model's inputs: its SFT and
    aligned models (expo), or its SFT model and the same checkpoints at the same steps, fitted
    over the same window (expo_trajectory)."""
    settings = results.settings
    searched_run = "checkpoints" in settings
    if searched_run != stage.is_trajectory:
        scored = "the checkpoints of a run" if searched_run else "an SFT and aligned model pair"
        merged = "checkpoints of a run (expo_trajectory)" if stage.is_trajectory else "a pair (expo)"
        raise ExpoConfigError(f"the search in {results.folder} scored {scored}, but this output merges "
                              f"{merged}: pass the search of this output's models")
    pairs = [("SFT model", settings.get("sft"), stage.sft)]
    if searched_run:
        searched = settings["checkpoints"]
        if len(searched) != len(stage.aligned):
            raise ExpoConfigError(f"the search in {results.folder} scored {len(searched)} checkpoints, but "
                                  f"this output's merge fits {len(stage.aligned)}: pass the search of these "
                                  "checkpoints")
        pairs += [(f"checkpoint {i + 1}", name, model)
                  for i, (name, model) in enumerate(zip(searched, stage.aligned))]
    else:
        pairs.append(("aligned model", settings.get("aligned"), stage.aligned[0]))
    for role, searched, configured in pairs:
        if _same_model(searched, configured):
            continue
        raise ExpoConfigError(
            f"the search in {results.folder} scored the {role} {searched}, but this output's "
            f"{role} is {configured.text}: pass the search of these models (relative paths in "
            "mergekit_config.yml count from the folder the merge ran in: run this from there)")
    if searched_run:
        check_same_fit(results, stage)


def check_same_fit(results, stage) -> None:
    """The merge fits the searched checkpoints at the steps and over the window the search did."""
    settings = results.settings
    steps = [checkpoint_step(holder) for holder in checkpoint_holders(stage.config)]
    window = (stage.config.parameters or {}).get("window")
    window = None if window is None or window == len(steps) + 1 else window
    for what, searched, merged in (("steps", settings.get("steps"), steps),
                                   ("window", settings.get("window"), window)):
        if searched != merged:
            raise ExpoConfigError(f"the search in {results.folder} fitted the checkpoints with {what} "
                                  f"{_shown(searched)}, but this output's merge with {what} "
                                  f"{_shown(merged)}: pass the search of this fit")


def _same_model(searched: Optional[str], configured) -> bool:
    if searched is None or configured.stage or len(configured.parts) != 1:
        return False
    path, revision, hub = configured.parts[0]
    if hub:
        named = path if revision is None else f"{path}@{revision}"
        return searched == named and not os.path.isabs(searched)
    if not os.path.isabs(searched):
        return False
    return os.path.realpath(searched) == os.path.realpath(os.path.expanduser(path))


def _shown(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "all points" if value is None else str(value)


def _number(value) -> str:
    return "–" if value is None else f"{value + 0.0:.4g}"  # + 0.0: -0.0 (a negated zero) as 0


def _interval(low, high) -> str:
    return "–" if low is None or high is None else f"[{low:.4g}, {high:.4g}]"
