"""An optional library that is missing: one line naming the extra that installs it."""

import importlib
from typing import Callable, Optional

from mergekit_expo.errors import ExpoConfigError, first_line


def import_extra(module: str, extra: str, needs: str, *, then: str = "",
                 explain: Optional[Callable[[BaseException], Optional[str]]] = None):
    """``module``, or one ExpoConfigError line: ``needs`` (``{error}`` in it: the import
    error), the pip command, ``then``. ``explain(error)`` may account for any failure
    to import (a broken companion package) with a line of its own."""
    try:
        return importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - explained, named as missing, or raised as it is
        explained = explain(error) if explain is not None else None
        if explained:
            raise ExpoConfigError(explained) from error
        if not isinstance(error, ImportError):
            raise
        reason = needs.format(error=first_line(error))
        raise ExpoConfigError(f"{reason}: pip install 'mergekit-expo[{extra}]'{then}") from None
