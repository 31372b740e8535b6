"""Receptive fields composed exactly along one forward pass, operation by operation.

A ``TorchFunctionMode`` follows every tensor that depends on the input and keeps, for each of its two
spatial axes, the first and last input row (or column) each position reads. The input's own positions
read themselves; each operation maps its inputs' ranges to its output's:

- convolutions and max/average pooling (kernel, stride, padding, dilation, ceil mode), adaptive
  pooling and padding (constant, reflect, replicate, circular) read a window of positions, clipped to
  the real ones;
- spatially pointwise operations (activations, normalisation, dropout, arithmetic, linear layers and
  softmax over channels, concatenation, stacking and splits over channels, reshapes and permutations
  that keep the spatial axes) take the union of their inputs' ranges, a broadcast axis of size 1
  reading for all;
- a mean, sum or max over a spatial axis (keeping it) reads the whole axis; over both (or everything)
  without keeping them, every element reads everything the positions read;
- once every position of a tensor reads the same box (maps pooled to 1×1), so does every element of
  anything computed from it alone, by any operation: a squeeze-excitation gate written as
  ``view(b, c)``, linear layers, ``view(b, c, 1, 1)`` keeps its box, which a product with the maps then
  adds to every position;
- maps merged into tokens (``flatten(2)``, ``view(b, c, h * w)``) keep each token's field, through
  permutations, reshapes of other axes, token-wise layers and back to maps; attention (``q @ kᵀ``,
  softmax, ``@ v``, ``scaled_dot_product_attention``), a softmax, mean or linear layer across the tokens
  (GCNet, non-local blocks, CoAtNet, MLP-Mixer) read every token;
- resampling (``F.interpolate``, ``nn.Upsample``: any mode, size, scale or antialias) reads what the
  same call reads when run on one-hot inputs, one axis at a time; transposed convolutions and pixel
  (un)shuffles read the positions their geometry sends to each output.

Every other operation on a followed tensor makes its outputs unknown, as do anything unknown flowing
into a union, a write (every other name for the memory written into becomes unknown: its views, its base,
tensors made where the mode did not see; an indexed assignment makes the written tensor unknown too), a module
whose output did not come through the mode (a compiled extension), a tensor this bookkeeping cannot read
(sparse) and any TorchScript module in the model (the tracer then stays out). So a layer gets a field
only when every step to it was understood; the caller then falls back to the gradient
(:mod:`featviz_report.receptive`). Normalisation counts as pointwise (local response norm runs along
dim 1): its statistics are not part of the field, as in the gradient method. Channels are merged: after
a pixel unshuffle (space to depth) and a shuffle back, a field can be larger than the exact one. Fields
are bounding boxes in input pixels.

Not seen: values that leave torch and come back (``.item()``, ``.tolist()``, numpy), or that come out of a
scripted function (not module) or ``torch.vmap``, as a scalar, a vector or 1×1 maps, are taken for
constants, so what they carry from the input is missing from the field; nor ``Tensor.set_`` or an
assignment to ``.data`` that keeps the shape.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .capture import first_tensor, tensors_in

__all__ = ["TracedField", "tracing_fields", "trace_fields"]

_NONE = np.iinfo(np.int64).max  # the low end of a range that reads nothing (its high end is -1)
_POINTWISE = frozenset(
    "add sub mul div true_divide truediv floor_divide floordiv neg abs exp log sqrt rsqrt pow square clamp clip "
    "clamp_min clamp_max maximum minimum where relu relu6 hardtanh leaky_relu gelu silu sigmoid tanh hardswish "
    "hardsigmoid mish softplus elu selu celu prelu rrelu softsign tanhshrink dropout dropout2d alpha_dropout "
    "feature_alpha_dropout batch_norm instance_norm group_norm layer_norm clone "
    "contiguous to float half double bfloat16 type type_as detach threshold logsigmoid hardshrink softshrink "
    "erf sin cos gt lt ge le eq ne logical_not bool long int".split()
)  # fmt: skip
_DIM_ARG: dict[str, tuple[int | None, int | None]] = {  # operations along one dimension: where their dim
    # argument is, and its default
    "softmax": (1, None), "log_softmax": (1, None), "normalize": (2, 1), "cat": (1, 0), "concat": (1, 0),
    "concatenate": (1, 0), "chunk": (2, 0), "split": (2, 0), "split_with_sizes": (2, 0), "unbind": (1, 0),
    "glu": (1, -1), "local_response_norm": (None, 1),  # None: no dim argument, always along dim 1
}  # fmt: skip
_RESHAPE = frozenset("view reshape flatten unflatten squeeze unsqueeze expand view_as reshape_as".split())
_REDUCE = frozenset("mean sum amax amin max min".split())
_IN_PLACE_DUNDERS = frozenset(
    f"__i{op}__" for op in "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift".split()
)  # x += y; not __int__, __invert__ or __index__
_SAME_AS = {
    "max_pool2d_with_indices": "max_pool2d", "adaptive_max_pool2d_with_indices": "adaptive_max_pool2d",
    "swapaxes": "transpose", "swapdims": "transpose",
}  # fmt: skip
_TOKEN_ALONG = frozenset("softmax log_softmax chunk split split_with_sizes unbind".split()) | _REDUCE
# sizes in, no data: what they make is a constant (torch.tensor and from_numpy take data, which may have left a
# followed tensor)
_FACTORIES = frozenset("arange zeros ones full empty eye linspace logspace tril_indices triu_indices".split())
_SHAPE_OF_OTHER = frozenset("expand_as view_as reshape_as type_as".split())
_UNRELATED = frozenset("zeros_like ones_like empty_like full_like rand_like randn_like new_zeros new_ones new_empty "
                       "new_full".split())  # fmt: skip


@dataclass(frozen=True)
class _Axis:
    """One spatial axis: its index counted from the end, and the first/last input position each reads."""

    dim: int
    lo: np.ndarray
    hi: np.ndarray

    def window(self, starts: np.ndarray, width: int, step: int = 1) -> np.ndarray:
        """Positions ``starts[i] + step * t`` (t < width) as an index matrix, ``-1`` where outside."""
        index = starts[:, None] + step * np.arange(width)[None, :]
        return np.where((index >= 0) & (index < len(self.lo)), index, -1)

    def gather(self, index: np.ndarray, dim: int | None = None) -> _Axis:
        """The union of the positions in each row of ``index`` (``-1``: none)."""
        real = index >= 0
        lo = np.where(real, self.lo[index.clip(0)], _NONE).min(1)
        hi = np.where(real, self.hi[index.clip(0)], -1).max(1)
        return _Axis(self.dim if dim is None else dim, lo, hi)


@dataclass(frozen=True)
class TracedField:
    """A layer output's receptive field: (x0, y0, x1, y1) for any (row, col), x1/y1 exclusive."""

    rows: _Axis
    cols: _Axis

    def boxes(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The boxes of positions ``rows``, ``cols`` (arrays of one shape), on a last axis of 4; a position
        that reads nothing has (0, 0, 0, 0)."""
        y0, y1, x0, x1 = self.rows.lo[rows], self.rows.hi[rows], self.cols.lo[cols], self.cols.hi[cols]
        boxes = np.stack([x0, y0, x1 + 1, y1 + 1], -1)
        return np.where(((y1 < y0) | (x1 < x0))[..., None], 0, boxes)

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.boxes(np.asarray(row), np.asarray(col)).tolist()
        return x0, y0, x1, y1


@dataclass(frozen=True)
class _Whole:
    """What every element of a tensor reads: one box, (first, last) input row and column, whatever its shape."""

    rows: tuple[int, int]
    cols: tuple[int, int]

    def axes(self, dims: tuple[int, int], shape: Sequence[int]) -> tuple[_Axis, _Axis]:
        """The box as the spatial axes ``dims`` of a tensor of ``shape``, every position reading it."""
        return (
            _Axis(dims[0], np.full(shape[dims[0]], self.rows[0]), np.full(shape[dims[0]], self.rows[1])),
            _Axis(dims[1], np.full(shape[dims[1]], self.cols[0]), np.full(shape[dims[1]], self.cols[1])),
        )


@dataclass(frozen=True)
class _Flat:
    """Maps whose spatial axes are merged into one, row-major (``flatten(2)``, ``view(b, c, h * w)``: tokens):
    that axis, counted from the end, and its positions' fields kept per row and per column."""

    dim: int
    rows: _Axis
    cols: _Axis

    @property
    def size(self) -> int:
        return len(self.rows.lo) * len(self.cols.lo)

    def at(self, dim: int) -> _Flat:
        return _Flat(dim, self.rows, self.cols)


_Field = tuple[_Axis, _Axis]
_Known = _Field | _Whole | _Flat  # per spatial position, one box for every element, or per token
_Args = tuple[Any, ...]
_Kwargs = dict[str, Any]


def _name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        name = name[1:] if name[:1] in ("r", "i") and name[1:] in _POINTWISE else name
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


_ALIASES = {"dim": ("dim", "axis"), "keepdim": ("keepdim", "keepdims")}  # torch takes numpy's names too


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    for key in _ALIASES.get(name, (name,)):
        if key in kwargs:
            return kwargs[key]
    return args[index] if len(args) > index else default


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1])) if value else (0, 0)
    return (int(value), int(value))


