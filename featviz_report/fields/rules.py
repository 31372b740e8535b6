"""How each operation maps its inputs' fields to its output's: the rules :mod:`featviz_report.fields.trace`
applies, in tables by operation name, and the names of the operations it knows (:data:`POINTWISE`,
:data:`RESHAPE`, ...).

Each rule takes a :class:`~featviz_report.fields.calls.Call` and returns its output's field, or None where
the arguments are not what the rule understands. :func:`field_of` picks the table by the kinds of field the
operands have, tokens before a box before maps (:data:`TOKENS` where any operand is tokens, else
:data:`WHOLE` where any operand's elements each read one box, else :data:`MAPS`), then the rule by the
operation's name. Where there is none, or it gives none, the output's elements read one box when each
operand's elements do; else the tracer makes the output unknown. A name has one rule a table, so no
order among them matters: where a name has two forms (``max`` reduces, ``max(a, b)`` is elementwise), its
rule tells them apart.

On maps: windows (convolutions, pools, padding), resampling read off one-hot probes, transposed
convolutions and pixel shuffles, reductions, concatenations and splits, pointwise operations and linear
layers, and the reshapes, permutations and indexing that move the spatial axes (or merge them into
tokens). On tokens: products and attention, token mixing, reductions and splits, pointwise operations and
the way back to maps. On a box: pointwise operations.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from .calls import Args, Call, Kwargs, Operand, Rules, fields_of
from .kinds import Axis, Field, Known, Tokens, Whole, joined, one_box, spanned, token_union, union

POINTWISE = frozenset(
    "add sub mul div true_divide truediv floor_divide floordiv neg abs exp log sqrt rsqrt pow square clamp clip "
    "clamp_min clamp_max maximum minimum where relu relu6 hardtanh leaky_relu gelu silu sigmoid tanh hardswish "
    "hardsigmoid mish softplus elu selu celu prelu rrelu softsign tanhshrink dropout dropout2d alpha_dropout "
    "feature_alpha_dropout batch_norm instance_norm group_norm layer_norm clone "
    "contiguous to float half double bfloat16 type type_as detach threshold log_sigmoid hardshrink softshrink "
    "erf sin cos gt lt ge le eq ne logical_not bool long int requires_grad".split()
)  # fmt: skip


class DimArg(NamedTuple):
    """Where an operation along one dimension takes that dimension among its arguments (None: nowhere, it is
    always ``default``), and its default."""

    position: int | None
    default: int | None


DIM_ARG = {  # operations along one dimension
    "softmax": DimArg(1, None), "log_softmax": DimArg(1, None), "normalize": DimArg(2, 1), "cat": DimArg(1, 0),
    "concat": DimArg(1, 0), "concatenate": DimArg(1, 0), "chunk": DimArg(2, 0), "split": DimArg(2, 0),
    "split_with_sizes": DimArg(2, 0), "unbind": DimArg(1, 0), "glu": DimArg(1, -1),
    "local_response_norm": DimArg(None, 1),
}  # fmt: skip
BROADCAST = frozenset(  # elementwise over tensors lined up from their last axis
    "add sub mul div true_divide truediv floor_divide floordiv pow maximum minimum where clamp clip clamp_min "
    "clamp_max gt lt ge le eq ne".split()
)
RESHAPE = frozenset("view reshape flatten unflatten squeeze unsqueeze expand view_as reshape_as".split())
REDUCE = frozenset("mean sum amax amin max min".split())
MOVES = frozenset("permute transpose getitem".split())  # besides RESHAPE, what moves axes without computing
SPLITS = frozenset("chunk split split_with_sizes unbind".split())
IN_PLACE_DUNDERS = frozenset(
    f"__i{op}__" for op in "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift".split()
)  # x += y; not __int__, __invert__ or __index__
SAME_AS = {
    "max_pool2d_with_indices": "max_pool2d", "adaptive_max_pool2d_with_indices": "adaptive_max_pool2d",
    "swapaxes": "transpose", "swapdims": "transpose",
}  # fmt: skip
TOKEN_ALONG = frozenset({"softmax", "log_softmax"}) | SPLITS  # along one dimension, which may be the tokens'
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


def in_place(func: Any) -> bool:
    """``add_``, ``relu_``: torch's name for an operation that writes into its first argument."""
    name = raw_name(func)
    return name.endswith("_") and not name.endswith("__")


def writes_first(func: Any) -> bool:
    """Whether ``func`` writes into its first argument: ``add_``, ``x += y``, ``x[i] = y``."""
    return in_place(func) or raw_name(func) in IN_PLACE_DUNDERS or op_name(func) == "setitem"


def pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1])) if value else (0, 0)
    return (int(value), int(value))


def dims_of(value: Any, ndim: int) -> set[int] | None:
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    return {int(v) % ndim - ndim for v in values} or None  # dim=[]: every dimension


MAPS = Rules("maps")  # every operand with a field has maps' (a Field)
WHOLE = Rules("a box")  # an operand's elements each read one box (a Whole); none is tokens
TOKENS = Rules("tokens")  # an operand is tokens


def field_of(
    func: Any, name: str, args: Args, kwargs: Kwargs, operands: list[Operand], out: torch.Tensor
) -> Known | None:
    """The field of ``out``, the first output of ``func(*args, **kwargs)`` (the rules' ``name`` for it,
    :func:`op_name`), which reads ``operands``: by the rule of the table for the kinds of field they have
    (see the module's docstring), else one box when each operand's elements read one; None where neither."""
    call = Call(func, SAME_AS.get(name, name), args, kwargs, tuple(operands), out)
    kinds = {type(operand.field) for operand in operands}
    table = TOKENS if Tokens in kinds else WHOLE if Whole in kinds else MAPS
    try:
        field = table.apply(call)
    except Exception:  # noqa: BLE001 - arguments this rule did not expect: not understood, never a failure
        field = None
    if field is not None:
        return field
    known = call.fields()
    return None if known is None else one_box(known)


@WHOLE.rule(*POINTWISE)
@MAPS.rule(*POINTWISE)
def pointwise(call: Call) -> Known | None:
    """Each output position reads what the operands' positions it lines up with read (broadcasting); with a box,
    a gate on maps, every position reads it too."""
    known = call.fields()
    return None if known is None else union(known, call.out)


def elementwise(call: Call) -> bool:
    """Whether a reduction's name is the elementwise form of two tensors (``torch.max(a, b)``)."""
    return isinstance(call.arg(1, "other", None), torch.Tensor)


def dim_arg(call: Call) -> Any:
    """The dimension an operation of :data:`DIM_ARG` runs along, as given (an int, or None for softmax's default)."""
    spec = DIM_ARG[call.name]
    return spec.default if spec.position is None else call.arg(spec.position, "dim", spec.default)


def touches(call: Call, fields: list[Field]) -> bool:
    """Whether an operation along a dimension (cat, split, softmax) runs along a spatial axis."""
    dim = dim_arg(call)
    tensor = call.args[0][0] if isinstance(call.args[0], (list, tuple)) else call.args[0]
    if not isinstance(dim, int) or not fields:
        return True
    return int(dim) % tensor.ndim - tensor.ndim in fields[0].dims


@MAPS.rule("conv2d", "max_pool2d", "avg_pool2d")
def window(call: Call) -> Field | None:
    """Convolutions, max and average pools (kernel, stride, padding, dilation; ceil mode by the output's size):
    each output reads its window of positions, clipped to the real ones."""
    field = call.maps
    if field is None or not call.alone or field.dims != (-2, -1):
        return None  # weights from the input: not a window
    if call.name == "conv2d":
        kernel = tuple(call.arg(1, "weight", None).shape[-2:])
        stride, dilation = pair(call.arg(3, "stride", 1)), pair(call.arg(5, "dilation", 1))
        padding: Any = call.arg(4, "padding", 0)
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    else:
        kernel = pair(call.arg(1, "kernel_size", 1))
        stride = pair(call.arg(2, "stride", None) or kernel)
        dilation = pair(call.arg(4, "dilation", 1)) if call.name == "max_pool2d" else (1, 1)
        padding = call.arg(3, "padding", 0)
    pad = pair(padding)
    axes = []
    for i, axis in enumerate(field):
        starts = stride[i] * np.arange(call.out.shape[axis.dim]) - pad[i]
        axes.append(axis.gather(axis.window(starts, kernel[i], dilation[i])))
    return Field(*axes)


PROBES = 2**24  # one-hot probe values and their outputs per resampling call (64 MB of float32)


@MAPS.rule("interpolate")
def resampled(call: Call) -> Field | None:
    """``F.interpolate`` (any mode, size or scale, antialias; ``nn.Upsample`` too): which positions each output
    reads, found exactly by running the same call on one-hot inputs, one axis at a time, at most ``PROBES``
    values of probes and their outputs at once."""
    field, first, out = call.maps, call.first.tensor, call.out
    if field is None or field.dims != (-2, -1) or first.ndim != 4 or not call.alone:
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
            result = call.func(probe, *call.args[1:], **call.kwargs)[:, 0].abs()
            reads.append(result.amax(-1 if axis.dim == -2 else -2) > 0)  # probes × outputs along the axis
        read = torch.cat(reads).T.cpu().numpy()  # outputs × inputs
        width = max(1, int(read.sum(1).max()))
        index = np.full((read.shape[0], width), -1, dtype=np.int64)
        for position, row in enumerate(read):
            found = np.flatnonzero(row)
            index[position, : len(found)] = found
        axes.append(axis.gather(index))
    return Field(*axes)


