"""A layer's weights as tiles: first-layer filters as images, deeper convolutions as a kernel grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from .encode import grid_shape

__all__ = ["FilterTiles", "filter_tiles"]


@dataclass(frozen=True)
class FilterTiles:
    """Tiles ready for an atlas: ``T×h×w`` palette indices (diverging, 128 ≈ 0) or ``T×h×w×3`` RGB.
    ``kernels`` tells a grid of per-kernel tiles (rows: output filters) from one tile per filter."""

    tiles: np.ndarray
    cols: int
    rgb: bool
    kernels: bool
    value_range: tuple[float, float]
    caption: str
    note: str | None


def _diverging(weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Map weights to palette indices 0..255 with 0 at the centre, ``±scale`` at the ends."""
    ratio = weights / np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(127.5 + 127.5 * ratio), 0, 255).astype(np.uint8)


def filter_tiles(module: nn.Module, is_first: bool, cap: int) -> FilterTiles | None:
    """Tiles of a Conv2d's weights, or ``None`` for other layers.

    * First layer with 3 input channels: one RGB tile per output channel, min-max per filter.
    * One input channel per group (grey first layer, depthwise): one diverging tile per filter.
    * Otherwise: a grid of kernels, one row per output and one column per input channel, at most
      ``cap × cap``, diverging, scaled per output filter.
    """
    if not isinstance(module, nn.Conv2d):
        return None
    weights = module.weight.detach().float().cpu().numpy()
    out_ch, in_ch, kh, kw = weights.shape
    bound = float(np.abs(weights).max()) if weights.size else 0.0
    if is_first and in_ch == 3:
        flat = weights.reshape(out_ch, -1)
        lo = flat.min(1).reshape(-1, 1, 1, 1)
        span = np.maximum(flat.max(1).reshape(-1, 1, 1, 1) - lo, 1e-12)
        tiles = np.round((weights - lo) / span * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        caption = f"{out_ch} filters, {kh}×{kw}, RGB, each scaled to its own min–max"
        value_range = (float(weights.min()), float(weights.max()))
        return FilterTiles(tiles, grid_shape(out_ch)[1], True, False, value_range, caption, None)
    if in_ch == 1:
        scale = np.abs(weights).reshape(out_ch, -1).max(1).reshape(-1, 1, 1, 1)
        caption = f"{out_ch} filters, {kh}×{kw}; blue < 0 < red, each scaled to its own largest |weight|"
        tiles = _diverging(weights[:, 0:1], scale)[:, 0]
        return FilterTiles(tiles, grid_shape(out_ch)[1], False, False, (-bound, bound), caption, None)
    rows, cols = min(out_ch, cap), min(in_ch, cap)
    shown = weights[:rows, :cols]
    scale = np.abs(shown).reshape(rows, -1).max(1).reshape(-1, 1, 1, 1)
    tiles = _diverging(shown, scale).reshape(rows * cols, kh, kw)
    caption = (
        f"{kh}×{kw} kernels: one row per output filter, one column per input channel; "
        "blue < 0 < red, each row scaled to its largest |weight|"
    )
    note = None
    if (rows, cols) != (out_ch, in_ch):
        note = f"showing the first {rows} of {out_ch} filters × first {cols} of {in_ch} input channels"
    return FilterTiles(tiles, cols, False, True, (-bound, bound), caption, note)