def _dims(value: Any, ndim: int) -> set[int] | None:
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    return {int(v) % ndim - ndim for v in values} or None  # dim=[]: every dimension


class _Tracer(TorchFunctionMode):
    """Follows tensors that depend on the input, by identity (weak references guard against reuse)."""

    def __init__(self, constants: set[int]) -> None:
        super().__init__()
        self.known: dict[int, tuple[weakref.ref[torch.Tensor], _Known | None]] = {}
        self.constants = constants  # ids of the model's parameters and buffers
        self.derived: dict[int, weakref.ref[torch.Tensor]] = {}  # computed from those and _FACTORIES alone (a
        # transposed weight, a relative position bias gathered from its table)
        self.by_memory: dict[int | None, dict[int, weakref.ref[torch.Tensor]]] = {}  # followed, by memory
        self.written: dict[int | None, weakref.ref[Any]] = {}  # memory written into → its storage (alive while
        # any tensor uses it: its address cannot be reused before)

    def set(self, tensor: torch.Tensor, field: _Known | None) -> None:
        if field is not None and not _fits(field, tensor):
            field = None
        ref = weakref.ref(tensor)
        self.known[id(tensor)] = (ref, field)
        self.by_memory.setdefault(_memory(tensor), {})[id(tensor)] = ref

    def sharing(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Followed tensors other than ``tensor`` that are views of its memory (or it of theirs)."""
        same = (ref() for ref in self.by_memory.get(_memory(tensor), {}).values())
        return [t for t in same if t is not None and t is not tensor and self.state(t)[0]]

    def state(self, tensor: torch.Tensor) -> tuple[bool, _Known | None]:
        """(followed, field): a followed tensor with field None is unknown."""
        entry = self.known.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return True, entry[1]
        if self.written:  # another name for memory an operation wrote into: what it holds is not known
            storage = self.written.get(_memory(tensor))
            if storage is not None and storage() is not None:
                return True, None
        return False, None

    def constant(self, tensor: torch.Tensor) -> bool:
        """A parameter or buffer of the model, or computed from them alone."""
        if id(tensor) in self.constants:
            return True
        ref = self.derived.get(id(tensor))
        return ref is not None and ref() is tensor

    def current(self, tensor: torch.Tensor) -> tuple[bool, _Known | None]:
        """:meth:`state`, unknown if the tensor was reshaped where the mode did not see (``set_``, ``.data =``).
        Inside the mode's handler only: elsewhere the mode sees every shape asked for, at a cost."""
        followed, field = self.state(tensor)
        return followed, None if field is not None and not _fits(field, tensor) else field

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        try:
            self._follow(func, args, kwargs, result)
        except Exception:  # noqa: BLE001 - tensors this bookkeeping cannot read (sparse, ...): the pass goes on
            for output in tensors_in(result):
                self.set(output, None)
        return result

    def _follow(self, func: Any, args: _Args, kwargs: _Kwargs, result: Any) -> None:
        """Give ``func``'s outputs their fields (and forget whatever it wrote into)."""
        inputs = tensors_in((args, kwargs))
        followed = [(t, self.current(t)) for t in inputs]
        if not any(f for _, (f, _) in followed):
            if all(self.constant(t) for t in inputs) if inputs else _name(func) in _FACTORIES:
                self.derived.update((id(t), weakref.ref(t)) for t in tensors_in(result))
            return
        outputs = tensors_in(result)
        name, raw = _name(func), getattr(func, "__name__", "")
        if name in _SHAPE_OF_OTHER:  # x.expand_as(y): y's values are not read
            followed = followed[:1]
            if not followed[0][1][0]:
                return
        if name == "new_tensor":  # y.new_tensor(g): a copy of g
            followed, name = followed[1:], "clone"
        in_place = name == "setitem" or raw in _IN_PLACE_DUNDERS or raw.endswith("_") and not raw.endswith("__")
        targets = tensors_in(kwargs["out"]) if "out" in kwargs else inputs[:1] if in_place else []
        for target in targets:  # written into: its other names (views, base, ...) are not known any more
            self.written[_memory(target)] = weakref.ref(target.untyped_storage())
            for tensor in self.sharing(target):
                self.set(tensor, None)
            if name == "setitem":  # part of it written: the parts' positions are not followed
                self.set(target, None)
                return
        if not outputs or name in _UNRELATED:
            return
        field: _Known | None = None
        try:
            if any(isinstance(f, _Flat) for _, (_, f) in followed):
                field = self._token_rule(name, args, kwargs, followed, outputs[0])
            elif any(isinstance(f, _Whole) for _, (_, f) in followed):
                field = self._union(followed, outputs[0]) if name in _POINTWISE else None  # a gate on maps
            elif name == "interpolate":  # nn.Upsample too
                field = _resampled(func, args, kwargs, followed)
            else:
                field = self._rule(name, args, kwargs, followed, outputs[0])
        except Exception:  # noqa: BLE001 - arguments this rule did not expect: not understood, never a failure
            field = None
        if field is None:
            field = self._whole(followed)
        for output in outputs:
            same = isinstance(field, _Whole) or output.ndim == outputs[0].ndim
            self.set(output, field if field is not None and same else None)

    def _rule(self, name: str, args: _Args, kwargs: _Kwargs, followed: list[Any], out: torch.Tensor) -> _Known | None:
        first, (is_followed, known) = followed[0]
        field = known if isinstance(known, tuple) else None  # no _Whole reaches here
        name = _SAME_AS.get(name, name)
        if name in ("conv2d", "max_pool2d", "avg_pool2d"):
            alone = not any(f for _, (f, _) in followed[1:])  # weights computed from the input: not a window
            return _window(name, args, kwargs, field, out) if is_followed and field and alone else None
        if name in ("conv_transpose2d", "pixel_shuffle", "pixel_unshuffle"):
            alone = not any(f for _, (f, _) in followed[1:])
            maps = is_followed and field is not None and (field[0].dim, field[1].dim) == (-2, -1)
            return _spread(name, args, kwargs, field, out) if maps and alone and field else None
        if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            return _adaptive(field, out) if is_followed and field and field[0].dim == -2 else None
        if name == "pad":
            return _pad(args, kwargs, field, out) if is_followed and field else None
        if name in _REDUCE and isinstance(_arg(args, kwargs, 1, "other", None), torch.Tensor):
            return self._union(followed, out)  # torch.max(a, b): elementwise
        if name in _REDUCE and is_followed and field:
            return _reduce(args, kwargs, first, field, out)
        if name in _RESHAPE or name in ("permute", "transpose", "getitem"):
            return _moved(name, args, kwargs, first, field, out) if is_followed and field else None
        if name == "stack":  # a new axis: the spatial ones stay where they are if it comes before them
            n = first.ndim + 1
            spatial = [f for _, (_, f) in followed if isinstance(f, tuple)]
            if not spatial or int(_arg(args, kwargs, 1, "dim", 0)) % n - n >= min(spatial[0][0].dim, spatial[0][1].dim):
                return None
            return self._union(followed, out)
        if name in _DIM_ARG:
            fields = [f for _, (_, f) in followed if isinstance(f, tuple)]
            if _touches(name, args, kwargs, fields):
                return None
            union = self._union(followed, out)
            if name != "unbind" or not isinstance(union, tuple):
                return union
            return _without(union, {int(_arg(args, kwargs, 1, "dim", 0)) % first.ndim - first.ndim})
        if name in _POINTWISE or (name == "linear" and field is not None and -1 not in (field[0].dim, field[1].dim)):
            return self._union(followed, out)
        return None

    def _token_rule(
        self, name: str, args: _Args, kwargs: _Kwargs, followed: list[Any], out: torch.Tensor
    ) -> _Known | None:
        """Operations on tokens (maps merged into one axis): attention, token mixing and the way back."""
        first, (_, known) = followed[0]
        flat = known if isinstance(known, _Flat) else None
        name = _SAME_AS.get(name, name)
        if name in ("matmul", "bmm", "scaled_dot_product_attention"):
            return self._contracted(name, followed)
        if name in _REDUCE and isinstance(_arg(args, kwargs, 1, "other", None), torch.Tensor):
            return self._union(followed, out)  # torch.max(a, b): elementwise
        if flat is None:
            return self._union(followed, out) if name in _POINTWISE else None
        if name in _POINTWISE or name == "linear" and flat.dim != -1:
            return self._union(followed, out)
        if name == "linear":  # mixing the tokens (an MLP-Mixer's token MLP): each output reads them all
            known = self._fields(followed)
            return _joined([_spanned(f) for f in known]) if known else None
        if name in _RESHAPE or name in ("permute", "transpose", "getitem"):
            return _token_moved(name, args, kwargs, first, flat, out)
        if name in _TOKEN_ALONG:
            if name in _REDUCE:
                dims = _dims(_arg(args, kwargs, 1, "dim", None), first.ndim)
                keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
            else:
                position, default = _DIM_ARG[name]
                dim = default if position is None else _arg(args, kwargs, position, "dim", default)
                dims = None if dim is None else {int(dim) % first.ndim - first.ndim}
                keepdim = name != "unbind"
            if dims is None or flat.dim in dims:  # along the tokens: every element reads them all
                return None if name in ("chunk", "split", "split_with_sizes", "unbind") else _spanned(flat)
            union = self._union(followed, out)
            if keepdim or not isinstance(union, _Flat):
                return union
            return union.at(union.dim + sum(1 for d in dims if d > union.dim))
        return None

    def _contracted(self, name: str, followed: list[Any]) -> _Known | None:
        """``a @ b`` and attention (``softmax(q kᵀ) v``): each output element reads one row of ``a`` (one
        query) and everything of ``b`` it is multiplied with (every key and value). A token axis that
        survives (``a``'s rows, ``b``'s columns, batch axes) stays one; a contracted one is read whole. Two
        different ones surviving (``q @ kᵀ``, before its softmax) are read whole too: wider than exact,
        where each element reads two positions."""
        known = self._fields(followed)
        if known is None or any(isinstance(f, tuple) for f in known) or any(t.ndim < 2 for t, _ in followed):
            return None
        keeps = {0: -2, 1: -1} if name in ("matmul", "bmm") else {0: -2}  # operand → its axis in the output
        surviving: list[_Flat] = []
        spans: list[_Whole] = []
        for index, (_, (_, field)) in enumerate(followed):
            if isinstance(field, _Flat) and (field.dim < -2 or field.dim == keeps.get(index)):
                surviving.append(field)
            elif field is not None:
                spans.append(_spanned(field))
        if surviving and len({(f.dim, len(f.rows.lo), len(f.cols.lo)) for f in surviving}) == 1:
            return _tokens(surviving, spans)
        return _joined(spans + [_spanned(f) for f in surviving])

    def _union(self, followed: list[Any], out: torch.Tensor) -> _Known | None:
        """Each output position reads what the inputs' positions it lines up with read (broadcasting)."""
        known = self._fields(followed)
        if known is None:
            return None
        fields = [f for f in known if isinstance(f, tuple)]
        boxes = [f for f in known if isinstance(f, _Whole)]
        flats = [f for f in known if isinstance(f, _Flat)]
        if flats:
            if fields or len({(f.dim, len(f.rows.lo), len(f.cols.lo)) for f in flats}) != 1:
                return None
            return _tokens(flats, boxes)
        if not fields:
            return _joined(boxes)
        dims = {(f[0].dim, f[1].dim) for f in fields}
        if len(dims) != 1 or out.ndim < -min(*next(iter(dims))):
            return None
        fields += [box.axes(next(iter(dims)), [1] * 2) for box in boxes]
        return tuple(_merged([f[i] for f in fields], out.shape[fields[0][i].dim]) for i in (0, 1))  # type: ignore[return-value]

    def _whole(self, followed: list[Any]) -> _Whole | None:
        """One box for every element of anything computed, by whatever operation, from inputs each of whose
        elements reads one box (maps of 1×1 count): the union of those boxes."""
        known = self._fields(followed)
        boxes = [_as_whole(f) for f in known or ()]
        return _joined(boxes) if boxes and all(box is not None for box in boxes) else None  # type: ignore[arg-type]

    def _fields(self, followed: list[Any]) -> list[_Known] | None:
        """The followed inputs' fields; None when one is unknown or an input is a map this mode did not see
        made (an opaque operation's output): nothing can be vouched for then."""
        fields = []
        for tensor, (is_followed, field) in followed:
            if is_followed and field is None:
                return None
            if field is not None:
                fields.append(field)
            elif not self.constant(tensor) and tensor.ndim >= 2 and tensor.shape[-2:].numel() > 1:
                return None
        return fields


def _fits(field: _Known, tensor: torch.Tensor) -> bool:
    """Whether each axis of ``field`` is still where it says in ``tensor``, at its length."""
    shape = tensor.shape  # a hot path: no generator
    if isinstance(field, _Whole):
        return True
    if isinstance(field, _Flat):
        return -field.dim <= len(shape) and shape[field.dim] == field.size
    rows, cols = field
    fit = -rows.dim <= len(shape) and -cols.dim <= len(shape)
    return fit and len(rows.lo) == shape[rows.dim] and len(cols.lo) == shape[cols.dim]


def _memory(tensor: torch.Tensor) -> int | None:
    """Where a strided tensor's memory starts; None for layouts without storage (sparse)."""
    if tensor.layout != torch.strided:
        return None
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage to ask (a functorch wrapper, ...)
        return None


def _as_whole(field: _Known) -> _Whole | None:
    """``field`` as one box every element reads, when it is one: a :class:`_Whole`, or maps of 1×1."""
    if isinstance(field, _Whole):
        return field
    rows, cols = (field.rows, field.cols) if isinstance(field, _Flat) else field
    return _spanned(field) if len(rows.lo) == 1 and len(cols.lo) == 1 else None


def _spanned(field: _Known) -> _Whole:
    """The box of everything ``field``'s positions read."""
    if isinstance(field, _Whole):
        return field
    rows, cols = (field.rows, field.cols) if isinstance(field, _Flat) else field
    return _Whole((int(rows.lo.min()), int(rows.hi.max())), (int(cols.lo.min()), int(cols.hi.max())))


def _joined(boxes: list[_Whole]) -> _Whole:
    return _Whole(
        (min(b.rows[0] for b in boxes), max(b.rows[1] for b in boxes)),
        (min(b.cols[0] for b in boxes), max(b.cols[1] for b in boxes)),
    )


def _merged(axes: list[_Axis], size: int) -> _Axis:
    los = [np.broadcast_to(a.lo if len(a.lo) == size else a.lo.min(keepdims=True), size) for a in axes]
    his = [np.broadcast_to(a.hi if len(a.hi) == size else a.hi.max(keepdims=True), size) for a in axes]
    return _Axis(axes[0].dim, np.minimum.reduce(los), np.maximum.reduce(his))


def _touches(name: str, args: _Args, kwargs: _Kwargs, fields: list[_Field]) -> bool:
    """Whether an operation along a dimension (cat, split, softmax) runs along a spatial axis."""
    position, default = _DIM_ARG[name]
    dim = default if position is None else _arg(args, kwargs, position, "dim", default)
    tensor = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
    if not isinstance(dim, int) or not fields:
        return True
    return int(dim) % tensor.ndim - tensor.ndim in {fields[0][0].dim, fields[0][1].dim}


def _window(name: str, args: _Args, kwargs: _Kwargs, field: _Field, out: torch.Tensor) -> _Field | None:
    if (field[0].dim, field[1].dim) != (-2, -1):
        return None
    if name == "conv2d":
        weight = _arg(args, kwargs, 1, "weight", None)
        kernel = tuple(weight.shape[-2:])
        stride, dilation = _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(_arg(args, kwargs, 5, "dilation", 1))
        padding: Any = _arg(args, kwargs, 4, "padding", 0)
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    else:
        kernel = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
        stride = _pair(_arg(args, kwargs, 2, "stride", None) or kernel)
        dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if name == "max_pool2d" else (1, 1)
    pad = _pair(padding if name == "conv2d" else _arg(args, kwargs, 3, "padding", 0))
    axes = []
    for i, axis in enumerate(field):
        starts = stride[i] * np.arange(out.shape[axis.dim]) - pad[i]
        axes.append(axis.gather(axis.window(starts, kernel[i], dilation[i])))
    return (axes[0], axes[1])


PROBES = 2**24  # one-hot probe values per resampling pass (64 MB of float32)


def _resampled(func: Any, args: _Args, kwargs: _Kwargs, followed: list[Any]) -> _Field | None:
    """``F.interpolate`` (any mode, size or scale, antialias): which positions each output reads, found
    exactly by running the same call on one-hot inputs, one axis at a time."""
    first, (is_followed, field) = followed[0]
    if not is_followed or field is None or (field[0].dim, field[1].dim) != (-2, -1) or first.ndim != 4:
        return None
    if any(f for _, (f, _) in followed[1:]):
        return None
    h, w = first.shape[-2:]
    dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32  # the same kernel
    axes = []
    for axis in field:
        n = len(axis.lo)
        reads = []
        for start in range(0, n, max(1, PROBES // (h * w))):
            hot = torch.arange(start, min(n, start + max(1, PROBES // (h * w))))
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


def _spread(name: str, args: _Args, kwargs: _Kwargs, field: _Field, out: torch.Tensor) -> _Field:
    """A transposed convolution (output ``o`` reads each input ``i`` with ``o = i·stride − padding +
    dilation·t``) and pixel (un)shuffles (``o`` reads ``o // r``, or ``o·r … o·r + r − 1``)."""
    if name == "conv_transpose2d":
        kernel = tuple(_arg(args, kwargs, 1, "weight", None).shape[-2:])
        stride, padding = _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(_arg(args, kwargs, 4, "padding", 0))
        dilation = _pair(_arg(args, kwargs, 7, "dilation", 1))
    else:
        factor = int(_arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor", 1))
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


def _adaptive(field: _Field, out: torch.Tensor) -> _Field:
    axes = []
    for axis in field:
        size, n = len(axis.lo), out.shape[axis.dim]
        starts = (np.arange(n) * size) // n
        ends = -((-(np.arange(n) + 1) * size) // n)
        index = axis.window(starts, int((ends - starts).max()))
        index = np.where(index < ends[:, None], index, -1)
        axes.append(axis.gather(index))
    return (axes[0], axes[1])


def _pad(args: _Args, kwargs: _Kwargs, field: _Field, out: torch.Tensor) -> _Field | None:
    """``F.pad``: constant padding reads nothing, reflect/replicate/circular read the mirrored, nearest or
    wrapped-around position (negative widths crop)."""
    widths = list(_arg(args, kwargs, 1, "pad", ()))
    mode = _arg(args, kwargs, 2, "mode", "constant")
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


def _reduce(args: _Args, kwargs: _Kwargs, first: torch.Tensor, field: _Field, out: torch.Tensor) -> _Known | None:
    dims = _dims(_arg(args, kwargs, 1, "dim", None), first.ndim)
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    spatial = {field[0].dim, field[1].dim}
    if dims is None or spatial <= dims and not keepdim:  # x.mean((2, 3)): every element reads every position
        return _spanned(field)
    if not keepdim:
        if dims & spatial or out.ndim != first.ndim - len(dims):
            return None
        return _without(field, dims)
    return tuple(  # type: ignore[return-value]
        _Axis(a.dim, a.lo.min(keepdims=True), a.hi.max(keepdims=True)) if a.dim in dims else a for a in field
    )


def _without(field: _Field, removed: set[int]) -> _Field:
    """``field`` once the dimensions ``removed`` (negative indices, none of them spatial) are gone."""
    rows, cols = (_Axis(a.dim + sum(1 for d in removed if d > a.dim), a.lo, a.hi) for a in field)
    return (rows, cols)


def _moved(
    name: str, args: _Args, kwargs: _Kwargs, first: torch.Tensor, field: _Field, out: torch.Tensor
) -> _Known | None:
    """Reshapes, permutations and indexing that keep both spatial axes whole: where they end up."""
    ndim = first.ndim
    if name in ("permute", "transpose"):
        if name == "permute":
            given = kwargs.get("dims", args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
            order = [int(d) % ndim for d in given]
        else:
            a, b = (int(d) % ndim for d in (_arg(args, kwargs, 1, "dim0", 0), _arg(args, kwargs, 2, "dim1", 1)))
            order = list(range(ndim))
            order[a], order[b] = order[b], order[a]
        rows, cols = (_Axis(order.index(a.dim % ndim) - ndim, a.lo, a.hi) for a in field)
        return (rows, cols)
    keep = -min(field[0].dim, field[1].dim)  # the trailing axes that must come through unchanged
    if out.ndim < keep or tuple(out.shape[-keep:]) != tuple(first.shape[-keep:]):
        return _merged_axes(name, first, field, out)
    if name == "getitem":
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if isinstance(args[1], list) and not all(isinstance(i, int) for i in args[1]):
            return None  # a list holding slices is read as a tuple of them
        if any(i is None or i is Ellipsis or isinstance(i, torch.Tensor) for i in index) or len(index) > ndim:
            return None
        if any(i != slice(None) for i in index[ndim - keep :]):  # a spatial axis sliced: not the same positions
            return None
    return field


def _merged_axes(name: str, first: torch.Tensor, field: _Field, out: torch.Tensor) -> _Flat | None:
    """A reshape that merges the two spatial axes, rows then columns, into one (what else it reshapes lies
    before them): the tokens."""
    rows, cols = field
    after = -cols.dim - 1  # axes after the columns, unchanged
    if name not in _RESHAPE or rows.dim != cols.dim - 1 or out.ndim < after + 1:
        return None
    same_after = tuple(out.shape[out.ndim - after :]) == tuple(first.shape[first.ndim - after :])
    merged = out.shape[-after - 1] == len(rows.lo) * len(cols.lo)
    return _Flat(-after - 1, rows, cols) if same_after and merged and out.numel() == first.numel() else None


def _tokens(flats: list[_Flat], boxes: list[_Whole]) -> _Flat:
    """Token fields of one layout, each position's union with the others' and with every box."""
    extra = [_Axis(0, np.array([b.rows[0]]), np.array([b.rows[1]])) for b in boxes]
    extra_cols = [_Axis(0, np.array([b.cols[0]]), np.array([b.cols[1]])) for b in boxes]
    rows = _merged([f.rows for f in flats] + extra, len(flats[0].rows.lo))
    cols = _merged([f.cols for f in flats] + extra_cols, len(flats[0].cols.lo))
    return _Flat(flats[0].dim, rows, cols)


def _token_moved(
    name: str, args: _Args, kwargs: _Kwargs, first: torch.Tensor, flat: _Flat, out: torch.Tensor
) -> _Known | None:
    """Reshapes, permutations and indexing of tokens: where the token axis ends up, or the maps again when a
    reshape splits it back into rows and columns."""
    ndim, at = first.ndim, first.ndim + flat.dim  # at: the token axis counted from the front
    if name in ("permute", "transpose"):
        if name == "permute":
            given = kwargs.get("dims", args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
            order = [int(d) % ndim for d in given]
        else:
            a, b = (int(d) % ndim for d in (_arg(args, kwargs, 1, "dim0", 0), _arg(args, kwargs, 2, "dim1", 1)))
            order = list(range(ndim))
            order[a], order[b] = order[b], order[a]
        return flat.at(order.index(at) - ndim)
    if name == "getitem":
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        plain = all(isinstance(i, int) or i == slice(None) for i in index)
        if not plain or isinstance(args[1], list) or len(index) > ndim or any(i != slice(None) for i in index[at:]):
            return None
        return flat  # only axes before the tokens indexed: counted from the end, the token axis stays
    if name not in _RESHAPE:
        return None
    after = -flat.dim - 1
    tail, out_tail = tuple(first.shape[at + 1 :]), tuple(out.shape[out.ndim - after :]) if after else ()
    if out.ndim >= after + 1 and out_tail == tail and out.shape[-after - 1] == flat.size:
        return flat  # the axes after it unchanged, and it whole
    if tuple(out.shape[: at + 1]) == tuple(first.shape[: at + 1]):
        return flat.at(at - out.ndim)  # the axes before it and it unchanged
    h, w = len(flat.rows.lo), len(flat.cols.lo)
    if out.ndim >= after + 2 and out_tail == tail and tuple(out.shape[-after - 2 : out.ndim - after]) == (h, w):
        return (_Axis(-after - 2, flat.rows.lo, flat.rows.hi), _Axis(-after - 1, flat.cols.lo, flat.cols.hi))
    return None


def _follow_input(tracer: _Tracer, inputs: torch.Tensor) -> None:
    h, w = inputs.shape[-2:]
    tracer.set(inputs, (_Axis(-2, np.arange(h), np.arange(h)), _Axis(-1, np.arange(w), np.arange(w))))


@contextmanager
def _calls(model: nn.Module, tracer: _Tracer, found: dict[tuple[nn.Module, int], TracedField | None]) -> Iterator[None]:
    counts: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
        call = counts.get(module, 0)
        counts[module] = call + 1
        if any(tracer.state(t)[0] for t in tensors_in((args, kwargs))):
            for made in tensors_in(output):  # made where the mode could not see: not vouched for
                if not tracer.state(made)[0]:
                    tracer.set(made, None)
        found[(module, call)] = _maps_field(tracer, first_tensor(output))

    with ExitStack() as stack:
        for module in model.modules():
            stack.callback(module.register_forward_hook(hook, with_kwargs=True).remove)
        yield


def _maps_field(tracer: _Tracer, tensor: torch.Tensor | None) -> TracedField | None:
    """A module output's field, when the output is N×C×H×W maps and its field is known."""
    if tensor is None or tensor.ndim != 4:
        return None
    known = tracer.state(tensor)[1]
    if known is None or isinstance(known, _Flat) or not _fits(known, tensor):
        return None
    if isinstance(known, _Whole):
        return TracedField(*known.axes((-2, -1), tensor.shape))
    return TracedField(*known) if known is not None and (known[0].dim, known[1].dim) == (-2, -1) else None


@contextmanager
def tracing_fields(
    model: nn.Module, inputs: torch.Tensor, found: dict[tuple[nn.Module, int], TracedField | None]
) -> Iterator[None]:
    """While inside, a forward pass of ``model`` on ``inputs`` (N×C×H×W) puts each (module, call)'s field
    in ``found``: None where its output is not maps or not understood. Enter it inside any other
    ``TorchFunctionMode`` that should see the same pass (the graph's recording)."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        yield  # its insides never reach the mode and it takes no hooks: no field can be vouched for
        return
    tracer = _Tracer({id(t) for t in (*model.parameters(), *model.buffers())})
    _follow_input(tracer, inputs)
    with _calls(model, tracer, found), tracer:
        yield


def trace_fields(model: nn.Module, inputs: torch.Tensor) -> dict[tuple[nn.Module, int], TracedField | None]:
    """Run ``model`` once on ``inputs`` (gradients off; the caller sets mode and device) and return each
    (module, call)'s field, as :func:`tracing_fields` finds them."""
    found: dict[tuple[nn.Module, int], TracedField | None] = {}
    with torch.no_grad(), tracing_fields(model, inputs, found):
        model(inputs)
    return found
