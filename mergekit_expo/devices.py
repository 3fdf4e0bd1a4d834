"""Whether a ``--device`` torch can parse can also run here (torch accepts ``mps`` or ``cuda``
anywhere, and fails only once a tensor is moved there)."""

from typing import Optional


def device_problem(name: str) -> Optional[str]:
    """Why the torch device ``name`` cannot compute on this machine (``"no MPS device is
    visible"``), or None when it can."""
    import torch

    kind = torch.device(name).type
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
