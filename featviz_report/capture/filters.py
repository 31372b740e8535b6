"""A layer's weights as tiles: first-layer filters as images, deeper convolutions as a kernel grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..render.encode import grid_shape
from .weights import Weighted

__all__ = ["FilterTiles", "filter_tiles", "diverging"]


@dataclass(frozen=True)
class FilterTiles:
    """Tiles ready for an atlas: ``T×h×w`` palette indices (diverging, 128 ≈ 0) or ``T×h×w×3`` RGB.
    ``kind``: ``filters`` (one tile per filter), ``kernels`` (a grid, rows: output filters) or ``matrix``
    (one tile: a Linear layer's weight matrix)."""

    tiles: np.ndarray
    cols: int
    rgb: bool
    kind: str
    value_range: tuple[float, float]
    caption: str
    note: str | None


def diverging(weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Map weights to palette indices 0..255 with 0 at the centre, ``±scale`` at the ends."""
    ratio = weights / np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(127.5 + 127.5 * ratio), 0, 255).astype(np.uint8)


MATRIX_MAX = 256  # a Linear weight matrix is block-averaged down to at most this many rows and columns


def _block_mean(matrix: np.ndarray, limit: int) -> np.ndarray:
    """Average ``matrix`` over blocks so neither side exceeds ``limit`` (a partial last block is kept)."""
    for axis in (0, 1):
        size = matrix.shape[axis]
        if size > limit:
            step = -(-size // limit)
            starts = np.arange(0, size, step)
            matrix = np.add.reduceat(matrix, starts, axis=axis) / np.diff(np.append(starts, size)).reshape(
                (-1, 1) if axis == 0 else (1, -1)
            )
    return matrix


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _drawn_weights(module: Weighted, computed: torch.Tensor | str | None) -> tuple[torch.Tensor, str | None]:
    """The weight the layer computes with (``computed``, :mod:`.weights`: a tensor only where that is not its
    parameter as stored; None: its parameter) and, where it is not, a note."""
    if computed is None:
        return module.weight.detach(), None
    if isinstance(computed, str):
        return module.weight.detach(), f"its parameter as stored: {computed}"
    return computed, f"as its forward computes it from its parameter ({type(module).__name__})"


def _finite_weights(module: Weighted, computed: torch.Tensor | str | None) -> tuple[np.ndarray, str | None]:
    """The weights drawn as float32 with NaN/Inf as 0, and a note that says how many there were (and where
    they are not the parameter as stored)."""
    drawn, how = _drawn_weights(module, computed)
    weights = drawn.float().cpu().numpy()
    if not weights.size or np.isfinite(weights.min()) and np.isfinite(weights.max()):  # NaN and ±Inf reach these
        return weights, how
    bad = int(weights.size - np.count_nonzero(np.isfinite(weights)))
    note = f"{bad:,} non-finite weights (NaN/Inf) drawn as 0"
    return np.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0), _joined(how, note)


def _matrix_tiles(module: nn.Linear, computed: torch.Tensor | str | None) -> FilterTiles:
    weights, bad = _finite_weights(module, computed)
    shown = _block_mean(weights, MATRIX_MAX)
    bound = float(np.abs(shown).max()) if shown.size else 0.0
    tile = diverging(shown, np.array(bound))[None]
    caption = f"weight matrix {weights.shape[0]}×{weights.shape[1]} (rows: outputs, columns: inputs); blue < 0 < red"
    note = None
    if shown.shape != weights.shape:
        note = f"block-averaged to {shown.shape[0]}×{shown.shape[1]}"
    return FilterTiles(tile, 1, False, "matrix", (-bound, bound), caption, _joined(note, bad))


def filter_tiles(
    module: nn.Module, is_first: bool, cap: int, computed: torch.Tensor | str | None = None
) -> FilterTiles | None:
    """Tiles of a layer's weights, or ``None`` for layers without a view of their own: the weight it
    ``computed`` (:class:`.weights.WeightReader`; None: its parameter as stored, as torch's own layers use it).

    * First layer with 3 input channels: one RGB tile per output channel, min-max per filter.
    * One input channel per group (grey first layer, depthwise): one diverging tile per filter.
    * Other convolutions (transposed ones too): a grid of kernels, one row per output and one column
      per input channel, at most ``cap × cap``, diverging, scaled per output filter.
    * Linear: the weight matrix as one diverging heatmap, block-averaged when large.
    """
    if isinstance(module, nn.Linear):
        return _matrix_tiles(module, computed)
    if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return None
    weights, bad = _finite_weights(module, computed)
    if isinstance(module, nn.ConvTranspose2d):
        weights = weights.transpose(1, 0, 2, 3)  # stored in×out; shown out×in like Conv2d
    out_ch, in_ch, kh, kw = weights.shape
    bound = float(max(-weights.min(), weights.max())) if weights.size else 0.0  # max |w| without a copy
    if is_first and in_ch == 3:
        flat = weights.reshape(out_ch, -1)
        lo = flat.min(1).reshape(-1, 1, 1, 1)
        span = np.maximum(flat.max(1).reshape(-1, 1, 1, 1) - lo, 1e-12)
        tiles = np.round((weights - lo) / span * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        caption = f"{out_ch} filters, {kh}×{kw}, RGB, each scaled to its own min–max"
        value_range = (float(weights.min()), float(weights.max()))
        return FilterTiles(tiles, grid_shape(out_ch)[1], True, "filters", value_range, caption, bad)
    if in_ch == 1:
        scale = np.abs(weights).reshape(out_ch, -1).max(1).reshape(-1, 1, 1, 1)
        caption = f"{out_ch} filters, {kh}×{kw}; blue < 0 < red, each scaled to its own largest |weight|"
        tiles = diverging(weights[:, 0:1], scale)[:, 0]
        return FilterTiles(tiles, grid_shape(out_ch)[1], False, "filters", (-bound, bound), caption, bad)
    rows, cols = min(out_ch, cap), min(in_ch, cap)
    shown = weights[:rows, :cols]
    scale = np.abs(shown).reshape(rows, -1).max(1).reshape(-1, 1, 1, 1)
    tiles = diverging(shown, scale).reshape(rows * cols, kh, kw)
    caption = (
        f"{kh}×{kw} kernels: one row per output filter, one column per input channel; "
        "blue < 0 < red, each row scaled to its largest |weight|"
    )
    note = None
    if (rows, cols) != (out_ch, in_ch):
        note = f"showing the first {rows} of {out_ch} filters × first {cols} of {in_ch} input channels"
    return FilterTiles(tiles, cols, False, "kernels", (-bound, bound), caption, _joined(note, bad))
