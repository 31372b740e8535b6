"""Tensors as the tracers see them: those in what a module takes or returns (a tensor, or (named) tuples, lists
and dicts of them), whether two share memory, and sets of them by identity."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["tensors_in", "first_tensor", "same_memory", "Marked"]


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


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of one storage (False for a tensor without one: sparse, meta)."""
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return False


class Marked:
    """A set of tensors by identity, holding none of them (weak references guard against a reused id)."""

    def __init__(self, tensors: Iterable[torch.Tensor] = ()) -> None:
        self._refs: dict[int, weakref.ref[torch.Tensor]] = {}
        self.add(tensors)

    def add(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._refs[id(tensor)] = weakref.ref(tensor)

    def __contains__(self, value: Any) -> bool:
        ref = self._refs.get(id(value))
        return ref is not None and ref() is value

    def any_of(self, values: Iterable[Any]) -> bool:
        return any(value in self for value in values)
