"""Dataset-wide top-k crops: each channel's best images, cut around where the channel peaked.

For a map layer (C×H×W), each crop shows the peak's receptive field (computed from the model, see
:mod:`featviz_report.receptive`) outlined in red, with context around it: a square twice the field's
larger side and at least 32 px of the input, or the whole image where that is smaller. For feature
vectors and sequences there is no position and the whole image is shown. Crops are resized to
``CROP_PX`` squares, one per top image of every shown channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from .accumulate import ChannelAccumulator

__all__ = ["CROP_PX", "CONTEXT", "MIN_CONTEXT_PX", "context_boxes", "context_box", "channel_crops"]

CROP_PX = 64
CONTEXT = 2  # a crop is at least this many times the receptive field's larger side ...
MIN_CONTEXT_PX = 32  # ... and at least this many input pixels
OUTLINE = np.array([255, 59, 48], dtype=np.uint8)


def context_boxes(fields: np.ndarray, height: int, width: int) -> np.ndarray:
    """(top, left, side) of the square crop of a ``height``×``width`` input around each receptive field
    (x0, y0, x1, y1 on the last axis): ``CONTEXT`` times its larger side, at least ``MIN_CONTEXT_PX``,
    inside the image."""
    x0, y0, x1, y1 = np.moveaxis(np.asarray(fields, dtype=np.int64), -1, 0)
    side = np.minimum(min(height, width), np.maximum(MIN_CONTEXT_PX, CONTEXT * np.maximum(x1 - x0, y1 - y0)))
    top = np.clip(np.round((y0 + y1) / 2 - side / 2), 0, height - side).astype(np.int64)
    left = np.clip(np.round((x0 + x1) / 2 - side / 2), 0, width - side).astype(np.int64)
    return np.stack([top, left, side], axis=-1)


def context_box(field: Sequence[int], height: int, width: int) -> tuple[int, int, int]:
    """:func:`context_boxes` of one field."""
    top, left, side = context_boxes(np.asarray(field), height, width).tolist()
    return top, left, side


def _tile(pixels: np.ndarray, field: Sequence[int] | None) -> np.ndarray:
    """The crop around ``field`` (the whole image without one), resized, RGB, the field outlined."""
    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels
    height, width = pixels.shape[:2]
    top, left, side = (0, 0, height) if field is None else context_box(field, height, width)
    crop = np.ascontiguousarray(rgb[top : top + side, left : left + side])  # the input is square
    tile = np.array(Image.fromarray(crop).resize((CROP_PX, CROP_PX), Image.Resampling.BILINEAR))
    if field is None:
        return tile
    scale = CROP_PX / side
    x0, x1 = (round((v - left) * scale) for v in (field[0], field[2]))
    y0, y1 = (round((v - top) * scale) for v in (field[1], field[3]))
    x0, y0 = max(0, min(x0, CROP_PX - 1)), max(0, min(y0, CROP_PX - 1))
    x1, y1 = max(x0 + 1, min(x1, CROP_PX)), max(y0 + 1, min(y1, CROP_PX))
    tile[y0:y1, [x0, x1 - 1]] = OUTLINE
    tile[[y0, y1 - 1], x0:x1] = OUTLINE
    return tile


def channel_crops(
    accumulator: ChannelAccumulator,
    boxes: np.ndarray | None,
    channel: int,
    pixels: Callable[[int], np.ndarray | None],
) -> list[tuple[int, np.ndarray]]:
    """(rank, crop) of each of ``channel``'s top images that is there and readable, best first;
    ``boxes`` (k×C×4) are the peaks' receptive fields of a map layer, ``None`` for other layers."""
    top = accumulator.top
    crops = []
    for rank in range(top.value.shape[0]):
        sample = int(top.sample[rank, channel])
        image = pixels(sample) if sample >= 0 and np.isfinite(top.value[rank, channel]) else None
        if image is not None:
            crops.append((rank, _tile(image, None if boxes is None else boxes[rank, channel])))
    return crops
