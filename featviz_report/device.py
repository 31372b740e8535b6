"""Where and in what precision a model runs: the device (CUDA, else Apple MPS, else CPU, unless the user
says), the dtype of its inputs, and the model moved there for a block and back after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import UsageError

__all__ = ["pick_device", "float_dtype", "on_device"]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → the best available device; ``cpu``/``cuda``/``mps`` → that one, if it is there."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise UsageError(f"--device {name}: no {name.upper()} device is available on this machine")
    return torch.device(name)


def float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs are cast to: the model's first floating-point parameter's (float32 without one)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """``model`` on ``device`` for the block, back where it was after."""
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.to(device)
        yield
    finally:
        model.to(home)
