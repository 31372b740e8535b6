"""The weight a Conv2d, ConvTranspose2d or Linear computes with, which is not always its ``weight`` parameter:
what the filters panel draws and what circuits read.

timm's ``StdConv2d`` and ``ScaledStdConv2d`` (BiT's ResNetV2, the NF-ResNets, NFNets) standardise theirs in
``forward``; a weight-standardised conv may do it in ``_conv_forward``; a parametrized one (weight norm, spectral
norm) computes it when read. Read off the parameter, every output's summed kernel would be off, and the order
and signs of its inputs with it. Such a layer's ``forward`` (never its ``__call__``: no hook may see it) runs,
once per job, with the model in eval mode, on two small random inputs: the weight it hands to its convolution
is the one used where the layer's output on both is exactly that convolution's. Where it is not (a second
branch, a low-rank update, a scale after it, a weight made from the input, a forward that does not read its
input whole) the layer has no one weight, and the reason is given instead. torch's own classes use the
parameter as it is, read when needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from ..errors import first_line
from ..runtime.device import evaluating

__all__ = ["Computed", "computed_weights", "weight_of"]

Computed = Mapping[str, "torch.Tensor | str"]  # by layer name: the weight a layer computes with, or why none
Weighted = nn.Conv2d | nn.ConvTranspose2d | nn.Linear
_OPS = frozenset({"conv2d", "conv_transpose2d", "linear"})
_SIDE = 8  # the probe inputs' height and width, at least: a kernel, its dilation and any padding fit


class _Recorder(TorchFunctionMode):
    """The weight and bias of each convolution or ``linear`` call inside."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, Any]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _OPS:
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
            self.calls.append((weight, bias))
        return func(*args, **kwargs)


def _plain(module: nn.Module) -> bool:
    """Whether ``module`` computes with its parameter as stored: torch's own forward and convolution step, no
    parametrization."""
    if parametrize.is_parametrized(module):
        return False
    kind = type(module)
    for base in (nn.Conv2d, nn.ConvTranspose2d, nn.Linear):
        if isinstance(module, base):
            same_step = base is not nn.Conv2d or kind._conv_forward is nn.Conv2d._conv_forward  # type: ignore[attr-defined]
            return kind.forward is base.forward and same_step
    return True


def _probe_input(module: Weighted, like: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(module, nn.Linear):
        shape: tuple[int, ...] = (2, module.in_features)
    else:
        padding = module.padding if isinstance(module.padding, tuple) else (0, 0)
        side = [max(_SIDE, (k - 1) * d + 1, 2 * p + 2) for k, d, p in zip(module.kernel_size, module.dilation, padding)]
        shape = (2, module.in_channels, *side)
    return torch.rand(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def _as_plain(module: Weighted, x: torch.Tensor, weight: torch.Tensor, bias: Any) -> torch.Tensor:
    """What the layer's output would be with ``weight`` and ``bias`` and torch's own computation."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, nn.ConvTranspose2d):
        step = (module.stride, module.padding, module.output_padding, module.groups, module.dilation)
        return F.conv_transpose2d(x, weight, bias, *step)  # type: ignore[arg-type]
    return nn.Conv2d._conv_forward(module, x, weight, bias)


def _read(module: Weighted) -> torch.Tensor | str:
    parameter = module.weight.detach()
    outputs, recorder = [], _Recorder()
    try:
        with torch.no_grad():
            inputs = [_probe_input(module, parameter, seed) for seed in (0, 1)]
            with recorder:
                outputs = [module.forward(x) for x in inputs]
            found = [(w, b) for w, b in recorder.calls[: len(recorder.calls) // 2] if isinstance(w, torch.Tensor)]
            if len(found) != 1 or found[0][0].shape != parameter.shape:
                return _NOT_ONE
            weight, bias = found[0]
            expected = [_as_plain(module, x, weight, bias) for x in inputs]
    except Exception as err:  # noqa: BLE001 - the user's layer, run on small random inputs: say what failed
        return f"the weight its forward computes with could not be read ({type(err).__name__}: {first_line(err)})"
    for got, want in zip(outputs, expected):
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            return _NOT_ONE
        scale = float(want.abs().max()) if want.numel() else 0.0
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
            return _NOT_ONE
    return weight.detach()


_NOT_ONE = (
    "its forward computes with no one weight of its parameter's shape (more than one convolution, a low-rank "
    "update, a scale after it, or a weight made from its input)"
)


def computed_weights(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> dict[str, torch.Tensor | str]:
    """The weight each of ``layers`` computes with, or why it has no one weight, for the Conv2d, ConvTranspose2d
    and Linear layers that do not use their parameter as stored (the others are left out). Runs their forward
    in eval mode: call it where nothing else runs the model."""
    targets = [(name, m) for name, m in layers if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    odd = [(name, m) for name, m in targets if not _plain(m)]
    if not odd:
        return {}
    with evaluating(model):
        return {name: _read(module) for name, module in odd}


def weight_of(module: nn.Module, name: str, computed: Computed) -> torch.Tensor | str:
    """The weight ``module`` (the layer called ``name``) computes with, from ``computed`` or else its parameter."""
    found = computed.get(name)
    return module.weight.detach() if found is None else found  # type: ignore[operator]
