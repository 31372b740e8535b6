"""Which part of a model's output holds its class scores (for predictions and Grad-CAM).

A single ``N×K`` tensor is the scores. A dict or ``ModelOutput`` with a ``logits`` entry uses it. A
tuple, list or dict with exactly one ``N×K`` tensor uses that one. Anything else with several candidates
is ambiguous: no predictions, never a guess, and a note saying how to choose (``--output``), which
picks an entry by tuple index or dict key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import UsageError, first_few

__all__ = ["Scores", "class_scores"]


@dataclass(frozen=True)
class Scores:
    """The ``N×K`` scores, or ``None`` with a ``note`` saying why there are none (``None``: no note)."""

    tensor: torch.Tensor | None
    note: str | None = None


def _is_scores(value: object, count: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == count and value.shape[1] >= 2


def _entries(output: object) -> list[tuple[str, object]] | None:
    """The output's entries with their selector (``0``, ``logits``), or ``None`` for a single value."""
    if isinstance(output, Mapping):
        return [(str(key), value) for key, value in output.items()]
    if isinstance(output, (tuple, list)):
        return [(str(i), value) for i, value in enumerate(output)]
    return None


def class_scores(output: object, count: int, selector: str | None = None) -> Scores:
    """The class scores in ``output`` for a batch of ``count`` samples (see the module's rules)."""
    entries = _entries(output)
    if selector is not None:
        return _selected(output, entries, count, selector)
    if entries is None:
        return Scores(output if _is_scores(output, count) else None)  # type: ignore[arg-type]
    named = dict(entries)
    if isinstance(output, Mapping) and _is_scores(named.get("logits"), count):
        return Scores(named["logits"])  # type: ignore[arg-type]
    candidates = [key for key, value in entries if _is_scores(value, count)]
    if len(candidates) == 1:
        return Scores(named[candidates[0]])  # type: ignore[arg-type]
    if not candidates:
        return Scores(None)
    kind = "dict" if isinstance(output, Mapping) else type(output).__name__
    listed = first_few(candidates, 4)
    return Scores(
        None,
        f"the model returns a {kind} with {len(candidates)} N×K tensors ({listed}); which one holds class scores "
        "is ambiguous, so no predictions are shown: choose one with --output (a tuple index or dict key)",
    )


def _selected(output: object, entries: list[tuple[str, object]] | None, count: int, selector: str) -> Scores:
    if entries is None:
        raise UsageError(
            f"--output {selector!r}: the model returns a single {type(output).__name__}, not a tuple or dict"
        )
    fields = getattr(output, "_fields", ())  # a namedtuple's field names select too
    named = {**dict(entries), **{name: value for name, (_, value) in zip(fields, entries)}}
    if selector not in named:
        listed = first_few([repr(key) for key in named], 6)
        raise UsageError(f"--output {selector!r}: no such entry in the model's output (it has {listed})")
    value = named[selector]
    if not _is_scores(value, count):
        if isinstance(value, torch.Tensor):
            what = "a scalar" if value.ndim == 0 else "×".join(map(str, value.shape))
        else:
            what = f"a {type(value).__name__}"
        raise UsageError(f"--output {selector!r} is {what}, not N×K class scores for {count} samples")
    return Scores(value)  # type: ignore[arg-type]
