"""How each operation between two captured layers maps its inputs' routes (:mod:`.routes`) to its outputs'.

:func:`follow` gets one torch function's call and the routes of the followed tensors it read, and returns
each output's routes, keyed by source (a captured layer call). Affine operations that keep channels apart
keep a route linear: BatchNorm in eval mode (its scale; its shift only moves the bias), average pools,
padding, resampling, dropout in eval mode, copies and casts, reshapes that keep the channels or flatten a
map, means and sums over positions, adds and subtractions, products with constants. Non-captured
convolutions and linear layers mix the channels of a linear route by their summed kernel. Activations,
max pools, norms over the data's own statistics (instance, group, layer, RMS and batch statistics, held
constant in the probing pass by :mod:`.norms`, so each value is scaled on its own) and products of two
followed tensors keep channels apart but are not affine; concatenations and channel slices move channels.
Whatever no rule knows makes the route unknown, which is never wrong: the gradient then measures it (see
:mod:`.strength`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..capture.tensors import tensors_in
from ..fields.calls import arg
from ..fields.rules import dims_of, op_name, raw_name
from . import routes as R
from .norms import holds
from .routes import Route

__all__ = ["Key", "Routes", "follow"]

Key = tuple[str, int]  # a captured layer call: module name, call index
Routes = dict[Key, Route]
Args = tuple[Any, ...]
Kwargs = dict[str, Any]

LINEAR_SAME = frozenset(
    "contiguous clone to float half double bfloat16 type type_as avg_pool1d avg_pool2d adaptive_avg_pool1d "
    "adaptive_avg_pool2d pad interpolate upsample upsample_bilinear upsample_nearest identity".split()
)  # fmt: skip
DROPOUT = frozenset("dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout".split())
NONLINEAR_SAME = frozenset(
    "relu relu6 hardtanh leaky_relu gelu silu sigmoid tanh hardswish hardsigmoid mish softplus elu selu celu "
    "rrelu prelu softsign tanhshrink threshold logsigmoid hardshrink softshrink abs exp log sqrt rsqrt square "
    "clamp clip clamp_min clamp_max max_pool1d max_pool2d max_pool2d_with_indices adaptive_max_pool1d "
    "adaptive_max_pool2d adaptive_max_pool2d_with_indices lp_pool2d erf sin cos sign".split()
)  # fmt: skip
HELD_NORMS = frozenset("instance_norm group_norm layer_norm rms_norm".split())  # elementwise where held (.norms)
SUMS = frozenset("add sub".split())
PRODUCTS = frozenset("mul div true_divide truediv".split())
CATS = frozenset("cat concat concatenate".split())
PIECES = frozenset("chunk split split_with_sizes tensor_split".split())
RESHAPES = frozenset("view reshape flatten squeeze unsqueeze unflatten expand view_as reshape_as".split())
REDUCTIONS = {"mean": "mean", "sum": "sum", "amax": "max", "amin": "max", "max": "max", "min": "max"}


def follow(
    func: Any,
    args: Args,
    kwargs: Kwargs,
    outputs: Sequence[torch.Tensor],
    routes_of: Callable[[Any], Routes | None],
    is_data: Callable[[Any], bool],
) -> list[Routes]:
    """The routes of each of ``outputs`` (the floating-point tensors ``func`` returned), given the routes
    of its inputs (``routes_of``: None for a tensor that no captured layer reaches); ``is_data`` says whether
    a tensor depends on the samples (a mask, a gate), so a product with it is no constant scale."""
    name, raw = op_name(func), raw_name(func)
    if name == "detach":  # cut off from the gradient: no path the attribution could measure
        return [{} for _ in outputs]
    try:
        found = None if _unread_norm(name, func) else _rule(name, raw, args, kwargs, outputs, routes_of, is_data)
    except Exception:  # noqa: BLE001 - arguments a rule did not expect: unknown, never a failure
        found = None
    if found is None:
        every = {
            key: R.unknown(route.width)
            for t in tensors_in((args, kwargs))
            for key, route in (routes_of(t) or {}).items()
        }
        return [dict(every) for _ in outputs]
    return found


def _unread_norm(name: str, func: Any) -> bool:
    """A norm the rules cannot read by its name: one :mod:`.norms` does not hold (its statistics mix channels),
    or ``torch.batch_norm``, whose arguments come in aten's order, not ``F.batch_norm``'s."""
    return name in HELD_NORMS and not holds(func) or name == "batch_norm" and func is not F.batch_norm


def _rule(
    name: str,
    raw: str,
    args: Args,
    kwargs: Kwargs,
    outputs: Sequence[torch.Tensor],
    routes_of: Callable[[Any], Routes | None],
    is_data: Callable[[Any], bool],
) -> list[Routes] | None:
    first = args[0] if args else None
    own = routes_of(first) if isinstance(first, torch.Tensor) else None
    out = outputs[0]
    if name in CATS or name in SUMS or name in PRODUCTS or name == "rsub":
        combined = (
            _cat(args, kwargs, out, routes_of)
            if name in CATS
            else _binary(name, raw, args, kwargs, out, routes_of, is_data)
        )
        return None if combined is None else [combined]
    if own is None or not isinstance(first, torch.Tensor) or first.ndim < 2:
        return None
    if any(is_data(t) for t in tensors_in((args[1:], kwargs))):  # a kernel or a scale made from the samples
        return None
    if name == "pad" and not _pads_positions_only(args, kwargs, first):
        return None
    if name == "getitem":
        return _getitem(args[1], first, out, own)
    if name in PIECES:
        return _pieces(args, kwargs, first, outputs, own)
    if len(outputs) != 1 and name not in NONLINEAR_SAME:
        return None
    if name in RESHAPES:
        return _reshaped(first, out, own)
    if name in REDUCTIONS:
        return _reduced(REDUCTIONS[name], args, kwargs, first, out, own)
    if name in ("conv2d", "linear"):
        mixed = _mixing(name, args, kwargs, first, own)
        return None if mixed is None else [mixed]
    if not _same_channels(first, out):
        return None
    if name in LINEAR_SAME or name in DROPOUT and not arg(args, kwargs, 2, "training", True):
        return [own]
    if name == "neg":
        return [{key: R.scaled(route, -1.0) for key, route in own.items()}]
    if name == "batch_norm":
        return [_batch_norm(args, kwargs, own)]
    if name in NONLINEAR_SAME or name in DROPOUT or name in HELD_NORMS:
        return [{key: R.nonlinear(route) for key, route in own.items()} for _ in outputs]
    return None


def _pads_positions_only(args: Args, kwargs: Kwargs, first: torch.Tensor) -> bool:
    """Whether ``F.pad`` leaves the channel axis alone (a pad of it shifts channels: ``(0, 0, 0, 0, 1, -1)``)."""
    pad = tuple(arg(args, kwargs, 1, "pad", ()))
    return not any(pad[2 * (first.ndim - 2) :])


def _same_channels(first: torch.Tensor, out: torch.Tensor) -> bool:
    return out.ndim == first.ndim and out.shape[:2] == first.shape[:2]


def _batch_norm(args: Args, kwargs: Kwargs, own: Routes) -> Routes:
    """In eval mode, a scale per channel (weight / √(running var + eps)); with batch statistics, not affine."""
    var, weight = arg(args, kwargs, 2, "running_var", None), arg(args, kwargs, 3, "weight", None)
    training, eps = arg(args, kwargs, 5, "training", False), arg(args, kwargs, 7, "eps", 1e-5)
    if training or var is None:
        return {key: R.nonlinear(route) for key, route in own.items()}
    scale = 1.0 / torch.sqrt(var.detach().double().cpu() + eps)
    if weight is not None:
        scale = scale * weight.detach().double().cpu()
    return {key: R.scaled(route, scale.numpy()) for key, route in own.items()}


def _aligned(value: Any, out: torch.Tensor, routes_of: Callable[[Any], Routes | None]) -> Routes | None:
    """A binary operand's routes broadcast to ``out``'s channels (None: it cannot be followed so)."""
    own = routes_of(value) if isinstance(value, torch.Tensor) else None
    if not own:
        return {}
    axis = 1 - (out.ndim - value.ndim)
    if axis < 0:  # no channel axis of its own: every output channel reads all of it
        return None
    lined = {key: R.broadcast(route, out.shape[1]) for key, route in own.items()}
    return None if any(route is None for route in lined.values()) else lined  # type: ignore[return-value]


def _channel_means(value: Any, out: torch.Tensor) -> np.ndarray | float | None:
    """A constant operand as a factor per output channel: its mean over every other axis."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    axis = 1 - (out.ndim - value.ndim)
    data = value.detach().double().cpu()
    if axis < 0 or value.shape[axis] == 1:
        return float(data.mean())
    others = tuple(d for d in range(value.ndim) if d != axis)
    return data.mean(others).numpy() if others else data.numpy()


