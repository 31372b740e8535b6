"""How many top images a scan's pages show: a page opens in about a second, whatever the dataset.

A scan keeps ``--top-k`` images per channel; a page shows them as crops, each a few hundred bytes of markup
and a window on its image (stored once, :mod:`featviz_report.scan.sources`). What a page costs Chromium
grows with the crops it shows and, in a large dataset, with the distinct images they come from. So a page
shows at most :data:`PAGE_CROPS` crops, a KB of inline pictures counting as :data:`CROPS_PER_KB` of them;
a one-file page stays within :data:`PAGE_BYTES` and ``--max-size`` (the images inline), a layer's page in
a folder within :data:`LAYER_PAGE_BYTES` (its images are files).

Over that, ranks go before layers: every channel keeps its best image before any keeps its second, and
within a rank the layers come in model order, so the page shows each channel's top ``r`` images and the
first layers' channels one more. Each card says how many of its images it leaves out, and the page's
note, its layers' notes and one warning line say what was left out and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from markupsafe import Markup

from ..config import ReportConfig
from ..render.html import card_tops, html_size, inline_size, source_image
from ..report_data import ChannelCard, LayerSection, Report, SourceImage
from ..runtime.progress import Progress
from .sources import with_sources

__all__ = ["PAGE_CROPS", "CROPS_PER_KB", "PAGE_BYTES", "LAYER_PAGE_BYTES", "fit_scan", "LINK_SIZE"]

# Chromium's DOMContentLoaded on a one-file page (2 cores, quiet): about 0.45 s for resnet50's 3,456 cards,
# 40 µs a crop (8 photos: 0.81 s at 8,192 crops, 0.98 s at 12,288, 1.17 s at 16,384) and 0.085-0.12 ms a KB of
# inline pictures (decoding their data URLs: 300 photos' 2.1 MB took 0.18 s more than 8 photos' 0.1 MB).
PAGE_CROPS = 9_000  # with the cards, resnet50 pages open in 0.7-0.9 s on a quiet machine
CROPS_PER_KB = 2  # a KB of inline pictures costs the page what 2 crops do (0.085 ms for photos)
PAGE_BYTES = 20_000_000  # a one-file page, whatever --max-size allows
LAYER_PAGE_BYTES = 8_000_000
OPENS = "which Chromium opens in about a second"
LINK_SIZE = len("img/0123456789abcdef0123.webp")  # a folder's image link (outputs.IMAGE_DIR, hash, suffix)


@dataclasses.dataclass(frozen=True)
class _Cut:
    """What a page leaves out: ``shown[i]`` ranks of layer ``i`` (of ``full[i]``), and why."""

    shown: list[int]
    full: list[int]
    reason: str


def fit_scan(
    report: Report,
    config: ReportConfig,
    writes_page: bool,
    pixels: Callable[[int], np.ndarray | None],
    progress: Progress,
) -> Report:
    """``report`` with as many top images per card as its page (one file) or pages (a folder) allow,
    its pictures stored again for what is left, and the notes that say what was left out."""
    if not writes_page or report.dataset is None:
        return report
    full = [max((len(card.tops) for card in layer.cards), default=0) for layer in report.layers]
    sources = report.dataset.sources
    max_bytes = min(PAGE_BYTES, int(config.max_size * 1e6) if config.max_size else PAGE_BYTES)
    if config.format == "dir":
        cut = _cut_pages(report, full)
    else:
        cut = _cut_page(report, sources, full, max_bytes)
    if cut.shown == full:
        return report
    fitted = with_sources(_shown(report, cut.shown), pixels, progress, sources)
    if config.format == "html":
        while html_size(fitted) > max_bytes and any(cut.shown):  # stored again, rarely larger
            last = max(i for i, r in enumerate(cut.shown) if r == max(cut.shown))
            cut = dataclasses.replace(cut, shown=[r - (i == last) for i, r in enumerate(cut.shown)])
            fitted = with_sources(_shown(report, cut.shown), pixels, progress, sources)
    note = _note(report, cut, config)
    progress.warn(note)
    layers = tuple(
        dataclasses.replace(layer, notes=(*layer.notes, _layer_note(shown, whole, config))) if shown < whole else layer
        for layer, shown, whole in zip(fitted.layers, cut.shown, cut.full)
    )
    return dataclasses.replace(fitted, layers=layers, notes=(*fitted.notes, note[:1].upper() + note[1:] + "."))


def _cut_page(report: Report, sources: dict[int, SourceImage], full: list[int], max_bytes: int) -> _Cut:
    """The one-file page: ranks layer by layer until :data:`PAGE_CROPS` or ``max_bytes`` would be passed."""
    shown = [0] * len(full)
    size = html_size(_shown(report, shown))
    crops, pictures, seen = 0, 0, set()
    for rank in range(max(full, default=0)):
        for index, layer in enumerate(report.layers):
            if rank >= full[index]:
                continue
            tops = [card.tops[rank] for card in layer.cards if len(card.tops) > rank]
            new = {top.sample for top in tops if top.sample not in seen and top.sample in sources}
            markup = sum(len(_crop_markup(card, rank)) for card in layer.cards if len(card.tops) > rank)
            inline = sum(_inline_cost(s, sources[s]) for s in new)
            cost = markup + inline
            if crops + len(tops) + CROPS_PER_KB * (pictures + inline) / 1000 > PAGE_CROPS:
                return _Cut(
                    shown, full, f"its budget of {PAGE_CROPS:,} crops ({CROPS_PER_KB} a KB of pictures), {OPENS}"
                )
            if size + cost > max_bytes:
                limit = "--max-size" if max_bytes < PAGE_BYTES else "its budget of"
                return _Cut(shown, full, f"{limit} {max_bytes / 1e6:g} MB")
            shown[index], crops, pictures, size = rank + 1, crops + len(tops), pictures + inline, size + cost
            seen |= new
    return _Cut(shown, full, "")


def _cut_pages(report: Report, full: list[int]) -> _Cut:
    """A folder: each layer's page on its own, ranks until :data:`PAGE_CROPS` or
    :data:`LAYER_PAGE_BYTES` would be passed (its images are files: only their links count)."""
    shown = list(full)
    for index, layer in enumerate(report.layers):
        cards = len(layer.cards)
        if cards * full[index] <= PAGE_CROPS and _page_size(report, layer) <= LAYER_PAGE_BYTES:
            continue
        shown[index] = min(full[index], PAGE_CROPS // max(1, cards))
        while shown[index] and _page_size(_shown(report, _only(shown, index)), layer) > LAYER_PAGE_BYTES:
            shown[index] -= 1
    why = f"{PAGE_CROPS:,} crops and {LAYER_PAGE_BYTES / 1e6:g} MB"
    return _Cut(shown, full, why)


def _only(shown: list[int], index: int) -> list[int]:
    """``shown`` for the one layer ``index`` (the others' ranks do not matter on its page)."""
    return [r if i == index else 0 for i, r in enumerate(shown)]


def _page_size(report: Report, layer: LayerSection) -> int:
    return html_size(report, page=layer.slug, link_size=LINK_SIZE)


def _inline_cost(sample: int, source: SourceImage) -> int:
    """Bytes a picture takes in a one-file page: its ``<image>`` and its data."""
    return len(source_image(sample, source, lambda png: Markup(""))) + inline_size(source.picture)


def _crop_markup(card: ChannelCard, rank: int) -> str:
    """The markup of ``card``'s crop at ``rank`` on the page (what :func:`~featviz_report.render.html.card_tops`
    writes)."""
    return card_tops(dataclasses.replace(card, tops=card.tops[rank : rank + 1]))


def _shown(report: Report, shown: Sequence[int]) -> Report:
    """``report`` whose cards in layer ``i`` show their top ``shown[i]`` images; each card counts the rest."""
    layers = []
    for layer, ranks in zip(report.layers, shown):
        cards = tuple(
            dataclasses.replace(card, tops=card.tops[:ranks], left_out=card.left_out + max(0, len(card.tops) - ranks))
            for card in layer.cards
        )
        layers.append(dataclasses.replace(layer, cards=cards))
    return dataclasses.replace(report, layers=tuple(layers))


def _note(report: Report, cut: _Cut, config: ReportConfig) -> str:
    """One line, in a scan's words: what each channel shows, of what the scan kept, and why."""
    kept = max(cut.full)
    fewest = min(s for s, f in zip(cut.shown, cut.full) if s < f)  # the layers before the cut show one more
    if config.format == "dir":
        cut_layers = [layer.name for layer, s, f in zip(report.layers, cut.shown, cut.full) if s < f]
        most = max(s for s, f in zip(cut.shown, cut.full) if s < f)
        top = f"{fewest}" if most == fewest else f"{fewest} to {most}"
        return (
            f"the pages of {_names(cut_layers)} show each channel's top {top} of its {kept} top images, "
            f"to stay within a layer page's budget of {cut.reason}; --top-k sets how many the scan keeps"
        )
    more = [layer.name for layer, s in zip(report.layers, cut.shown) if s == fewest + 1]
    if not more:
        shows = f"each channel's top {fewest} of its {kept} top images" if fewest else "no top images"
    elif fewest:
        shows = f"each channel's top {fewest} of its {kept} top images, and {fewest + 1} in the first {_names(more)}"
    else:
        shows = f"the top image of each channel in the first {_names(more)} only, of {kept}"
    return f"this one-file page shows {shows}, to stay within {cut.reason}; --format dir shows all, a page per layer"


def _layer_note(shown: int, full: int, config: ReportConfig) -> str:
    where = "this layer's page" if config.format == "dir" else "this one-file page"
    return f"Each channel shows its top {shown} of {full} top images here, to keep {where} within its budget."


def _names(names: list[str]) -> str:
    """Layers for a note: named when few, else how many, the first and the last."""
    if len(names) <= 3:
        return ("layer " if len(names) == 1 else "layers ") + ", ".join(names)
    return f"{len(names)} layers ({names[0]} … {names[-1]})"
