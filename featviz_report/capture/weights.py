"""The weight a Conv2d, ConvTranspose2d or Linear computes with, which is not always its ``weight`` parameter:
what the filters panel draws and what circuits read.

timm's ``StdConv2d`` and ``ScaledStdConv2d`` (BiT's ResNetV2, the NF-ResNets, NFNets) standardise theirs in
``forward``: each output's kernel less its mean, over its spread, times a gain. Read off the parameter, every
output's summed kernel would be off by that mean, and the order and signs of its inputs with it. A class that
overrides ``forward`` is therefore called once on a small input of zeros, and the weight it hands to
``conv2d``, ``conv_transpose2d`` or ``linear`` is the one used; torch's own classes use the parameter as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import first_line

__all__ = ["computed_weight"]

_PLAIN = frozenset({nn.Conv2d.forward, nn.ConvTranspose2d.forward, nn.Linear.forward})
_OPS = frozenset({"conv2d", "conv_transpose2d", "linear"})


class _Recorder(TorchFunctionMode):
    """The ``weight`` of the first convolution or ``linear`` call inside."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.weight is None and getattr(func, "__name__", "") in _OPS:
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            self.weight = weight if isinstance(weight, torch.Tensor) else None
        return func(*args, **kwargs)


def _small_input(module: nn.Conv2d | nn.ConvTranspose2d | nn.Linear, like: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return torch.zeros((1, module.in_features), dtype=like.dtype, device=like.device)
    side = [(k - 1) * d + 1 for k, d in zip(module.kernel_size, module.dilation)]
    return torch.zeros((1, module.in_channels, *side), dtype=like.dtype, device=like.device)


def computed_weight(module: nn.Conv2d | nn.ConvTranspose2d | nn.Linear) -> torch.Tensor | str:
    """The weight ``module`` computes with (detached), or why it could not be read."""
    parameter = module.weight.detach()
    if type(module).forward in _PLAIN:
        return parameter
    recorder = _Recorder()
    try:  # forward itself, not the module's call: no hook of the report (or the user's) may see this
        with torch.no_grad(), recorder:
            module.forward(_small_input(module, parameter))
    except Exception as err:  # noqa: BLE001 - the user's layer, run on zeros: say what failed
        return f"the weight its forward computes with could not be read ({type(err).__name__}: {first_line(err)})"
    found = recorder.weight
    if found is None or found.shape != parameter.shape:
        return f"its forward ({type(module).__name__}) computes with no weight of its parameter's shape"
    return found.detach()