def _binary(
    name: str,
    raw: str,
    args: Args,
    kwargs: Kwargs,
    out: torch.Tensor,
    routes_of: Callable[[Any], Routes | None],
    is_data: Callable[[Any], bool],
) -> Routes | None:
    """``a + b``, ``a - b`` (``alpha`` too), ``a * b``, ``a / b``, reflected or in place."""
    a, b = args[0], arg(args, kwargs, 1, "other", None)
    if raw.startswith("__r") or raw == "rsub":
        a, b = b, a
    left, right = _aligned(a, out, routes_of), _aligned(b, out, routes_of)
    if left is None or right is None:
        return None
    if name in ("sub", "rsub") or name == "add":
        sign = float(arg(args, kwargs, 2, "alpha", 1)) * (-1.0 if name != "add" else 1.0)
        right = {key: R.scaled(route, sign) for key, route in right.items()}
        return _combined(left, right, linear=True)
    if left and right:
        return _combined(left, right, linear=False)
    if right and name != "mul":  # c / x
        return {key: R.nonlinear(route) for key, route in right.items()}
    followed, constant = (left, b) if left else (right, a)
    if is_data(constant):  # a mask or a gate from the samples: its factor is not the wiring's
        return None
    scale = _channel_means(constant if name == "mul" else _reciprocal(constant), out)
    return None if scale is None else {key: R.scaled(route, scale) for key, route in followed.items()}


