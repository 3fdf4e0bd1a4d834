"""Whether a ``--device`` torch can parse can also run here (torch accepts ``mps`` or ``cuda``
anywhere, and fails only once a tensor is moved there)."""

from typing import Optional

from mergekit_expo.errors import ExpoConfigError


def device_problem(name: str, *, fixes: str) -> Optional[str]:
    """Why the torch device ``name`` cannot compute on this machine (``"no MPS device is
    visible"``), or None when it can. A name torch does not know is an ExpoConfigError
    naming the devices to use instead, ``fixes``."""
    import torch

    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise ExpoConfigError(f"--device {name!r} is not a device torch knows: use {fixes}") from None
    if kind == "cpu":
        return None
    if kind == "meta":
        return "meta is torch's placeholder device, which holds no values"
    if kind == "mps":
        present = torch.backends.mps.is_available()
    else:  # cuda, xpu, …: torch.<kind>.is_available()
        backend = getattr(torch, kind, None)
        present = bool(backend is not None and getattr(backend, "is_available", lambda: False)())
    return None if present else f"no {kind.upper()} device is visible"
