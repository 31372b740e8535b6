"""Dataset-wide top-k crops: each channel's best images, cut around where the channel peaked.

For a map layer (C×H×W), the crop is centred on the peak's position scaled to the input and three map
cells wide (at least an eighth of the input, so early layers still show context); for feature vectors
and sequences there is no position and the whole image is shown. Crops are resized to ``CROP_PX``
squares and laid out as one atlas per layer: a row per channel, best image first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from .accumulate import ChannelAccumulator
from .encode import tile_atlas
from .record import output_kind

__all__ = ["CROP_PX", "crop_box", "crop_atlas"]

CROP_PX = 48


def crop_box(row: int, col: int, map_shape: tuple[int, int], size: int) -> tuple[int, int, int]:
    """(top, left, side) of the square of a ``size``² input around map cell (``row``, ``col``)."""
    height, width = map_shape
    side = min(size, max(size // 8, round(3 * size / max(height, width))))
    centre_y, centre_x = (row + 0.5) * size / height, (col + 0.5) * size / width
    top = int(min(max(0, round(centre_y - side / 2)), size - side))
    left = int(min(max(0, round(centre_x - side / 2)), size - side))
    return top, left, side


def _tile(pixels: np.ndarray, box: tuple[int, int, int] | None) -> np.ndarray:
    if box is not None:
        top, left, side = box
        pixels = pixels[top : top + side, left : left + side]
    image = Image.fromarray(np.ascontiguousarray(pixels)).resize((CROP_PX, CROP_PX), Image.Resampling.BILINEAR)
    return np.asarray(image)


def crop_atlas(
    accumulator: ChannelAccumulator,
    shape: tuple[int, ...],
    channels: Sequence[int],
    pixels: Callable[[int], np.ndarray | None],
    size: int,
) -> np.ndarray:
    """``len(channels)`` rows × k columns of crops (blank where a slot is empty or its file unreadable)."""
    top = accumulator.top
    k = top.value.shape[0]
    tiles: list[np.ndarray | None] = []
    blank: np.ndarray | None = None
    for channel in channels:
        for rank in range(k):
            sample = int(top.sample[rank, channel])
            image = pixels(sample) if sample >= 0 and np.isfinite(top.value[rank, channel]) else None
            if image is None:
                tiles.append(None)
                continue
            box = None
            if output_kind(shape) == "maps":
                row, col = divmod(int(top.position[rank, channel]), shape[2])
                box = crop_box(row, col, (shape[1], shape[2]), size)
            tiles.append(_tile(image, box))
            blank = np.zeros_like(tiles[-1]) if blank is None else blank
    if blank is None:
        blank = np.zeros((CROP_PX, CROP_PX), np.uint8)
    filled = np.stack([blank if t is None else t for t in tiles]) if tiles else blank[None]
    return tile_atlas(filled, k)
