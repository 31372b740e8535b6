"""Dataset-wide top-k crops: each channel's best images, cut around where the channel peaked.

For a map layer (C×H×W), each crop shows the peak's receptive field (computed from the model, see
:mod:`featviz_report.fields.receptive`) outlined in red, with context around it: a square twice the field's
larger side and at least 32 px of the input, or the whole image where that is smaller. For feature
vectors and sequences there is no position and the whole image is shown. Crops are shown as ``CROP_PX``
squares, windows on their image stored once (:mod:`featviz_report.scan.sources`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..capture.accumulate import ChannelAccumulator

__all__ = ["CROP_PX", "CONTEXT", "MIN_CONTEXT_PX", "context_boxes", "context_box", "channel_crops"]

CROP_PX = 64
CONTEXT = 2  # a crop is at least this many times the receptive field's larger side ...
MIN_CONTEXT_PX = 32  # ... and at least this many input pixels


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


def channel_crops(
    accumulator: ChannelAccumulator, boxes: np.ndarray | None, channel: int, height: int, width: int
) -> list[tuple[int, tuple[int, int, int]]]:
    """(rank, crop square (top, left, side)) of each of ``channel``'s top images, best first; ``boxes``
    (k×C×4) are the peaks' receptive fields of a map layer, ``None`` for other layers (whose crop is the
    whole ``height``×``width`` input)."""
    top = accumulator.top
    crops = []
    for rank in range(top.value.shape[0]):
        if top.sample[rank, channel] < 0 or not np.isfinite(top.value[rank, channel]):
            continue
        crop = (0, 0, min(height, width)) if boxes is None else context_box(boxes[rank, channel], height, width)
        crops.append((rank, crop))
    return crops
