"""A size budget for single-file pages: when every feature map would not fit, which ones stay.

Feature-map atlases are nearly all of a report's bytes. Over the budget, the page keeps the maps of the
most informative samples (those that most often appear among the channels' top activations, averaged
over layers; ties to the lower index), as many as fit in every layer. If not even one sample's maps fit,
that sample keeps its maps in the layers that still fit, taken in model order. Everything else on the page stays:
thumbnails, predictions, statistics, filters, the top samples of every channel. What was left out is
said on the page, in a note and in each left-out map's place. A scan's page has no maps: its top images
are fitted before it is written (:mod:`featviz_report.scan.budget`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..report_data import Grid, LayerSection, Report
from .html import html_size, inline_size

__all__ = ["fit_page"]


def fit_page(report: Report, max_bytes: int) -> tuple[Report, str | None]:
    """``report`` with as many feature maps as keep its single-file page within ``max_bytes``, and a
    one-line note when some were left out (``None`` when everything fits)."""
    total = html_size(report)
    if total <= max_bytes:
        return report, None
    if report.dataset is not None:  # a scan has no maps; its top images were fitted already (scan_budget)
        note = (
            f"the single-file page is {_megabytes(total)} MB, over --max-size {max_bytes / 1e6:g} MB, even with no "
            "more top images left out: its channel cards alone take that; --format dir writes a page per layer"
        )
        return dataclasses.replace(report, notes=(*report.notes, note[:1].upper() + note[1:] + ".")), note
    sizes = np.zeros((len(report.layers), len(report.samples)), dtype=np.int64)  # layers × samples
    for row, layer in zip(sizes, report.layers):
        row[: len(layer.maps)] = [_size(grid) for grid in layer.maps]
        if layer.change:  # a comparison: A's maps go with B's
            row[: len(layer.change.maps_before)] += [_size(grid) for grid in layer.change.maps_before]
    room = max_bytes - (total - int(sizes.sum()))
    ranked = _ranked_samples(report)
    count = int(np.searchsorted(sizes[:, ranked].sum(0).cumsum(), room, side="right"))
    while True:  # the notes about what is left out take room too: one sample fewer until it fits
        fitted, note = _fitted(report, _kept(sizes, ranked, count, room), ranked[:count], total, max_bytes)
        if not count or html_size(fitted) <= max_bytes:
            return fitted, note
        count -= 1


def _kept(sizes: np.ndarray, ranked: np.ndarray, count: int, room: int) -> np.ndarray:
    """Layers × samples: which maps stay, given how many of the ranked samples keep all of theirs."""
    keep = np.zeros_like(sizes, dtype=bool)
    if count:
        keep[:, ranked[:count]] = True
    elif room > 0 and len(ranked):
        best, left = ranked[0], room
        for index, size in enumerate(sizes[:, best]):
            keep[index, best] = size <= left
            left -= size if size <= left else 0
    return keep


def _fitted(report: Report, keep: np.ndarray, samples: np.ndarray, total: int, max_bytes: int) -> tuple[Report, str]:
    layers = tuple(_keep_maps(layer, row) for layer, row in zip(report.layers, keep))
    shown = _describe_kept(report, keep, samples)
    if not keep.any() and html_size(dataclasses.replace(report, layers=layers)) > max_bytes:
        shown += ", and even so the page is over the budget"
    note = (
        f"the single-file page would be {_megabytes(total)} MB, over --max-size {max_bytes / 1e6:g} MB: {shown}; "
        "--format dir writes every map (or raise --max-size)"
    )
    fitted = dataclasses.replace(report, layers=layers, notes=(*report.notes, note[:1].upper() + note[1:] + "."))
    return fitted, note


def _ranked_samples(report: Report) -> np.ndarray:
    """Sample indices, most informative first: the share of each layer's top-k slots a sample holds,
    summed over layers."""
    score = np.zeros(len(report.samples))
    for layer in report.layers:
        held = layer.channels.top.sample
        held = held[held >= 0]
        if held.size:
            score += np.bincount(held, minlength=len(report.samples))[: len(score)] / held.size
    return np.argsort(-score, kind="stable")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.0f}" if size >= 1e7 else f"{size / 1e6:.1f}"


def _size(grid: Grid | None) -> int:
    return inline_size(grid.image) if grid else 0


def _keep_maps(layer: LayerSection, keep: np.ndarray) -> LayerSection:
    if keep.all() or not layer.maps:
        return layer
    change = layer.change
    if change is not None:
        before = tuple(grid if kept else None for grid, kept in zip(change.maps_before, keep))
        change = dataclasses.replace(change, maps_before=before)
    maps = tuple(grid if kept else None for grid, kept in zip(layer.maps, keep))
    return dataclasses.replace(layer, maps=maps, change=change)


def _describe_kept(report: Report, keep: np.ndarray, samples: np.ndarray) -> str:
    total = len(report.samples)
    if len(samples):
        names = ", ".join(f"#{int(s)}" for s in sorted(samples)[:8]) + (" …" if len(samples) > 8 else "")
        return (
            f"feature maps are shown for {len(samples)} of {total} samples ({names}), "
            "those most often among the channels' top activations"
        )
    layers = int(keep.any(axis=1).sum())
    if not layers:
        return "no feature maps fit: only statistics, filters and samples are shown"
    best = int(np.flatnonzero(keep.any(axis=0))[0])
    return f"feature maps are shown for sample #{best} only, in {layers} of {len(report.layers)} layers"
