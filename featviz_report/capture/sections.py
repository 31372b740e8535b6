"""Captured records → :class:`LayerSection` dataclasses: geometry, statistics, filters, names.

Everything here runs after the forward passes, on small CPU arrays and finished PNG bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import ReportConfig
from ..errors import ModelError
from ..render.anchors import layer_ids
from ..render.encode import grid_shape, png_palette, png_rgb, tile_atlas
from ..report_data import ChannelStats, FilterView, Grid, Histogram, LayerSection, Peaks, Png, PngSource, Stats
from .accumulate import ChannelAccumulator
from .filters import FilterTiles, filter_tiles
from .layer_record import LayerRecord, output_kind
from .reduce import histogram_counts, vector_shape
from .weights import Computed

__all__ = ["layer_sections", "colorbar"]

TARGET_TILE_PX = {"maps": 64, "filters": 36, "kernels": 12, "matrix": 256}  # shown at least this wide
MAX_WIDTH_PX = 920


def _tile_size(shape: tuple[int, ...]) -> tuple[int, int]:
    kind = output_kind(shape)
    if kind == "maps":
        return shape[1], shape[2]
    if kind == "sequence":
        return shape[0], shape[1]
    return vector_shape(shape[0])


def colorbar(colormap: str) -> Png:
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 256)
    return Png(png_palette(ramp, colormap), 256, 1)


def _grid(png: PngSource, tile_h: int, tile_w: int, count: int, cols: int, target_px: int) -> Grid:
    rows = -(-count // cols)
    width, height = cols * tile_w, rows * tile_h
    zoom = max(1, min(-(-target_px // tile_w), MAX_WIDTH_PX // width))
    return Grid(Png(png, width, height), rows, cols, tile_h, tile_w, count, zoom)


def _filter_view(tiles: FilterTiles) -> FilterView:
    count, tile_h, tile_w = tiles.tiles.shape[:3]
    atlas = tile_atlas(tiles.tiles, tiles.cols)
    png = png_rgb(atlas) if tiles.rgb else png_palette(atlas, "diverging")
    return FilterView(
        _grid(png, tile_h, tile_w, count, tiles.cols, TARGET_TILE_PX[tiles.kind]),
        tiles.caption,
        None if tiles.rgb else "diverging",
        tiles.value_range,
        tiles.note,
    )


def _histogram(counts: np.ndarray, lo: float, hi: float) -> Histogram:
    return Histogram(tuple(float(c) for c in counts), float(lo), float(hi))


def _weight_histogram(module: nn.Module) -> Histogram | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.numel() == 0:
        return None
    values = weight.detach().float().flatten()
    lo, hi = (float(v) for v in torch.aminmax(values))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return None
        lo, hi = (float(v) for v in torch.aminmax(values))
    return _histogram(histogram_counts(values, lo, hi).cpu().numpy(), lo, hi)


def _peaks(acc: ChannelAccumulator, shape: tuple[int, ...]) -> Peaks:
    """The top samples per channel with the peak's (row, column) in the map; empty slots have sample -1."""
    width = shape[2] if output_kind(shape) == "maps" else 1
    rows, cols = np.divmod(acc.top.position, width)
    sample = np.where(np.isfinite(acc.top.value), acc.top.sample, -1)
    return Peaks(sample, acc.top.value, rows, cols)