@MAPS.rule("conv_transpose2d", "pixel_shuffle", "pixel_unshuffle")
def spread(call: Call) -> Field | None:
    """A transposed convolution (output ``o`` reads each input ``i`` with ``o = i·stride − padding +
    dilation·t``) and pixel (un)shuffles (``o`` reads ``o // r``, or ``o·r … o·r + r − 1``)."""
    field = call.maps
    if field is None or field.dims != (-2, -1) or not call.alone:
        return None
    if call.name == "conv_transpose2d":
        kernel = tuple(call.arg(1, "weight", None).shape[-2:])
        stride, padding = pair(call.arg(3, "stride", 1)), pair(call.arg(4, "padding", 0))
        dilation = pair(call.arg(7, "dilation", 1))
    else:
        factor = int(call.arg(1, "upscale_factor" if call.name == "pixel_shuffle" else "downscale_factor", 1))
    axes = []
    for i, axis in enumerate(field):
        positions = np.arange(call.out.shape[axis.dim])
        if call.name == "conv_transpose2d":
            reached = positions[:, None] + padding[i] - dilation[i] * np.arange(kernel[i])[None, :]
            index = np.where(reached % stride[i] == 0, reached // stride[i], -1)
            index = np.where((index >= 0) & (index < len(axis.lo)), index, -1)
        elif call.name == "pixel_shuffle":
            index = (positions // factor)[:, None]
        else:
            index = axis.window(positions * factor, factor)
        axes.append(axis.gather(index))
    return Field(*axes)


@MAPS.rule("adaptive_avg_pool2d", "adaptive_max_pool2d")
def adaptive(call: Call) -> Field | None:
    """Adaptive pools: output ``i`` of ``n`` reads positions ``⌊i·size/n⌋ … ⌈(i+1)·size/n⌉ − 1``."""
    field = call.maps
    if field is None or field.rows.dim != -2:
        return None
    axes = []
    for axis in field:
        size, n = len(axis.lo), call.out.shape[axis.dim]
        starts = (np.arange(n) * size) // n
        ends = -((-(np.arange(n) + 1) * size) // n)
        index = axis.window(starts, int((ends - starts).max()))
        index = np.where(index < ends[:, None], index, -1)
        axes.append(axis.gather(index))
    return Field(*axes)


@MAPS.rule("pad")
def padded(call: Call) -> Field | None:
    """``F.pad``: constant padding reads nothing, reflect/replicate/circular read the mirrored, nearest or
    wrapped-around position (negative widths crop)."""
    field = call.maps
    widths = list(call.arg(1, "pad", ()))
    mode = call.arg(2, "mode", "constant")
    if field is None or mode not in ("constant", "reflect", "replicate", "circular") or len(widths) % 2:
        return None
    before = {-1 - i: widths[2 * i] for i in range(len(widths) // 2)}  # F.pad starts from the last axis
    axes = []
    for axis in field:
        last = len(axis.lo) - 1
        read = np.arange(call.out.shape[axis.dim]) - before.get(axis.dim, 0)
        if mode == "reflect":
            read = np.abs(read)
            read = np.where(read > last, 2 * last - read, read)
        elif mode == "replicate":
            read = read.clip(0, last)
        elif mode == "circular":
            read = read % (last + 1)
        axes.append(axis.gather(axis.window(read, 1)))
    return Field(*axes)


@MAPS.rule(*REDUCE)
def reduced(call: Call) -> Known | None:
    """A mean, sum or max over axes: a spatial axis kept reads all of it; both gone, every element reads every
    position (a box); other axes gone, the spatial ones move. ``torch.max(a, b)`` is pointwise."""
    if elementwise(call):
        return pointwise(call)
    field, first = call.maps, call.first.tensor
    if field is None:
        return None
    dims = dims_of(call.arg(1, "dim", None), first.ndim)
    keepdim = bool(call.arg(2, "keepdim", False))
    spatial = set(field.dims)
    if dims is None or spatial <= dims and not keepdim:  # x.mean((2, 3)): every element reads every position
        return spanned(field)
    if not keepdim:
        if dims & spatial or call.out.ndim != first.ndim - len(dims):
            return None
        return without(field, dims)
    rows, cols = (Axis(a.dim, a.lo.min(keepdims=True), a.hi.max(keepdims=True)) if a.dim in dims else a for a in field)
    return Field(rows, cols)


def without(field: Field, removed: set[int]) -> Field:
    """``field`` once the dimensions ``removed`` (negative indices, none of them spatial) are gone."""
    rows, cols = (Axis(a.dim + sum(1 for d in removed if d > a.dim), a.lo, a.hi) for a in field)
    return Field(rows, cols)


@MAPS.rule("stack")
def stacked(call: Call) -> Known | None:
    """A new axis: pointwise if it comes before the spatial ones (they stay where they are)."""
    n = call.first.tensor.ndim + 1
    spatial = [operand.field for operand in call.operands if isinstance(operand.field, Field)]
    if not spatial or int(call.arg(1, "dim", 0)) % n - n >= min(spatial[0].dims):
        return None
    return pointwise(call)


@MAPS.rule(*DIM_ARG)
def along(call: Call) -> Known | None:
    """Concatenations, splits, softmax and normalisations along a dimension other than the spatial ones:
    pointwise (unbind's dimension goes)."""
    fields = [operand.field for operand in call.operands if isinstance(operand.field, Field)]
    if touches(call, fields):
        return None
    merged = pointwise(call)
    if call.name != "unbind" or not isinstance(merged, Field):
        return merged
    ndim = call.first.tensor.ndim
    return without(merged, {int(call.arg(1, "dim", 0)) % ndim - ndim})


@MAPS.rule("linear")
def linear(call: Call) -> Known | None:
    """A linear layer (its weights not from the input) along an axis other than the columns: pointwise."""
    field = call.maps
    if field is None or not call.alone or -1 in field.dims:
        return None
    return pointwise(call)


def permutation(call: Call, ndim: int) -> list[int]:
    """Where each axis of a ``permute`` or ``transpose`` output comes from."""
    args, kwargs = call.args, call.kwargs
    if call.name == "permute":
        given = kwargs.get("dims", args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
        return [int(d) % ndim for d in given]
    a, b = (int(d) % ndim for d in (call.arg(1, "dim0", 0), call.arg(2, "dim1", 1)))
    order = list(range(ndim))
    order[a], order[b] = order[b], order[a]
    return order


@MAPS.rule(*RESHAPE, *MOVES)
def moved(call: Call) -> Known | None:
    """Reshapes, permutations and indexing that keep both spatial axes whole: where they end up (or the
    tokens, where a reshape merges them)."""
    field, first, out = call.maps, call.first.tensor, call.out
    if field is None:
        return None
    ndim = first.ndim
    if call.name in ("permute", "transpose"):
        order = permutation(call, ndim)
        rows, cols = (Axis(order.index(a.dim % ndim) - ndim, a.lo, a.hi) for a in field)
        return Field(rows, cols)
    keep = -min(field.dims)  # the trailing axes that must come through unchanged
    if out.ndim < keep or tuple(out.shape[-keep:]) != tuple(first.shape[-keep:]):
        return merged_axes(call.name, first, field, out)
    if call.name == "getitem":
        given = call.args[1]
        index = given if isinstance(given, tuple) else (given,)
        if isinstance(given, list) and not all(isinstance(i, int) for i in given):
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


class Role(NamedTuple):
    """An operand of a product, by its argument's name, and its axis that becomes the output's (None: contracted)."""

    name: str
    keeps: int | None


ROLES = {  # a product's operands, in the order of its arguments
    "matmul": (Role("input", -2), Role("other", -1)),
    "bmm": (Role("input", -2), Role("mat2", -1)),
    "scaled_dot_product_attention": (
        Role("query", -2),
        Role("key", None),
        Role("value", None),
        Role("attn_mask", None),
    ),
}


@TOKENS.rule(*ROLES)
def contracted(call: Call) -> Known | None:
    """``a @ b`` and attention (``softmax(q kᵀ) v``): each output element reads one row of ``a`` (one
    query) and everything of ``b`` it is multiplied with (every key and value). A token axis that
    survives (``a``'s rows, ``b``'s columns, batch axes) stays one; a contracted one is read whole. Two
    different ones surviving (``q @ kᵀ``, before its softmax) are read whole too: wider than exact,
    where each element reads two positions."""
    given = {role: call.arg(i, role.name, None) for i, role in enumerate(ROLES[call.name])}
    read = {role: call.operand(tensor) for role, tensor in given.items() if isinstance(tensor, torch.Tensor)}
    known = fields_of(read.values())
    if known is None or any(isinstance(f, Field) for f in known) or any(o.tensor.ndim < 2 for o in read.values()):
        return None
    surviving: list[Tokens] = []
    spans: list[Whole] = []
    for role, operand in read.items():
        field = operand.field
        if isinstance(field, Tokens) and (field.dim < -2 or field.dim == role.keeps):
            surviving.append(field)
        elif field is not None:
            spans.append(spanned(field))
    if surviving and len({(f.dim, len(f.rows.lo), len(f.cols.lo)) for f in surviving}) == 1:
        return token_union(surviving, spans)
    return joined(spans + [spanned(f) for f in surviving])


@TOKENS.rule(*POINTWISE)
def token_pointwise(call: Call) -> Known | None:
    """Pointwise, except with a second operand from the input that is not broadcast from the end (a weight
    computed from the input does not line up with the tokens)."""
    if call.tokens is not None and not call.alone and call.name not in BROADCAST:
        return None
    return pointwise(call)


@TOKENS.rule("linear")
def token_linear(call: Call) -> Known | None:
    """A linear layer on tokens (its weights not from the input): token-wise along another axis; across the
    tokens (an MLP-Mixer's token MLP) each output reads them all."""
    flat = call.tokens
    if flat is None or not call.alone:
        return None
    if flat.dim != -1:
        return pointwise(call)
    known = call.fields()
    return joined([spanned(f) for f in known]) if known else None


@TOKENS.rule(*REDUCE)
def token_reduced(call: Call) -> Known | None:
    """A mean, sum or max over axes of tokens (see :func:`along_tokens`); ``torch.max(a, b)`` is pointwise."""
    if elementwise(call):
        return pointwise(call)
    ndim = call.first.tensor.ndim
    return along_tokens(call, dims_of(call.arg(1, "dim", None), ndim), bool(call.arg(2, "keepdim", False)))


@TOKENS.rule(*TOKEN_ALONG)
def token_along(call: Call) -> Known | None:
    """Softmax and splits of tokens along one dimension (see :func:`along_tokens`)."""
    dim, ndim = dim_arg(call), call.first.tensor.ndim
    return along_tokens(call, None if dim is None else {int(dim) % ndim - ndim}, call.name != "unbind")


def along_tokens(call: Call, dims: set[int] | None, keepdim: bool) -> Known | None:
    """An operation along ``dims`` (None: all) of tokens, keeping them or not: along the tokens, every element
    reads them all (a split along them is not followed); along other axes, pointwise, the tokens moving where
    axes before them go."""
    flat = call.tokens
    if flat is None:
        return None
    if dims is None or flat.dim in dims:
        return None if call.name in SPLITS else spanned(flat)
    merged = pointwise(call)
    if keepdim or not isinstance(merged, Tokens):
        return merged
    return merged.at(merged.dim + sum(1 for d in dims if d > merged.dim))


@TOKENS.rule(*RESHAPE, *MOVES)
def token_moved(call: Call) -> Known | None:
    """Reshapes, permutations and indexing of tokens: where the token axis ends up, or the maps again when a
    reshape splits it back into rows and columns."""
    flat, first, out = call.tokens, call.first.tensor, call.out
    if flat is None:
        return None
    ndim, at = first.ndim, first.ndim + flat.dim  # at: the token axis counted from the front
    if call.name in ("permute", "transpose"):
        return flat.at(permutation(call, ndim).index(at) - ndim)
    if call.name == "getitem":
        given = call.args[1]
        index = given if isinstance(given, tuple) else (given,)
        plain = all(isinstance(i, int) or i == slice(None) for i in index)
        if not plain or isinstance(given, list) or len(index) > ndim or any(i != slice(None) for i in index[at:]):
            return None
        return flat  # only axes before the tokens indexed: counted from the end, the token axis stays
    after = -flat.dim - 1
    tail, out_tail = tuple(first.shape[at + 1 :]), tuple(out.shape[out.ndim - after :]) if after else ()
    if out.ndim >= after + 1 and out_tail == tail and out.shape[-after - 1] == flat.size:
        return flat  # the axes after it unchanged, and it whole
    if tuple(out.shape[: at + 1]) == tuple(first.shape[: at + 1]):
        return flat.at(at - out.ndim)  # the axes before it and it unchanged
    h, w = len(flat.rows.lo), len(flat.cols.lo)
    if out.ndim >= after + 2 and out_tail == tail and tuple(out.shape[-after - 2 : out.ndim - after]) == (h, w):
        return Field(Axis(-after - 2, flat.rows.lo, flat.rows.hi), Axis(-after - 1, flat.cols.lo, flat.cols.hi))
    return None
