"""Norms over the data's own statistics, run in the probing pass with those statistics held constant.

An instance norm (or a group norm of one channel a group, a batch norm without running statistics) subtracts
each channel's own mean and divides by its own spread: a uniform raise of a channel before it, the probe the
attribution measures with, is removed exactly, so the gradient through it is 0 up to rounding, and the
"strongest inputs" would be that rounding (1e-6) ranked. A group or layer norm removes part of it and mixes
the group's channels in. BatchNorm in eval mode does neither: its running statistics are constants, so its
scale is part of the wiring. These functions compute the same values with the statistics detached, so the
gradient through any of them is its scale (γ / σ per channel and sample), as it is for BatchNorm in eval mode.
A group or layer norm's statistics are shared by the channels of a group: held, a raise of one channel no
longer lowers the others through their shared mean, so each input is read by its own weight and the norm's
scale (the wiring), not by that coupling.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["held_norm", "holds"]


FLAT = 100  # a spread below a hundredth of the norm's eps: flat, it leaves (almost) nothing through


def _normalised(x: torch.Tensor, dims: list[int], eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the statistics held; where what is normalised is flat (a pruned or
    dead channel) the norm's output of it is 0 whatever is added to it, so no gradient passes there (held, its
    scale would be ``1 / sqrt(eps)``: about 316, the strongest input of all)."""
    mean = x.mean(dims, keepdim=True).detach()
    var = x.var(dims, correction=0, keepdim=True).detach()
    values = (x - mean) / torch.sqrt(var + eps)
    return torch.where(var * FLAT < eps, values.detach(), values)


def _per_channel(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    shape = [1, -1] + [1] * (y.ndim - 2)
    y = y if weight is None else y * weight.view(shape)
    return y if bias is None else y + bias.view(shape)


def _trailing(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _layer_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    dims = list(range(-len(normalized_shape), 0))
    return _trailing(_normalised(input, dims, eps), weight, bias)


def _rms_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight=None, eps=None):  # type: ignore[no-untyped-def]
    dims = list(range(-len(normalized_shape), 0))
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    rms = torch.sqrt(input.pow(2).mean(dims, keepdim=True) + eps).detach()
    return _trailing(input / rms, weight, None)


def _group_norm(input: torch.Tensor, num_groups: int, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    grouped = input.reshape(input.shape[0], num_groups, -1)
    return _per_channel(_normalised(grouped, [-1], eps).reshape(input.shape), weight, bias)


def _instance_norm(  # type: ignore[no-untyped-def]
    input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True, momentum=0.1, eps=1e-5
):
    if not use_input_stats:
        return None
    return _per_channel(_normalised(input, list(range(2, input.ndim)), eps), weight, bias)


def _batch_norm(  # type: ignore[no-untyped-def]
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    if not training:
        return None
    return _per_channel(_normalised(input, [0, *range(2, input.ndim)], eps), weight, bias)


def _aten_instance_norm(  # type: ignore[no-untyped-def]
    input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn_enabled=False
):
    return _instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


def _aten_batch_norm(  # type: ignore[no-untyped-def]
    input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled=False
):
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _aten_group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):  # type: ignore[no-untyped-def]
    return _group_norm(input, num_groups, weight, bias, eps)


def _aten_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):  # type: ignore[no-untyped-def]
    return _layer_norm(input, normalized_shape, weight, bias, eps)


# by function: torch.nn.functional's norms, and torch's own of the same names (other arguments, other order)
_HELD: dict[Any, Callable[..., torch.Tensor | None]] = {
    F.layer_norm: _layer_norm,
    getattr(F, "rms_norm", None): _rms_norm,  # torch 2.4 and later
    F.group_norm: _group_norm,
    F.instance_norm: _instance_norm,
    F.batch_norm: _batch_norm,
    torch.layer_norm: _aten_layer_norm,
    torch.group_norm: _aten_group_norm,
    torch.instance_norm: _aten_instance_norm,
    torch.batch_norm: _aten_batch_norm,
}
_HELD.pop(None, None)
_SIGNATURES = {func: inspect.signature(rule) for func, rule in _HELD.items()}


def holds(func: Any) -> bool:
    """Whether ``func`` is one of the norms :func:`held_norm` computes: ``torch.nn.functional``'s or torch's own
    layer, RMS, group, instance or batch norm."""
    try:
        return func in _HELD
    except TypeError:  # not hashable
        return False


def held_norm(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``func(*args, **kwargs)`` with the statistics held constant where ``func`` is a layer, RMS, group or
    instance norm, or a batch norm over the batch's statistics (:func:`holds`); else None (run it as it is: a
    batch norm on running statistics, anything else, or a call these cannot read)."""
    if not holds(func):
        return None
    try:
        bound = _SIGNATURES[func].bind(*args, **kwargs)
    except TypeError:
        return None
    return _HELD[func](*bound.args, **bound.kwargs)