def _stats(acc: ChannelAccumulator, shape: tuple[int, ...]) -> tuple[Stats, ChannelStats]:
    count = acc.count.sum()
    mean = float((acc.mean * acc.count).sum() / max(count, 1))
    m2 = float((acc.m2 + acc.count * (acc.mean - mean) ** 2).sum())
    elements = max(float(count + acc.nans.sum() + acc.infs.sum()), 1.0)
    finite_min = acc.minimum[np.isfinite(acc.minimum)]
    finite_max = acc.maximum[np.isfinite(acc.maximum)]
    constant = (acc.count > 0) & (acc.minimum == acc.maximum) & (acc.maximum != 0)
    layer = Stats(
        min=float(finite_min.min()) if finite_min.size else float("nan"),
        max=float(finite_max.max()) if finite_max.size else float("nan"),
        mean=mean,
        std=float(np.sqrt(m2 / max(count, 1))),
        zero_fraction=float(acc.zeros.sum() / elements),
        nonpositive_fraction=float((acc.count - acc.positives).sum() / elements),
        nan=int(acc.nans.sum()),
        inf=int(acc.infs.sum()),
        dead_channels=int((acc.positives == 0).sum()),
        saturated_channels=int(constant.sum()),
        histogram=_histogram(*acc.histogram()),
    )
    per_total = np.maximum(acc.count + acc.nans + acc.infs, 1)
    channels = ChannelStats(
        min=tuple(acc.minimum.tolist()),
        max=tuple(acc.maximum.tolist()),
        mean=tuple(acc.mean.tolist()),
        std=tuple(acc.std.tolist()),
        zero_fraction=tuple((acc.zeros / per_total).tolist()),
        top=_peaks(acc, shape),
    )
    return layer, channels


def _describe(module: nn.Module) -> str:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        kind = type(module).__name__
        parts = [f"{kind} {module.in_channels}→{module.out_channels}", "×".join(map(str, module.kernel_size))]
        if module.stride != (1, 1):
            parts.append(f"stride {'×'.join(map(str, module.stride))}")
        if module.groups != 1:
            parts.append("depthwise" if module.groups == module.in_channels else f"{module.groups} groups")
        return " · ".join(parts)
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, nn.MultiheadAttention):
        return f"MultiheadAttention · {module.num_heads} heads · weights per head, query × key"
    return type(module).__name__


def layer_sections(
    records: list[LayerRecord],
    layers: list[tuple[str, nn.Module]],
    config: ReportConfig,
    computed: Computed,
    ranking: str | None = None,
) -> tuple[LayerSection, ...]:
    """One section per record, in the order the layers first ran, the filters drawn as ``computed`` where a
    layer makes its weight (:mod:`.weights`); ``ranking`` names what the channels were ordered by when it was
    not ``config.order`` (the change between two checkpoints)."""
    if not records:
        raise ModelError("none of the selected layers ran during the forward pass; check --layers")
    first_conv = next((name for name, m in layers if isinstance(m, nn.Conv2d)), None)
    sections = []
    for record, slug in zip(records, layer_ids([r.name for r in records])):
        stats, channels = _stats(record.stats, record.shape)
        shown = len(record.channel_ids)
        tile_h, tile_w = _tile_size(record.shape)
        cols = grid_shape(shown)[1]
        maps = tuple(_grid(f, tile_h, tile_w, shown, cols, TARGET_TILE_PX["maps"]) for f in record.maps)
        tiles = filter_tiles(
            record.module, record.name == first_conv, config.max_filter_grid, computed.get(record.name)
        )
        notes = []
        ranked_by = ranking or (None if config.order == "index" else config.order)
        if record.kind == "maps" and shown < record.shape[0]:
            if ranked_by is None:
                which = f"0–{shown - 1} (--max-channels {shown}; --order keeps the highest by a statistic instead)"
            else:
                which = f"with the highest {ranked_by} (--max-channels {shown})"
            notes.append(f"showing {shown} of {record.shape[0]} channels, {which}")
        elif record.kind == "maps" and ranked_by:
            notes.append(f"channels ordered by {ranked_by}, highest first")
        if stats.nan or stats.inf:
            notes.append(f"{stats.nan} NaN and {stats.inf} infinite values (shown as the lowest colour)")
        sections.append(
            LayerSection(
                name=record.name,
                slug=slug,
                type=type(record.module).__name__,
                description=_describe(record.module),
                output_shape=record.shape,
                params=sum(p.numel() for p in record.module.parameters()),
                stats=stats,
                channels=channels,
                kind=record.kind,
                channel_ids=record.channel_ids if record.kind == "maps" else (),
                maps=maps,
                filters=_filter_view(tiles) if tiles else None,
                weight_histogram=_weight_histogram(record.module),
                notes=tuple(notes),
            )
        )
    return tuple(sections)
