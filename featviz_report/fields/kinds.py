"""What a receptive field is while :mod:`featviz_report.fields.trace` follows a pass, and how fields combine.

Per spatial axis, the first and last input position each position reads (:class:`Axis`, two of them a
:class:`Field`); one box that every element reads, whatever the tensor's shape (:class:`Whole`: after a global
pool); or maps merged into one axis of tokens, each keeping its position's field (:class:`Tokens`). Unions
of them (:func:`union` of any kinds lined up by broadcasting, :func:`merged`, :func:`joined`,
:func:`token_union`), the box they span (:func:`spanned`) and the box several boxes make (:func:`one_box`).
:class:`TracedField` is what a layer's maps get in the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "NONE", "Axis", "TracedField", "Whole", "Tokens", "Field", "Known",
    "fits", "as_whole", "spanned", "joined", "merged", "token_union", "union", "one_box",
]  # fmt: skip

NONE = np.iinfo(np.int64).max  # the low end of a range that reads nothing (its high end is -1)


@dataclass(frozen=True)
class Axis:
    """One spatial axis: its index counted from the end, and the first/last input position each reads."""

    dim: int
    lo: np.ndarray
    hi: np.ndarray

    def window(self, starts: np.ndarray, width: int, step: int = 1) -> np.ndarray:
        """Positions ``starts[i] + step * t`` (t < width) as an index matrix, ``-1`` where outside."""
        index = starts[:, None] + step * np.arange(width)[None, :]
        return np.where((index >= 0) & (index < len(self.lo)), index, -1)

    def gather(self, index: np.ndarray, dim: int | None = None) -> Axis:
        """The union of the positions in each row of ``index`` (``-1``: none)."""
        real = index >= 0
        lo = np.where(real, self.lo[index.clip(0)], NONE).min(1)
        hi = np.where(real, self.hi[index.clip(0)], -1).max(1)
        return Axis(self.dim if dim is None else dim, lo, hi)


class Field(NamedTuple):
    """Maps' field while the pass runs: their row axis and their column axis, each with the input positions
    every position along it reads."""

    rows: Axis
    cols: Axis

    @property
    def dims(self) -> tuple[int, int]:
        """Where the two axes are in the tensor, counted from the end: (-2, -1) for N×C×H×W maps."""
        return (self.rows.dim, self.cols.dim)


@dataclass(frozen=True)
class TracedField:
    """A layer output's receptive field: (x0, y0, x1, y1) for any (row, col) of its maps, x1/y1 exclusive.

    ``rows`` holds the input rows and ``cols`` the input columns each position reads, along the axis of the
    C×H×W maps the report shows that their ``dim`` names (-3, -2 or -1): -2 and -1 for maps; a channels-last
    output shown as it is (H maps of W×C) has them at -3 and -2, so that a position's field depends on its
    map, and without one it is the union over all of them."""

    rows: Axis
    cols: Axis

    def boxes(self, rows: np.ndarray, cols: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        """The boxes of positions ``rows``, ``cols`` (and ``channels``; arrays of one shape), on a last axis
        of 4; a position that reads nothing has (0, 0, 0, 0)."""
        at = {-3: channels, -2: rows, -1: cols}
        (y0, y1), (x0, x1) = (_along(axis, at[axis.dim], rows.shape) for axis in (self.rows, self.cols))
        boxes = np.stack([x0, y0, x1 + 1, y1 + 1], -1)
        return np.where(((y1 < y0) | (x1 < x0))[..., None], 0, boxes)

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.boxes(np.asarray(row), np.asarray(col)).tolist()
        return x0, y0, x1, y1


def _along(axis: Axis, index: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The first and last input position read at ``index`` along ``axis``; with no index, by any of them."""
    if index is None:
        return np.full(shape, axis.lo.min()), np.full(shape, axis.hi.max())
    return axis.lo[index], axis.hi[index]


@dataclass(frozen=True)
class Whole:
    """What every element of a tensor reads: one box, (first, last) input row and column, whatever its shape."""

    rows: tuple[int, int]
    cols: tuple[int, int]

    def axes(self, dims: tuple[int, int], shape: Sequence[int]) -> Field:
        """The box as the spatial axes ``dims`` of a tensor of ``shape``, every position reading it."""
        return Field(
            Axis(dims[0], np.full(shape[dims[0]], self.rows[0]), np.full(shape[dims[0]], self.rows[1])),
            Axis(dims[1], np.full(shape[dims[1]], self.cols[0]), np.full(shape[dims[1]], self.cols[1])),
        )


