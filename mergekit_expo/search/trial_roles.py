"""Why a trial of the search's study exists (its ``role`` user attribute)."""

from enum import Enum


class TrialRole(str, Enum):
    """Stored in the study as the plain value; read back, the value equals its member."""

    REFERENCE = "reference"  # α = 0: the aligned model
    GRID = "grid"  # an --alphas value, or a --refine midpoint
    SAMPLED = "sampled"  # drawn by the sampler, within the --trials budget
    DUPLICATE = "duplicate"  # another live trial has its candidate: closed unscored
    SPARE = "spare"  # asked for past the budget: closed unscored


REFERENCE, GRID, SAMPLED, DUPLICATE, SPARE = TrialRole  # short names, in declaration order