def _reciprocal(value: Any) -> Any:
    """``1 / value`` for a divisor (a mean over positions of ``x / c`` is ``x`` times the mean of ``1 / c``, not
    over the mean of ``c``), or None where it is 0 somewhere."""
    if isinstance(value, torch.Tensor):
        data = value.detach().double()
        return None if bool((data == 0).any()) else 1.0 / data
    return None if not isinstance(value, (int, float)) or value == 0 else 1.0 / value


def _combined(left: Routes, right: Routes, linear: bool) -> Routes:
    keys = list(dict.fromkeys([*left, *right]))
    combined = {}
    for key in keys:
        parts = [routes[key] for routes in (left, right) if key in routes]
        route = R.merged(parts, linear) if len(parts) > 1 else parts[0]
        combined[key] = route if linear else R.nonlinear(route) if route.chan is not None else R.unknown(route.width)
    return combined


def _cat(args: Args, kwargs: Kwargs, out: torch.Tensor, routes_of: Callable[[Any], Routes | None]) -> Routes | None:
    tensors = arg(args, kwargs, 0, "tensors", ())
    dim = int(arg(args, kwargs, 1, "dim", 0)) % out.ndim
    if dim != 1:
        return None
    found = [routes_of(t) or {} for t in tensors]
    keys = list(dict.fromkeys(key for routes in found for key in routes))
    return {key: R.concatenated([(routes.get(key), t.shape[1]) for routes, t in zip(found, tensors)]) for key in keys}


