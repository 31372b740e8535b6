"""How each operation maps its inputs' fields to its output's: the rules :mod:`featviz_report.fields.trace`
applies, and the names of the operations it knows (:data:`POINTWISE`, :data:`RESHAPE`, ...).

Each rule gets the operation's arguments and the fields of the tensors it follows, and returns the
output's field, or None where the arguments are not what the rule understands (the tracer then makes the
output unknown). Windows (convolutions, pools, padding), resampling read off one-hot probes, transposed
convolutions and pixel shuffles, reductions, and the reshapes, permutations and indexing that move the
spatial axes or the token axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .kinds import Axis, Field, Known, Tokens, spanned

Args = tuple[Any, ...]
Kwargs = dict[str, Any]

POINTWISE = frozenset(
    "add sub mul div true_divide truediv floor_divide floordiv neg abs exp log sqrt rsqrt pow square clamp clip "
    "clamp_min clamp_max maximum minimum where relu relu6 hardtanh leaky_relu gelu silu sigmoid tanh hardswish "
    "hardsigmoid mish softplus elu selu celu prelu rrelu softsign tanhshrink dropout dropout2d alpha_dropout "
    "feature_alpha_dropout batch_norm instance_norm group_norm layer_norm clone "
    "contiguous to float half double bfloat16 type type_as detach threshold logsigmoid hardshrink softshrink "
    "erf sin cos gt lt ge le eq ne logical_not bool long int requires_grad".split()
)  # fmt: skip
DIM_ARG: dict[str, tuple[int | None, int | None]] = {  # operations along one dimension: where their dim
    # argument is, and its default
    "softmax": (1, None), "log_softmax": (1, None), "normalize": (2, 1), "cat": (1, 0), "concat": (1, 0),
    "concatenate": (1, 0), "chunk": (2, 0), "split": (2, 0), "split_with_sizes": (2, 0), "unbind": (1, 0),
    "glu": (1, -1), "local_response_norm": (None, 1),  # None: no dim argument, always along dim 1
}  # fmt: skip
BROADCAST = frozenset(  # elementwise over tensors lined up from their last axis
    "add sub mul div true_divide truediv floor_divide floordiv pow maximum minimum where clamp clip clamp_min "
    "clamp_max gt lt ge le eq ne".split()
)
RESHAPE = frozenset("view reshape flatten unflatten squeeze unsqueeze expand view_as reshape_as".split())
REDUCE = frozenset("mean sum amax amin max min".split())
IN_PLACE_DUNDERS = frozenset(
    f"__i{op}__" for op in "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift".split()
)  # x += y; not __int__, __invert__ or __index__
SAME_AS = {
    "max_pool2d_with_indices": "max_pool2d", "adaptive_max_pool2d_with_indices": "adaptive_max_pool2d",
    "swapaxes": "transpose", "swapdims": "transpose",
}  # fmt: skip
TOKEN_ALONG = frozenset("softmax log_softmax chunk split split_with_sizes unbind".split()) | REDUCE
# sizes in, no data: what they make is a constant (torch.tensor and from_numpy take data, which may have left a
# followed tensor)
FACTORIES = frozenset("arange zeros ones full empty eye linspace logspace tril_indices triu_indices".split())
SHAPE_OF_OTHER = frozenset("expand_as view_as reshape_as type_as".split())
UNRELATED = frozenset("zeros_like ones_like empty_like full_like rand_like randn_like new_zeros new_ones new_empty "
                       "new_full".split())  # fmt: skip


def raw_name(func: Any) -> str:
    """A function's own name; for an ATen overload (``torch.ops.aten.copy_.default``), the operation's."""
    return getattr(func, "__name__", "").split(".")[0]


def op_name(func: Any) -> str:
    """What the rules call an operation: no dunder, no reflected or in-place mark (``__radd__``, ``add_``)."""
    name = raw_name(func)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        name = name[1:] if name[:1] in ("r", "i") and name[1:] in POINTWISE else name
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


ALIASES = {  # torch takes numpy's names too
    "dim": ("dim", "axis"), "keepdim": ("keepdim", "keepdims"), "dim0": ("dim0", "axis0"), "dim1": ("dim1", "axis1"),
}  # fmt: skip


def arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    for key in ALIASES.get(name, (name,)):
        if key in kwargs:
            return kwargs[key]
    return args[index] if len(args) > index else default


def pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1])) if value else (0, 0)
    return (int(value), int(value))


def dims_of(value: Any, ndim: int) -> set[int] | None:
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    return {int(v) % ndim - ndim for v in values} or None  # dim=[]: every dimension


def touches(name: str, args: Args, kwargs: Kwargs, fields: list[Field]) -> bool:
    """Whether an operation along a dimension (cat, split, softmax) runs along a spatial axis."""
    position, default = DIM_ARG[name]
    dim = default if position is None else arg(args, kwargs, position, "dim", default)
    tensor = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
    if not isinstance(dim, int) or not fields:
        return True
    return int(dim) % tensor.ndim - tensor.ndim in {fields[0][0].dim, fields[0][1].dim}


def window(name: str, args: Args, kwargs: Kwargs, field: Field, out: torch.Tensor) -> Field | None:
    if (field[0].dim, field[1].dim) != (-2, -1):
        return None
    if name == "conv2d":
        weight = arg(args, kwargs, 1, "weight", None)
        kernel = tuple(weight.shape[-2:])
        stride, dilation = pair(arg(args, kwargs, 3, "stride", 1)), pair(arg(args, kwargs, 5, "dilation", 1))
        padding: Any = arg(args, kwargs, 4, "padding", 0)
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    else:
        kernel = pair(arg(args, kwargs, 1, "kernel_size", 1))
        stride = pair(arg(args, kwargs, 2, "stride", None) or kernel)
        dilation = pair(arg(args, kwargs, 4, "dilation", 1)) if name == "max_pool2d" else (1, 1)
    pad = pair(padding if name == "conv2d" else arg(args, kwargs, 3, "padding", 0))
    axes = []
    for i, axis in enumerate(field):
        starts = stride[i] * np.arange(out.shape[axis.dim]) - pad[i]
        axes.append(axis.gather(axis.window(starts, kernel[i], dilation[i])))
    return (axes[0], axes[1])


PROBES = 2**24  # one-hot probe values and their outputs per resampling call (64 MB of float32)


def resampled(func: Any, args: Args, kwargs: Kwargs, followed: list[Any], out: torch.Tensor) -> Field | None:
    """``F.interpolate`` (any mode, size or scale, antialias): which positions each output reads, found
    exactly by running the same call on one-hot inputs, one axis at a time, at most ``PROBES`` values of
    probes and their outputs at once."""
    first, (is_followed, field) = followed[0]
    if not is_followed or field is None or (field[0].dim, field[1].dim) != (-2, -1) or first.ndim != 4:
        return None
    if any(f for _, (f, _) in followed[1:]):
        return None
    h, w = first.shape[-2:]
    chunk = max(1, PROBES // (h * w + out.shape[-2] * out.shape[-1]))  # probes per call: inputs and outputs
    dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32  # the same kernel
    axes = []
    for axis in field:
        n = len(axis.lo)
        reads = []
        for start in range(0, n, chunk):
            hot = torch.arange(start, min(n, start + chunk))
            probe = torch.zeros((len(hot), 1, h, w), dtype=dtype, device=first.device)
            if axis.dim == -2:
                probe[torch.arange(len(hot)), 0, hot, :] = 1.0
            else:
                probe[torch.arange(len(hot)), 0, :, hot] = 1.0
            result = func(probe, *args[1:], **kwargs)[:, 0].abs()
            reads.append(result.amax(-1 if axis.dim == -2 else -2) > 0)  # probes × outputs along the axis
        read = torch.cat(reads).T.cpu().numpy()  # outputs × inputs
        width = max(1, int(read.sum(1).max()))
        index = np.full((read.shape[0], width), -1, dtype=np.int64)
        for position, row in enumerate(read):
            found = np.flatnonzero(row)
            index[position, : len(found)] = found
        axes.append(axis.gather(index))
    return (axes[0], axes[1])


def spread(name: str, args: Args, kwargs: Kwargs, field: Field, out: torch.Tensor) -> Field:
    """A transposed convolution (output ``o`` reads each input ``i`` with ``o = i·stride − padding +
    dilation·t``) and pixel (un)shuffles (``o`` reads ``o // r``, or ``o·r … o·r + r − 1``)."""
    if name == "conv_transpose2d":
        kernel = tuple(arg(args, kwargs, 1, "weight", None).shape[-2:])
        stride, padding = pair(arg(args, kwargs, 3, "stride", 1)), pair(arg(args, kwargs, 4, "padding", 0))
        dilation = pair(arg(args, kwargs, 7, "dilation", 1))
    else:
        factor = int(arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor", 1))
    axes = []
    for i, axis in enumerate(field):
        positions = np.arange(out.shape[axis.dim])
        if name == "conv_transpose2d":
            reached = positions[:, None] + padding[i] - dilation[i] * np.arange(kernel[i])[None, :]
            index = np.where(reached % stride[i] == 0, reached // stride[i], -1)
            index = np.where((index >= 0) & (index < len(axis.lo)), index, -1)
        elif name == "pixel_shuffle":
            index = (positions // factor)[:, None]
        else:
            index = axis.window(positions * factor, factor)
        axes.append(axis.gather(index))
    return (axes[0], axes[1])


def adaptive(field: Field, out: torch.Tensor) -> Field:
    axes = []
    for axis in field:
        size, n = len(axis.lo), out.shape[axis.dim]
        starts = (np.arange(n) * size) // n
        ends = -((-(np.arange(n) + 1) * size) // n)
        index = axis.window(starts, int((ends - starts).max()))
        index = np.where(index < ends[:, None], index, -1)
        axes.append(axis.gather(index))
    return (axes[0], axes[1])


def padded(args: Args, kwargs: Kwargs, field: Field, out: torch.Tensor) -> Field | None:
    """``F.pad``: constant padding reads nothing, reflect/replicate/circular read the mirrored, nearest or
    wrapped-around position (negative widths crop)."""
    widths = list(arg(args, kwargs, 1, "pad", ()))
    mode = arg(args, kwargs, 2, "mode", "constant")
    if mode not in ("constant", "reflect", "replicate", "circular") or len(widths) % 2:
        return None
    before = {-1 - i: widths[2 * i] for i in range(len(widths) // 2)}  # F.pad starts from the last axis
    axes = []
    for axis in field:
        last = len(axis.lo) - 1
        read = np.arange(out.shape[axis.dim]) - before.get(axis.dim, 0)
        if mode == "reflect":
            read = np.abs(read)
            read = np.where(read > last, 2 * last - read, read)
        elif mode == "replicate":
            read = read.clip(0, last)
        elif mode == "circular":
            read = read % (last + 1)
        axes.append(axis.gather(axis.window(read, 1)))
    return (axes[0], axes[1])


def reduced(args: Args, kwargs: Kwargs, first: torch.Tensor, field: Field, out: torch.Tensor) -> Known | None:
    dims = dims_of(arg(args, kwargs, 1, "dim", None), first.ndim)
    keepdim = bool(arg(args, kwargs, 2, "keepdim", False))
    spatial = {field[0].dim, field[1].dim}
    if dims is None or spatial <= dims and not keepdim:  # x.mean((2, 3)): every element reads every position
        return spanned(field)
    if not keepdim:
        if dims & spatial or out.ndim != first.ndim - len(dims):
            return None
        return without(field, dims)
    return tuple(  # type: ignore[return-value]
        Axis(a.dim, a.lo.min(keepdims=True), a.hi.max(keepdims=True)) if a.dim in dims else a for a in field
    )


def without(field: Field, removed: set[int]) -> Field:
    """``field`` once the dimensions ``removed`` (negative indices, none of them spatial) are gone."""
    rows, cols = (Axis(a.dim + sum(1 for d in removed if d > a.dim), a.lo, a.hi) for a in field)
    return (rows, cols)


def permutation(name: str, args: Args, kwargs: Kwargs, ndim: int) -> list[int]:
    """Where each axis of a ``permute`` or ``transpose`` output comes from."""
    if name == "permute":
        given = kwargs.get("dims", args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
        return [int(d) % ndim for d in given]
    a, b = (int(d) % ndim for d in (arg(args, kwargs, 1, "dim0", 0), arg(args, kwargs, 2, "dim1", 1)))
    order = list(range(ndim))
    order[a], order[b] = order[b], order[a]
    return order


def moved(name: str, args: Args, kwargs: Kwargs, first: torch.Tensor, field: Field, out: torch.Tensor) -> Known | None:
    """Reshapes, permutations and indexing that keep both spatial axes whole: where they end up."""
    ndim = first.ndim
    if name in ("permute", "transpose"):
        order = permutation(name, args, kwargs, ndim)
        rows, cols = (Axis(order.index(a.dim % ndim) - ndim, a.lo, a.hi) for a in field)
        return (rows, cols)
    keep = -min(field[0].dim, field[1].dim)  # the trailing axes that must come through unchanged
    if out.ndim < keep or tuple(out.shape[-keep:]) != tuple(first.shape[-keep:]):
        return merged_axes(name, first, field, out)
    if name == "getitem":
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if isinstance(args[1], list) and not all(isinstance(i, int) for i in args[1]):
            return None  # a list holding slices is read as a tuple of them
        if any(i is None or i is Ellipsis or isinstance(i, torch.Tensor) for i in index) or len(index) > ndim:
            return None
        if any(i != slice(None) for i in index[ndim - keep :]):  # a spatial axis sliced: not the same positions
            return None
    return field


def merged_axes(name: str, first: torch.Tensor, field: Field, out: torch.Tensor) -> Tokens | None:
    """A reshape that merges the two spatial axes, rows then columns, into one (what else it reshapes lies
    before them): the tokens."""
    rows, cols = field
    after = -cols.dim - 1  # axes after the columns, unchanged
    if name not in RESHAPE or rows.dim != cols.dim - 1 or out.ndim < after + 1:
        return None
    same_after = tuple(out.shape[out.ndim - after :]) == tuple(first.shape[first.ndim - after :])
    one_axis = out.shape[-after - 1] == len(rows.lo) * len(cols.lo)
    return Tokens(-after - 1, rows, cols) if same_after and one_axis and out.numel() == first.numel() else None


def token_moved(
    name: str, args: Args, kwargs: Kwargs, first: torch.Tensor, flat: Tokens, out: torch.Tensor
) -> Known | None:
    """Reshapes, permutations and indexing of tokens: where the token axis ends up, or the maps again when a
    reshape splits it back into rows and columns."""
    ndim, at = first.ndim, first.ndim + flat.dim  # at: the token axis counted from the front
    if name in ("permute", "transpose"):
        return flat.at(permutation(name, args, kwargs, ndim).index(at) - ndim)
    if name == "getitem":
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        plain = all(isinstance(i, int) or i == slice(None) for i in index)
        if not plain or isinstance(args[1], list) or len(index) > ndim or any(i != slice(None) for i in index[at:]):
            return None
        return flat  # only axes before the tokens indexed: counted from the end, the token axis stays
    if name not in RESHAPE:
        return None
    after = -flat.dim - 1
    tail, out_tail = tuple(first.shape[at + 1 :]), tuple(out.shape[out.ndim - after :]) if after else ()
    if out.ndim >= after + 1 and out_tail == tail and out.shape[-after - 1] == flat.size:
        return flat  # the axes after it unchanged, and it whole
    if tuple(out.shape[: at + 1]) == tuple(first.shape[: at + 1]):
        return flat.at(at - out.ndim)  # the axes before it and it unchanged
    h, w = len(flat.rows.lo), len(flat.cols.lo)
    if out.ndim >= after + 2 and out_tail == tail and tuple(out.shape[-after - 2 : out.ndim - after]) == (h, w):
        return (Axis(-after - 2, flat.rows.lo, flat.rows.hi), Axis(-after - 1, flat.cols.lo, flat.cols.hi))
    return None
