"""The α search loop: score each candidate once, resumably, and write the reports."""

import hashlib
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import click

from mergekit_expo.errors import ExpoConfigError

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the paper's range


def parse_alphas(text: Optional[str]) -> List[float]:
    from mergekit_expo.alpha import checked_alpha

    if not text:
        return list(DEFAULT_ALPHAS)
    values = [checked_alpha(part.strip(), option="--alphas", in_search=True)
              for part in text.split(",") if part.strip()]
    if not values:
        raise ExpoConfigError("--alphas is empty: give e.g. --alphas 0,0.3,0.5")
    return sorted(set(values))


def refined(alphas: List[float], best: float) -> List[float]:
    """Midpoints on either side of the best α (coarse-to-fine, one level)."""
    ordered = sorted(alphas)
    index = ordered.index(best)
    around = []
    if index > 0:
        around.append((ordered[index - 1] + best) / 2)
    if index < len(ordered) - 1:
        around.append((ordered[index + 1] + best) / 2)
    return [round(a, 6) for a in around]


def fingerprint(*parts: Optional[str]) -> str:
    """Content hash of a data file, so a changed file is a different search."""
    digest = hashlib.sha256()
    for part in parts:
        if part and Path(part).is_file():
            digest.update(Path(part).read_bytes())
        digest.update(str(part).encode())
    return digest.hexdigest()[:16]


def search(sft: str, aligned: str, out: str, scorer, alphas: Iterable[float], *,
           open_engine: Callable, refine: bool = False, settings: Optional[dict] = None,
           dtype: Optional[str] = None, guard=None, max_drop: Optional[float] = None,
           about: Optional[dict] = None):
    """Score each α (skipping those already in ``out``) and write the reports.

    ``open_engine()`` builds the engine; it is called only if some α is left to score.
    With a ``guard`` scorer, every α is scored by it too, and the best α is chosen among
    those whose guard score stays within ``max_drop`` of the guard at α = 0. ``about``
    is kept in results.json for reports (e.g. the data file's name).
    """
    from tqdm import tqdm

    from mergekit_expo.search.results import AlphaResult, SearchResults

    settings = dict(settings or {}, sft=sft, aligned=aligned, scorer=scorer.name, dtype=dtype)
    if guard is not None:
        settings["guard"] = guard.name
    results = SearchResults.open(out, settings, max_drop=max_drop, about=about)
    pending = list(alphas)
    resumed = sum(results.done(a) for a in pending)
    if resumed:
        click.echo(f"resuming: {resumed} of {len(pending)} α already scored in {out}", err=True)
    engine = None
    try:
        while pending:
            for alpha in tqdm(pending, desc="alpha"):
                if results.done(alpha):
                    continue
                if engine is None:
                    engine = open_engine()
                start = time.perf_counter()
                engine.set_alpha(alpha)
                updated = time.perf_counter() - start
                progress = lambda total: tqdm(total=total, desc=f"alpha={alpha:g}", leave=False)  # noqa: E731
                score = scorer(engine, progress=progress)
                checked = guard(engine, progress=progress) if guard is not None else None
                results.add(AlphaResult(alpha=alpha, score=score.value, low=score.low, high=score.high,
                                        n=score.n, seconds=time.perf_counter() - start,
                                        extra=_merged_extra(score, checked), update_seconds=updated,
                                        guard=checked and checked.value, guard_low=checked and checked.low,
                                        guard_high=checked and checked.high))
            pending = []
            if refine:
                refine = False
                pending = [a for a in refined([r.alpha for r in results.rows], results.best().alpha)
                           if not results.done(a)]
    finally:
        if engine is not None:
            engine.close()
    return results, results.write_reports(sft, aligned, dtype)


def _merged_extra(score, guard) -> Optional[dict]:
    """The score's details, and the guard's under a ``guard_`` prefix."""
    extra = dict(score.extra or {})
    if guard is not None:
        extra.update({f"guard_{key}": value for key, value in (guard.extra or {}).items()})
    return extra or None
