"""Whether a ``--device`` torch can parse is also on this machine (torch accepts ``mps`` or
``cuda`` anywhere, and fails only once a tensor is moved there)."""

from typing import Optional


def missing_kind(name: str) -> Optional[str]:
    """``"CUDA"``, ``"MPS"``, …: the kind of device ``name`` (a valid torch device) names when
    none of that kind is visible; None when there is one, or for the CPU."""
    import torch

    kind = torch.device(name).type
    if kind == "cpu":
        return None
    if kind == "mps":
        present = torch.backends.mps.is_available()
    else:  # cuda, xpu, …: torch.<kind>.is_available()
        backend = getattr(torch, kind, None)
        present = bool(backend is not None and getattr(backend, "is_available", lambda: False)())
    return None if present else kind.upper()
