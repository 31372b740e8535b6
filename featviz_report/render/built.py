"""A layer's 'built from' rows as HTML (see :mod:`featviz_report.circuits`), each built as one string: a loop in
the template would cost a chunk and an escape per input, and resnet18's page has about 46,000 of them.

In a report, the layer's panel has a row per shown channel at the channel's address (``#layer-<id>-channel-<c>``):
the channel, a strip of its inputs' weight patterns (one SVG window onto the layer's pattern atlas), then each
input as a link to that channel's row, with its signed strength. The enlarged channel view (``report.js``)
draws the same row from it, each input with its picture and its own pattern. A scan's card carries its row
itself, each input with its own pattern and its channel's best image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from markupsafe import Markup, escape

from ..report_data import CardImage, LayerCircuit, LayerSection, Png, Report

__all__ = ["built_from", "built_row", "card_tops_of", "pattern_atlas", "Anchors", "anchors_of"]

Anchors = Callable[[str, int], bool]  # whether a layer's channel (by slug) has an address on the page


def anchors_of(report: Report) -> Anchors:
    """Which channels have an address (``#layer-<id>-channel-<c>``) in the report's pages: a map's shown
    channels, a scan's cards, a layer's 'built from' rows."""
    found = set()
    for layer in report.layers:
        channels = {card.channel for card in layer.cards} or set(layer.channel_ids)
        if layer.circuit is not None:
            channels |= set(layer.circuit.channels.tolist())
        found |= {(layer.slug, channel) for channel in channels}
    return lambda slug, channel: (slug, channel) in found


def _strength(value: float) -> str:
    return f"{value:+.3g}" if value == value else "–"  # NaN: A has no such input


def _links(circuit: LayerCircuit, href: Callable[[str], str]) -> list[str]:
    """Per source, the start of a link to one of its channels (the rest: ``{channel}">``)."""
    return [f'<a href="{escape(href(slug))}-channel-' for slug in circuit.sources]


def _marks(circuit: LayerCircuit) -> list[str]:
    """Per source, what follows an input's channel: nothing for the first, then its letter (b, c, …), as the
    panel's legend says."""
    return ["", *(f"<sup>{chr(ord('a') + i)}</sup>" for i in range(1, len(circuit.sources)))]


def _entries(
    circuit: LayerCircuit,
    index: int,
    links: list[str],
    marks: list[str],
    shown: Anchors,
    extra: Callable[[int, int, int], str] | None = None,
) -> str:
    """The ``index``-th shown channel's inputs, strongest first, as links: the channel, the signed strength, in
    a comparison A's strength; ``extra(slot, source, channel)`` puts more inside each link (a scan's pictures).
    An input whose channel has no address on the page (not among its layer's shown channels) is plain text."""
    sources, channels, weights = (a[index].tolist() for a in (circuit.source, circuit.channel, circuit.weight))
    names = circuit.sources
    if extra is None and circuit.weight_before is None and all(shown(names[s], c) for s, c in zip(sources, channels)):
        # a report's panel, every input on the page: resnet18's has 46,000 of these
        return "".join(
            [f'{links[s]}{c}">{c}{marks[s]} {w:+.3g}</a>' for s, c, w in zip(sources, channels, weights) if s >= 0]
        )
    before = circuit.weight_before[index].tolist() if circuit.weight_before is not None else None
    parts = []
    for slot, (source, channel, weight) in enumerate(zip(sources, channels, weights)):
        if source < 0:
            continue
        was = "" if before is None else f' <span class="was">A {_strength(before[slot])}</span>'
        inside = "" if extra is None else extra(slot, source, channel)
        text = f"{inside}{channel}{marks[source]} {_strength(weight)}{was}"
        if shown(names[source], channel):
            parts.append(f'{links[source]}{channel}">{text}</a>')
        else:
            parts.append(f'<span class="off" data-at="{escape(names[source])} {channel}">{text}</span>')
    return "".join(parts)


def _window(kind: str, x: int, y: int, width: int, height: int, image: str) -> str:
    """An SVG window (``viewBox``, in the pixels of ``image``) onto an image the page stores once."""
    return f'<svg class="{kind}" viewBox="{x} {y} {width} {height}" aria-hidden="true"><use href="#{image}"/></svg>'


def pattern_atlas(layer: LayerSection, src: Callable[[Png], Markup]) -> Markup:
    """The layer's pattern atlas, stored once as an SVG ``<image>`` that every pattern is a window on."""
    grid = layer.circuit.patterns if layer.circuit is not None else None
    if grid is None:
        return Markup("")
    return Markup(
        f'<svg class="sources" aria-hidden="true" focusable="false"><defs><image id="cp-{escape(layer.slug)}" '
        f'width="{grid.image.width}" height="{grid.image.height}" preserveAspectRatio="none" '
        f'href="{src(grid.image)}"/></defs></svg>'
    )


def built_from(layer: LayerSection, src: Callable[[Png], Markup], shown: Anchors) -> Markup:
    """A report's 'built from' panel body: the pattern atlas, then a row per shown channel."""
    circuit = layer.circuit
    assert circuit is not None
    slug = escape(layer.slug)
    links, marks = _links(circuit, lambda name: f"#layer-{name}"), _marks(circuit)
    grid = circuit.patterns
    rows = []
    for index, channel in enumerate(circuit.channels.tolist()):
        strip = ""
        if grid is not None:
            strip = _window(
                "strip", 0, index * grid.tile_height, grid.cols * grid.tile_width, grid.tile_height, f"cp-{slug}"
            )
        entries = _entries(circuit, index, links, marks, shown)
        rows.append(f'<li id="layer-{slug}-channel-{channel}"><b>{channel}</b>{strip}{entries}</li>')
    return Markup(f'{pattern_atlas(layer, src)}<ol class="built">{"".join(rows)}</ol>')


def card_tops_of(report: Report, stored: set[int]) -> dict[tuple[str, int], CardImage]:
    """A scan's best image of each channel with a card, where the page stores that image."""
    return {
        (layer.slug, card.channel): card.tops[0]
        for layer in report.layers
        for card in layer.cards
        if card.tops and card.tops[0].sample in stored
    }


def built_row(
    layer: LayerSection,
    channel: int,
    href: Callable[[str], str],
    tops: dict[tuple[str, int], CardImage],
    shown: Anchors,
) -> Markup:
    """A scan card's 'built from' row: each input with the input channel's best image (cut around its peak,
    where the page stores that image) and its weight's pattern, linked to its card (``href``: a layer's
    address, on this page or its own)."""
    circuit = layer.circuit
    assert circuit is not None
    where = np.flatnonzero(circuit.channels == channel)
    if not where.size:
        return Markup("")
    index, grid, slug = int(where[0]), circuit.patterns, escape(layer.slug)

    def pictures(slot: int, source: int, input_channel: int) -> str:
        top = tops.get((circuit.sources[source], input_channel))
        crop = ""
        if top is not None:
            y, x, side = top.crop
            crop = _window("crop", x, y, side, side, f"src-{top.sample}")
        if grid is None:
            return crop
        x, y = slot * grid.tile_width, index * grid.tile_height
        return crop + _window("pattern", x, y, grid.tile_width, grid.tile_height, f"cp-{slug}")

    entries = _entries(circuit, index, _links(circuit, href), _marks(circuit), shown, pictures)
    return Markup(f'<p class="built-row"><b>Built from</b> {entries}</p>' if entries else "")
