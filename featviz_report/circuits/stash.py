"""What the probing pass (:mod:`.trace`) can replay instead of computing again: the model's input and every
captured layer's output for the first samples, kept while the report's own capture pass runs them.

The probing pass needs the captured layers' outputs only as the start of the paths between them (their own
computation is cut off from the gradient), so with a stash it returns them instead of running those layers:
what is left to run is what lies between (norms, activations, pools, sums), a fraction of the model's cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..capture.tensors import first_tensor
from .rules import Key

__all__ = ["Stash", "stashing", "replaying"]


@dataclass
class Stash:
    """The first ``count`` samples of the first forward pass: the model's input and, per captured layer
    call, its output (copies; made in inference mode, so each use copies them again)."""

    count: int
    inputs: torch.Tensor | None = None
    outputs: dict[Key, torch.Tensor] = field(default_factory=dict)
    done: bool = False


@contextmanager
def stashing(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], count: int) -> Iterator[Stash]:
    """Keep the first ``count`` samples' input and captured outputs of the first forward pass in the block."""
    stash = Stash(count)
    calls: Counter[str] = Counter()

    def starting(_: nn.Module, args: tuple[Any, ...]) -> None:
        tensor = first_tensor(args)
        if not stash.done and isinstance(tensor, torch.Tensor) and tensor.ndim > 0:
            stash.inputs = tensor[:count].detach().clone()

    def ending(*_: object) -> None:
        stash.done = stash.inputs is not None

    def keep(name: str):  # type: ignore[no-untyped-def]
        def hook(_: nn.Module, __: tuple[Any, ...], output: Any) -> None:
            call = calls[name]
            calls[name] += 1
            if not stash.done and isinstance(output, torch.Tensor) and output.ndim > 0:
                stash.outputs[(name, call)] = output[:count].detach().clone()

        return hook

    with ExitStack() as stack:
        stack.callback(model.register_forward_pre_hook(starting).remove)
        stack.callback(model.register_forward_hook(ending, always_call=True).remove)
        for name, module in layers:
            # first among the hooks: the output as forward returned it, which a replay returns for the user's
            # own hooks to change again (kept after them, an output hook's change would be made twice)
            stack.callback(module.register_forward_hook(keep(name), prepend=True).remove)
        yield stash


@contextmanager
def replaying(layers: Sequence[tuple[str, nn.Module]], stash: Stash, leaves: set[str]) -> Iterator[None]:
    """The captured leaf modules named in ``leaves`` return their stashed outputs instead of running (their
    ``forward`` replaced for the block and restored after, also on error)."""
    calls: Counter[str] = Counter()

    def replay(name: str):  # type: ignore[no-untyped-def]
        def forward(*_: object, **__: object) -> torch.Tensor:
            call = calls[name]
            calls[name] += 1
            return stash.outputs[(name, call)].clone()

        return forward

    with ExitStack() as stack:
        for name, module in layers:
            if name in leaves and "forward" not in module.__dict__:
                module.forward = replay(name)  # type: ignore[method-assign]
                stack.callback(module.__dict__.pop, "forward")
        yield
