"""The tensors in what a module takes or returns: a tensor, or (named) tuples, lists and dicts of them."""

from __future__ import annotations

import torch

__all__ = ["tensors_in", "first_tensor"]


def tensors_in(value: object) -> list[torch.Tensor]:
    """Every tensor in ``value``, through (named) tuples, lists and dicts: a hot path of the graph's and
    the fields' recording, several times faster than ``torch.utils._pytree``."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def first_tensor(output: object) -> torch.Tensor | None:
    """The output itself, or the first tensor in a tuple, list or dict output."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else ()
    return next((v for v in values if isinstance(v, torch.Tensor)), None)
