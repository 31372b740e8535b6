"""A scan page's pictures: each top image stored once, for every crop of it the page shows.

A card's crop is not an image of its own but a window on its source: the page holds each top image once
(:class:`~featviz_report.report_data.SourceImage`) and shows every crop as an SVG viewport of it in input
pixels, the receptive field drawn over it as a rectangle (see :func:`featviz_report.render.html.crop_figure`).
What is stored of an image is the bounding box of the crops shown of it, or the whole image once that box
covers :data:`WHOLE_SHARE` of it (so a click shows it whole for at most twice the pixels; the one crop of an
image that appears once is a 64 px square), at the resolution
the most enlarged of those crops is shown at (``CROP_PX`` over the crop's side, at most one stored pixel
per input pixel): a crop is never stored larger than it is shown.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from ..render.encode import photo
from ..report_data import CardImage, Png, Report, SourceImage
from ..runtime.progress import Progress
from ..runtime.threads import allowed_cores
from .crops import CROP_PX

__all__ = ["Region", "WHOLE_SHARE", "source_regions", "shown_crops", "encode_sources", "with_sources"]

WHOLE_SHARE = 0.5


class Region(NamedTuple):
    """What to store of one image: a box in input pixels and the stored picture's size."""

    left: int
    top: int
    width: int
    height: int
    stored_width: int
    stored_height: int


def shown_crops(report: Report) -> Iterable[tuple[int, tuple[int, int, int]]]:
    """(image index, crop square (top, left, side)) of every top image the report's cards show."""
    for layer in report.layers:
        for card in layer.cards:
            for top in card.tops:
                yield top.sample, top.crop


def source_regions(crops: Iterable[tuple[int, tuple[int, int, int]]], height: int, width: int) -> dict[int, Region]:
    """Per image (``height``×``width`` input pixels), the box its crops cover (the whole image when that is
    :data:`WHOLE_SHARE` of it) and the size that shows its smallest crop at ``CROP_PX``."""
    boxes: dict[int, tuple[int, int, int, int, int]] = {}  # x0, y0, x1, y1, smallest side
    for sample, (top, left, side) in crops:
        x0, y0, x1, y1, smallest = boxes.get(sample, (left, top, left + side, top + side, side))
        boxes[sample] = (min(x0, left), min(y0, top), max(x1, left + side), max(y1, top + side), min(smallest, side))
    regions = {}
    for sample, (x0, y0, x1, y1, smallest) in sorted(boxes.items()):
        if (x1 - x0) * (y1 - y0) >= WHOLE_SHARE * height * width:
            x0, y0, x1, y1 = 0, 0, width, height
        scale = min(1.0, CROP_PX / max(1, smallest))
        w, h = x1 - x0, y1 - y0
        regions[sample] = Region(x0, y0, w, h, max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
    return regions


def encode_sources(
    regions: dict[int, Region], pixels: Callable[[int], np.ndarray | None], progress: Progress
) -> dict[int, SourceImage]:
    """Each region's picture (:func:`featviz_report.render.encode.photo`), in a thread pool; an image that can
    no longer be read is left out (its crops show nothing)."""

    def one(item: tuple[int, Region]) -> tuple[int, SourceImage | None]:
        sample, region = item
        image = pixels(sample)
        if image is None:
            return sample, None
        part = image[region.top : region.top + region.height, region.left : region.left + region.width]
        data, mime = photo(part, region.stored_width, region.stored_height)
        picture = Png(data, region.stored_width, region.stored_height, mime)
        return sample, SourceImage(picture, region.left, region.top, region.width, region.height)

    sources = {}
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=allowed_cores(), thread_name_prefix="photo") as pool:
        for done, (sample, source) in enumerate(pool.map(one, regions.items()), 1):
            if source is not None:
                sources[sample] = source
            progress.rate("images", done, len(regions), time.monotonic() - start)
    return sources


def with_sources(
    report: Report,
    pixels: Callable[[int], np.ndarray | None],
    progress: Progress,
    known: dict[int, SourceImage] | None = None,
) -> Report:
    """``report`` whose scan stores exactly the pictures its cards' crops need. ``known`` pictures are
    reused where their region is the one needed (after a budget left some crops out, most are)."""
    dataset = report.dataset
    if dataset is None:
        return report
    regions = source_regions(shown_crops(report), *report.input_shape[-2:])
    known = known or {}
    reused = {s: known[s] for s, r in regions.items() if s in known and _region_of(known[s]) == r}
    encoded = encode_sources({s: r for s, r in regions.items() if s not in reused}, pixels, progress)
    sources = {s: reused.get(s) or encoded[s] for s in regions if s in reused or s in encoded}
    if len(sources) < len(regions):  # changed since the scan: its crops go
        report = _keep_tops(report, lambda top: top.sample in sources)
    return dataclasses.replace(report, dataset=dataclasses.replace(dataset, sources=sources))


def _keep_tops(report: Report, keep: Callable[[CardImage], bool]) -> Report:
    layers = tuple(
        dataclasses.replace(
            layer,
            cards=tuple(dataclasses.replace(c, tops=tuple(t for t in c.tops if keep(t))) for c in layer.cards),
        )
        for layer in report.layers
    )
    return dataclasses.replace(report, layers=layers)


def _region_of(source: SourceImage) -> Region:
    picture = source.picture
    return Region(source.left, source.top, source.width, source.height, picture.width, picture.height)
