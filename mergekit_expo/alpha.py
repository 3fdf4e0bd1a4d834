"""Validation of the extrapolation strength α, the one parameter of ExPO."""

import logging
import math
from typing import Any

from mergekit_expo.errors import ExpoConfigError

DEFAULT_ALPHA = 0.3  # the value the paper's released models use
LARGE_ALPHA = 2.0

LOG = logging.getLogger("mergekit_expo")
_warned_large: set = set()


def checked_alpha(value: Any) -> float:
    """Return ``value`` as a finite float or raise ExpoConfigError in the user's terms.

    Numeric strings are accepted because YAML reads ``1e-1`` as a string.
    """
    if isinstance(value, bool) or value is None:
        raise _not_a_number(value)
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise _not_a_number(value) from None
    if not math.isfinite(alpha):
        raise ExpoConfigError(
            f"alpha must be finite, got {value!r}: set alpha to a number such as 0.3"
        )
    if alpha > LARGE_ALPHA and alpha not in _warned_large:
        _warned_large.add(alpha)
        # The paper finds reward rising with α up to a model-specific point, then collapsing.
        LOG.warning(
            "alpha=%g is very large: past a model-specific point the extrapolated "
            "model degrades sharply; check it on a dev set "
            "(mergekit-expo search)",
            alpha,
        )
    return alpha


def _not_a_number(value: Any) -> ExpoConfigError:
    return ExpoConfigError(
        f"alpha must be a number, got {value!r}: write e.g. 'alpha: 0.3' "
        "(or a list of numbers for a per-layer gradient)"
    )
