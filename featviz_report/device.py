"""Pick the torch device a report runs on: CUDA, else Apple MPS, else CPU, unless the user says."""

from __future__ import annotations

import torch

from .errors import UsageError

__all__ = ["pick_device"]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → the best available device; ``cpu``/``cuda``/``mps`` → that one, if it is there."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise UsageError(f"--device {name}: no {name.upper()} device is available on this machine")
    return torch.device(name)
