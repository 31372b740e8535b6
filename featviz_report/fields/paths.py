"""A forward pass whose values are the model's and whose gradient reaches every pixel a value can depend on.

The gradient fallback of :mod:`featviz_report.fields.receptive` takes a field from the support of a position's
gradient with respect to the input. That support is smaller than the field wherever a value hides a path:
a ReLU or a hard sigmoid flat where it is evaluated, a sigmoid saturated to exactly 1, a max pool or a
max over an axis that sends the gradient to one element of its window, normalisation statistics (the
gradient through them reaches the whole image, which by convention is not part of a field, see
:mod:`featviz_report.fields.trace`), and sampling at positions computed from the data (``grid_sample``,
deformable convolutions), whose gradient reaches only the pixels sampled this time.

:class:`OpenPaths` is a ``TorchFunctionMode`` that, on tensors that require a gradient, keeps every value as
the operation computes it and changes only the gradient:

- elementwise operations whose derivative can vanish (activations, clamps, ``maximum``, ``where``,
  rounding) and normalisations pass the gradient through unchanged to each floating tensor argument
  (``y = f(x)`` computed without the graph, plus ``x - x.detach()``), lined up as the operation reads it:
  from the last axis for an elementwise argument (a layer norm's weight too), to every output from each
  element of a per-channel parameter computed from the input (prelu's weight, a batch, instance or group
  norm's weight, bias and statistics: lined up from the last axis, a weight of C would meet the wrong
  axis; a field merges channels anyway); written in place, into a tensor other than the one operand
  followed, the values go in by a ``copy_`` autograd records;
- max pooling (any kernel, stride, padding, dilation, ceil mode) and adaptive max pooling send it to
  their whole window, as an average of the same geometry would;
- a max, min, sort, top-k or median along axes sends it to every element along them;
- grid sampling and deformable convolutions send it, besides their own path, to every element of the
  sampled tensor (geometry computed from the data: the whole input is what they can read).

A call with ``out=`` runs as it is: written without the graph, its values would be hidden from the gradient
(autograd refuses ``out=`` with a gradient, and the layer is then unknown).

Not seen: values that go through an integer (an index computed from the data, ``argmax`` then
``gather``), comparisons used as masks (``x * (x > 0)``), and operations inside TorchScript.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..capture.tensors import same_memory
from .calls import Args, Kwargs, arg
from .rules import in_place, op_name, pair

__all__ = ["OpenPaths"]

PASS = frozenset(
    "relu relu6 hardtanh leaky_relu rrelu prelu gelu silu sigmoid tanh hardswish hardsigmoid mish softplus elu "
    "selu celu softsign tanhshrink threshold log_sigmoid hardshrink softshrink erf sign sgn round floor ceil "
    "trunc heaviside clamp clip clamp_min clamp_max maximum minimum fmax fmin where nan_to_num "
    "batch_norm instance_norm group_norm layer_norm rms_norm native_batch_norm _native_batch_norm_legit "
    "_native_batch_norm_legit_no_training native_group_norm native_layer_norm".split()
)  # fmt: skip
CHANNEL = frozenset(  # a tensor parameter per channel (dim 1), not lined up with the output from its last axis
    "prelu batch_norm instance_norm group_norm native_batch_norm _native_batch_norm_legit "
    "_native_batch_norm_legit_no_training native_group_norm".split()
)


class _Selection(NamedTuple):
    """Where a selection takes the dimension(s) it runs along (None: nowhere, always ``dim``) and their default,
    and where it takes ``keepdim`` (None: nowhere, it keeps them)."""

    dim_at: int | None
    dim: Any
    keepdim_at: int | None


_SELECTIONS = {
    "amax": _Selection(1, (), 2), "amin": _Selection(1, (), 2), "max": _Selection(1, None, 2),
    "min": _Selection(1, None, 2), "median": _Selection(1, None, 2), "nanmedian": _Selection(1, None, 2),
    "mode": _Selection(1, -1, 2), "kthvalue": _Selection(2, -1, 3), "topk": _Selection(2, -1, None),
    "msort": _Selection(None, 0, None), "sort": _Selection(1, -1, None), "cummax": _Selection(1, -1, None),
    "cummin": _Selection(1, -1, None),
}  # fmt: skip
SELECT = frozenset(_SELECTIONS)
POOL = frozenset("max_pool2d _max_pool2d max_pool2d_with_indices".split())
ADAPTIVE = frozenset("adaptive_max_pool2d _adaptive_max_pool2d adaptive_max_pool2d_with_indices".split())
SAMPLED = frozenset(
    "grid_sample grid_sampler grid_sampler_2d _grid_sampler_2d_cpu_fallback cudnn_grid_sampler deform_conv2d".split()
)


class OpenPaths(TorchFunctionMode):
    """Use as a context manager around a forward pass whose gradient is wanted (see the module's docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: Args = (), kwargs: Kwargs | None = None) -> Any:
        kwargs = kwargs or {}
        name = op_name(func)
        if name not in PASS | SELECT | POOL | ADAPTIVE | SAMPLED or not torch.is_grad_enabled() or "out" in kwargs:
            return func(*args, **kwargs)  # out=: written without the graph, the values would hide from the gradient
        if name in SAMPLED:
            return _sampled(func, args, kwargs)
        if name in PASS or name in ("max", "min") and _other(args, kwargs):
            return _passed(func, args, kwargs, name in CHANNEL)
        x = arg(args, kwargs, 0, "input", None)
        if not _followed(x):
            return func(*args, **kwargs)
        with torch.no_grad():
            result = func(*args, **kwargs)
        values = result if isinstance(result, torch.Tensor) else result[0]
        if not isinstance(values, torch.Tensor) or not values.is_floating_point() or same_memory(values, x):
            return result
        if name in SELECT:
            spread = _along(name, args, kwargs, x)
        elif values.ndim in (3, 4) and values.ndim == x.ndim:
            spread = (
                _windows(args, kwargs, x, values)
                if name in POOL
                else F.adaptive_avg_pool2d(x, (values.shape[-2], values.shape[-1]))
            )
        else:
            return func(*args, **kwargs)
        return _with(result, _carried(values, [spread]))


def _followed(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad and value.is_floating_point()


def _other(args: Args, kwargs: Kwargs) -> bool:
    """Whether max/min is the elementwise form (a second tensor) rather than a reduction."""
    return isinstance(arg(args, kwargs, 1, "other", None), torch.Tensor)


def _tensors(args: Args, kwargs: Kwargs) -> list[torch.Tensor]:
    found = []
    for value in (*args, *kwargs.values()):
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if _followed(item):
                found.append(item)
    return found


def _carried(values: torch.Tensor, sources: list[torch.Tensor], channels: bool = False) -> torch.Tensor:
    """``values`` (no graph) with a gradient to each of ``sources``: lined up from the last axis where a source
    broadcasts to ``values`` (an elementwise operand), else from every element of it to every output (a
    per-channel parameter, with ``channels``, or any source that does not line up: never a path dropped)."""
    out = values.detach()
    for source in sources:
        if _lines_up(source, out) and not (channels and source.shape != out.shape):
            out = out + (source - source.detach())
        else:
            mean = source.mean()
            out = out + (mean - mean.detach())
    return out


def _lines_up(source: torch.Tensor, out: torch.Tensor) -> bool:
    try:
        return torch.broadcast_shapes(source.shape, out.shape) == out.shape
    except RuntimeError:  # shapes that do not broadcast
        return False


def _with(result: Any, values: torch.Tensor) -> Any:
    """``result`` with its first tensor replaced by ``values`` (a tensor, a tuple or a torch.return_types)."""
    if isinstance(result, torch.Tensor):
        return values
    return type(result)((values, *result[1:]))


def _passed(func: Any, args: Args, kwargs: Kwargs, channels: bool = False) -> Any:
    """An elementwise operation or a normalisation: its value, and a gradient of one to each input (each
    per-channel parameter to every output, with ``channels``)."""
    sources = _tensors(args, kwargs)
    if not sources:
        return func(*args, **kwargs)
    target = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if target is not None and in_place(func) and [s for s in sources if s is not target]:
        with torch.no_grad():  # clamp_(min=t), or into a tensor not followed: the values of all, by autograd's copy_
            scratch = target.clone()
            func(scratch, *args[1:], **kwargs)
        return target.copy_(_carried(scratch, sources, channels))
    with torch.no_grad():
        result = func(*args, **kwargs)
    values = result if isinstance(result, torch.Tensor) else result[0]
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        return result
    if any(same_memory(values, source) for source in sources):
        return result  # written in place (relu_): the tensor keeps its own path, and the new values
    return _with(result, _carried(values, sources, channels))


def _along(name: str, args: Args, kwargs: Kwargs, x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` along the axes a selection ran along, shaped like its values."""
    selection = _SELECTIONS[name]
    dim = selection.dim if selection.dim_at is None else arg(args, kwargs, selection.dim_at, "dim", selection.dim)
    dim = selection.dim if isinstance(dim, bool) else dim  # a flag where the dimension goes: none given
    keep = selection.keepdim_at is None or bool(arg(args, kwargs, selection.keepdim_at, "keepdim", False))
    dims = tuple(int(d) % x.ndim for d in (dim if isinstance(dim, (list, tuple)) else (dim,)) if d is not None)
    if not dims:
        return x.mean()
    mean = x.mean(dims, keepdim=True)
    return mean if keep else mean.squeeze(dims)


def _windows(args: Args, kwargs: Kwargs, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The mean over each window of a max pool (kernel, stride, padding, dilation, ceil mode as ``values``)."""
    kernel = pair(arg(args, kwargs, 1, "kernel_size", 1))
    stride_arg = arg(args, kwargs, 2, "stride", None)
    stride = pair(stride_arg) if stride_arg not in (None, [], ()) else kernel
    padding, dilation = pair(arg(args, kwargs, 3, "padding", 0)), pair(arg(args, kwargs, 4, "dilation", 1))
    maps = x if x.ndim == 4 else x[None]
    out = values.shape[-2:]
    extra = [
        max(0, (out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - maps.shape[2 + i] - 2 * padding[i])
        for i in (0, 1)
    ]  # ceil mode: the last windows may start in the padding, which reads nothing
    padded = F.pad(maps, (padding[1], padding[1] + extra[1], padding[0], padding[0] + extra[0]))
    weight = maps.new_full((maps.shape[1], 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
    mean = F.conv2d(padded, weight, stride=stride, dilation=dilation, groups=maps.shape[1])[..., : out[0], : out[1]]
    return mean if x.ndim == 4 else mean[0]


def _sampled(func: Any, args: Args, kwargs: Kwargs) -> Any:
    """Sampling at positions computed from the data: its own gradient, and one to every element it could read."""
    result = func(*args, **kwargs)
    x = arg(args, kwargs, 0, "input", None)
    if not _followed(x) or not isinstance(result, torch.Tensor) or not result.is_floating_point():
        return result
    mean = x.mean(tuple(range(1, x.ndim)), keepdim=True) if x.ndim > 1 else x.mean()
    mean = mean.reshape(mean.shape[:1] + (1,) * (result.ndim - 1)) if x.ndim > 1 else mean
    return result + (mean - mean.detach())
