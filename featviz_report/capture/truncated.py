"""A model run only up to one call of one of its modules: the forward pass stops there (a hook raises with
the output), so nothing past it runs. Feature visualisation optimises through it, and receptive fields from
the gradient probe through it."""

from __future__ import annotations

import torch
from torch import nn

from .tensors import first_tensor

__all__ = ["Truncated"]


class _Reached(Exception):
    """Raised by the hook at the target layer: the forward pass stops there."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


class Truncated:
    """``model`` run only up to ``module``'s ``call``-th call, whose output it returns; use as a context
    manager (the hook is removed after, also on error)."""

    def __init__(self, model: nn.Module, module: nn.Module, call: int) -> None:
        self.model, self.module, self.call, self.calls = model, module, call, 0

    def _hook(self, _module: nn.Module, _inputs: object, output: object) -> None:
        self.calls += 1
        if self.calls == self.call + 1:
            tensor = first_tensor(output)
            if tensor is not None:
                raise _Reached(tensor)

    def __enter__(self) -> Truncated:
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self.calls = 0
        try:
            self.model(inputs)
        except _Reached as reached:
            return reached.output
        raise RuntimeError("the layer gave no tensor during the forward pass")
