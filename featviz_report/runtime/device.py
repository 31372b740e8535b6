"""Where, in what precision and in which mode a model runs: the device (CUDA, else Apple MPS, else CPU,
unless the user says), the dtype of its inputs, the model moved there for a block and back after, and
the model in eval mode for a block with every module's training flag restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["pick_device", "float_dtype", "model_device", "on_device", "evaluating"]


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


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """``model`` on ``device`` for the block, back where it was after."""
    home = model_device(model)
    try:
        model.to(device)
        yield
    finally:
        model.to(home)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; every module's training flag as it was after, also on error."""
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for module, training in modes.items():
            module.train(training)