@dataclass(frozen=True)
class Tokens:
    """Maps whose spatial axes are merged into one, row-major (``flatten(2)``, ``view(b, c, h * w)``: tokens):
    that axis, counted from the end, and its positions' fields kept per row and per column."""

    dim: int
    rows: Axis
    cols: Axis

    @property
    def size(self) -> int:
        return len(self.rows.lo) * len(self.cols.lo)

    def at(self, dim: int) -> Tokens:
        return Tokens(dim, self.rows, self.cols)


Known = Field | Whole | Tokens  # per spatial position, one box for every element, or per token


def fits(field: Known, tensor: torch.Tensor) -> bool:
    """Whether each axis of ``field`` is still where it says in ``tensor``, at its length."""
    shape = tensor.shape  # a hot path: no generator
    if isinstance(field, Whole):
        return True
    if isinstance(field, Tokens):
        return -field.dim <= len(shape) and shape[field.dim] == field.size
    rows, cols = field
    fit = -rows.dim <= len(shape) and -cols.dim <= len(shape)
    return fit and len(rows.lo) == shape[rows.dim] and len(cols.lo) == shape[cols.dim]


def as_whole(field: Known) -> Whole | None:
    """``field`` as one box every element reads, when it is one: a :class:`Whole`, or maps of 1×1."""
    if isinstance(field, Whole):
        return field
    return spanned(field) if len(field.rows.lo) == 1 and len(field.cols.lo) == 1 else None


def spanned(field: Known) -> Whole:
    """The box of everything ``field``'s positions read."""
    if isinstance(field, Whole):
        return field
    rows, cols = field.rows, field.cols
    return Whole((int(rows.lo.min()), int(rows.hi.max())), (int(cols.lo.min()), int(cols.hi.max())))


def joined(boxes: list[Whole]) -> Whole:
    return Whole(
        (min(b.rows[0] for b in boxes), max(b.rows[1] for b in boxes)),
        (min(b.cols[0] for b in boxes), max(b.cols[1] for b in boxes)),
    )


def merged(axes: list[Axis], size: int) -> Axis:
    los = [np.broadcast_to(a.lo if len(a.lo) == size else a.lo.min(keepdims=True), size) for a in axes]
    his = [np.broadcast_to(a.hi if len(a.hi) == size else a.hi.max(keepdims=True), size) for a in axes]
    return Axis(axes[0].dim, np.minimum.reduce(los), np.maximum.reduce(his))


def token_union(flats: list[Tokens], boxes: list[Whole]) -> Tokens:
    """Token fields of one layout, each position's union with the others' and with every box."""
    extra = [box.axes((0, 1), (1, 1)) for box in boxes]  # one position each, broadcast by merged
    rows = merged([f.rows for f in flats] + [e.rows for e in extra], len(flats[0].rows.lo))
    cols = merged([f.cols for f in flats] + [e.cols for e in extra], len(flats[0].cols.lo))
    return Tokens(flats[0].dim, rows, cols)


def union(known: list[Known], out: torch.Tensor) -> Known | None:
    """What each position of ``out`` reads when it reads the positions of ``known`` it lines up with
    (broadcasting from the last axis): maps on one pair of axes, or tokens of one layout, each with any boxes,
    or boxes alone; None for maps with tokens, or maps or tokens laid out differently."""
    fields = [f for f in known if isinstance(f, Field)]
    boxes = [f for f in known if isinstance(f, Whole)]
    flats = [f for f in known if isinstance(f, Tokens)]
    if flats:
        if fields or len({(f.dim, len(f.rows.lo), len(f.cols.lo)) for f in flats}) != 1:
            return None
        return token_union(flats, boxes)
    if not fields:
        return joined(boxes)
    dims = fields[0].dims
    if any(f.dims != dims for f in fields) or out.ndim < -min(dims):
        return None
    fields += [box.axes(dims, [1] * -min(dims)) for box in boxes]
    rows = merged([f.rows for f in fields], out.shape[dims[0]])
    return Field(rows, merged([f.cols for f in fields], out.shape[dims[1]]))


def one_box(known: list[Known]) -> Whole | None:
    """The box every element reads when each of ``known`` is one box (:func:`as_whole`): their union."""
    boxes = [as_whole(f) for f in known]
    return joined(boxes) if boxes and all(box is not None for box in boxes) else None  # type: ignore[arg-type]
