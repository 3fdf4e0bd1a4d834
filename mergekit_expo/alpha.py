"""Validation of the extrapolation strength α, the one parameter of ExPO."""

import logging
import math
from typing import Any, Optional

from mergekit_expo.errors import ExpoConfigError

DEFAULT_ALPHA = 0.3  # the value the paper's released models use
LARGE_ALPHA = 2.0

LOG = logging.getLogger("mergekit_expo")
_warned_large: set = set()


def checked_alpha(value: Any, *, option: Optional[str] = None, in_search: bool = False) -> float:
    """Return ``value`` as a finite float or raise ExpoConfigError in the user's terms.

    Numeric strings are accepted because YAML reads ``1e-1`` as a string. ``option``
    names the command-line option the value came from, so the message speaks CLI
    rather than YAML; ``in_search``: a search's α, warned about with its whole grid
    (:func:`warn_large_grid`) instead of one by one.
    """
    if isinstance(value, bool) or value is None:
        raise _not_a_number(value, option)
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise _not_a_number(value, option) from None
    if not math.isfinite(alpha):
        fix = f"write e.g. {_example(option)}" if option else "set alpha to a number such as 0.3"
        raise ExpoConfigError(f"alpha must be finite, got {value!r}: {fix}")
    if alpha > LARGE_ALPHA and not in_search:
        _warn_large(alpha)
    return alpha


# The paper finds reward rising with α up to a model-specific point, then collapsing.
_DEGRADES = "past a model-specific point the extrapolated model degrades sharply"


def _warn_large(alpha: float) -> None:
    # Merges validate α once per tensor, and a gradient gives every layer its own value:
    # one warning per process.
    if "merge" in _warned_large:
        return
    _warned_large.add("merge")
    LOG.warning("alpha=%g is very large: %s; check it on a dev set (mergekit-expo search)", alpha, _DEGRADES)


def warn_large_grid(alphas) -> None:
    """One line for the large α of a search's grid, once per process; the merges the search
    plans for its candidates then say nothing more."""
    large = sorted({alpha for alpha in alphas if alpha > LARGE_ALPHA})
    if large and "search" not in _warned_large:
        LOG.warning("alpha=%s %s very large: %s", ", ".join(f"{alpha:g}" for alpha in large),
                    "is" if len(large) == 1 else "are", _DEGRADES)
    _warned_large.update(("search", "merge"))


# How each option that takes α is written; others take one number.
EXAMPLES = {"--alphas": "--alphas 0,0.3,0.5 (comma-separated numbers)",
            "--alpha-range": "--alpha-range 0,1 (two numbers LO,HI)"}


def _example(option: str) -> str:
    return EXAMPLES.get(option, f"{option} 0.3")


def _not_a_number(value: Any, option: Optional[str]) -> ExpoConfigError:
    if option:
        return ExpoConfigError(f"{option}: {value!r} is not a number: write e.g. {_example(option)}")
    return ExpoConfigError(
        f"alpha must be a number, got {value!r}: write e.g. 'alpha: 0.3' "
        "(or a list of numbers for a per-layer gradient)"
    )