def _getitem(index: Any, first: torch.Tensor, out: torch.Tensor, own: Routes) -> list[Routes] | None:
    """``x[..., a:b]`` with the channel axis kept: a slice or list of channels, and slices of positions."""
    if isinstance(index, slice) and index == slice(None):
        return [own]
    if not isinstance(index, tuple) or len(index) < 2 or index[0] != slice(None) or out.ndim != first.ndim:
        return None
    if not all(isinstance(i, slice) for i in index[2:]):
        return None
    channels = index[1]
    if isinstance(channels, slice):
        picked: slice | np.ndarray = channels
    elif isinstance(channels, (list, torch.Tensor)):
        given = np.asarray(channels.cpu() if isinstance(channels, torch.Tensor) else channels)
        if given.ndim != 1 or given.dtype == bool and len(given) != first.shape[1]:
            return None
        picked = np.flatnonzero(given) if given.dtype == bool else given.astype(np.int64)  # a mask: its True channels
    else:
        return None
    routes = {key: R.sliced(route, picked) for key, route in own.items()}
    return [routes] if all(r.channels in (None, out.shape[1]) for r in routes.values()) else None


def _pieces(
    args: Args, kwargs: Kwargs, first: torch.Tensor, outputs: Sequence[torch.Tensor], own: Routes
) -> list[Routes] | None:
    """``chunk``, ``split``: along the channels each piece gets its slice; along another axis, every channel."""
    dim = int(arg(args, kwargs, 2, "dim", 0)) % first.ndim
    if dim != 1:
        return [own for _ in outputs] if all(_same_ndim_channels(first, o) for o in outputs) else None
    pieces, start = [], 0
    for output in outputs:
        stop = start + output.shape[1]
        pieces.append({key: R.sliced(route, slice(start, stop)) for key, route in own.items()})
        start = stop
    return pieces if start == first.shape[1] else None


def _same_ndim_channels(first: torch.Tensor, out: torch.Tensor) -> bool:
    return out.ndim == first.ndim and out.shape[1] == first.shape[1]


def _reshaped(first: torch.Tensor, out: torch.Tensor, own: Routes) -> list[Routes] | None:
    """Reshapes that keep the channel axis (``view(N, C, -1)``, squeezing 1×1 maps) or flatten a map's channels
    with their positions into features (``flatten(1)``, ``view(N, -1)``)."""
    if out.ndim >= 2 and out.shape[:2] == first.shape[:2]:  # memory order kept: channel c stays channel c
        return [own]
    if out.ndim == 2 and first.ndim in (3, 4) and out.shape[0] == first.shape[0]:
        grid = (first.shape[2], first.shape[3]) if first.ndim == 4 else (1, first.shape[2])
        if out.shape[1] == first.shape[1] * grid[0] * grid[1]:
            return [{key: R.flattened(route, grid) for key, route in own.items()}]
    return None


def _reduced(
    kind: str, args: Args, kwargs: Kwargs, first: torch.Tensor, out: torch.Tensor, own: Routes
) -> list[Routes] | None:
    """A mean or sum over positions (linear; a sum by the positions it adds), a max over them (not linear)."""
    dims = dims_of(arg(args, kwargs, 1, "dim", None), first.ndim)
    if dims is None or {-first.ndim, 1 - first.ndim} & dims or out.ndim < 2 or out.shape[1] != first.shape[1]:
        return None
    if kind == "mean":
        return [own]
    if kind == "sum":
        count = math.prod(first.shape[d] for d in dims)
        return [{key: R.scaled(route, float(count)) for key, route in own.items()}]
    return [{key: R.nonlinear(route) for key, route in own.items()}]


def _mixing(name: str, args: Args, kwargs: Kwargs, first: torch.Tensor, own: Routes) -> Routes | None:
    """A convolution or linear layer the report does not capture: its kernel summed over space mixes the channels."""
    weight = arg(args, kwargs, 1, "weight", None)
    if not isinstance(weight, torch.Tensor) or (name == "linear" and first.ndim != 2):
        return None
    summed = weight.detach().double().cpu()
    if name == "conv2d":
        summed = summed.sum((2, 3))
        groups = int(arg(args, kwargs, 6, "groups", 1))
        summed = torch.block_diag(*summed.chunk(groups, 0)) if groups > 1 else summed
    if summed.shape[1] != first.shape[1]:
        return None
    matrix = summed.numpy()
    return {key: R.mixed(route, matrix) for key, route in own.items()}
