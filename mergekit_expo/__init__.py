"""ExPO (model extrapolation, arXiv 2404.16792) as a mergekit merge method.

Importing this package is cheap: it imports neither torch nor mergekit. It makes
``merge_method: expo`` available to mergekit (now, or as soon as mergekit loads).

>>> import mergekit_expo
>>> merged = mergekit_expo.extrapolate(sft_model, dpo_model, alpha=0.3)
"""

from mergekit_expo import _autoregister
from mergekit_expo.errors import (
    ExpoConfigError,
    ExpoError,
    ExpoInputError,
    ExpoNumericsError,
)

__version__ = "0.1.0"
__all__ = [
    "extrapolate",
    "ExpoError",
    "ExpoConfigError",
    "ExpoInputError",
    "ExpoNumericsError",
]

_autoregister.install()


def __getattr__(name):
    # Deferred so that `import mergekit_expo` stays free of torch.
    if name == "extrapolate":
        from mergekit_expo.hosts import require_state_dicts_api

        require_state_dicts_api()
        from mergekit_expo.api import extrapolate

        return extrapolate
    raise AttributeError(f"module 'mergekit_expo' has no attribute {name!r}")
