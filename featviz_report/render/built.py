"""A layer's 'built from' rows as HTML (see :mod:`featviz_report.circuits`), each built as one string: a loop in
the template would cost a chunk and an escape per input, and resnet18's page has about 46,000 of them.

In a report, the layer's panel has a row per shown channel at the channel's address (``#layer-<id>-channel-<c>``):
the channel, a strip of its inputs' weight patterns (one SVG window onto the layer's pattern atlas), then each
input as a link to that channel's row, with its signed strength. The enlarged channel view (``report.js``)
draws the same row from it, each input with its picture and its own pattern. A scan's card carries its row
itself, each input with its own pattern and its channel's best image."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

from ..report_data import CardImage, LayerCircuit, LayerSection, Png, Report

__all__ = ["built_from", "built_row", "card_tops_of", "pattern_atlas", "Anchors", "anchors_of"]

Anchors = dict[str, np.ndarray]  # per layer (slug), which channels have an address on the page (a mask by channel)


def anchors_of(report: Report) -> Anchors:
    """Which channels have an address (``#layer-<id>-channel-<c>``) in the report's pages: a map's shown
    channels, a scan's cards, a layer's 'built from' rows."""
    found = {}
    for layer in report.layers:
        channels = [card.channel for card in layer.cards] or list(layer.channel_ids)
        if layer.circuit is not None:
            channels += layer.circuit.channels.tolist()
        mask = np.zeros(max(channels, default=-1) + 1, dtype=bool)
        mask[channels] = True
        found[layer.slug] = mask
    return found


def _linked(circuit: LayerCircuit, shown: Anchors) -> np.ndarray:
    """Which of the circuit's inputs have an address on the page (``channels × top``)."""
    linked = np.zeros(circuit.source.shape, dtype=bool)
    for which, slug in enumerate(circuit.sources):
        mask = shown.get(slug, np.zeros(0, dtype=bool))
        rows, slots = np.nonzero(circuit.source == which)
        channels = circuit.channel[rows, slots]
        inside = channels < len(mask)
        linked[rows[inside], slots[inside]] = mask[channels[inside]]
    return linked


def _strength(value: float) -> str:
    return f"{value:+.3g}" if value == value else "–"  # NaN: A has no such input


@dataclass(frozen=True)
class _Rows:
    """One layer's inputs as Python lists, once: each row's entries are then formatted without numpy."""

    circuit: LayerCircuit
    links: list[str]  # per source, the start of a link to one of its channels (the rest: ``{channel}">``)
    marks: list[str]  # per source, what follows an input's channel: nothing for the first, then its letter
    source: list[list[int]]
    channel: list[list[int]]
    weight: list[list[float]]
    linked: list[list[bool]]
    plain: list[bool]  # rows whose every input is linked, in a report (no comparison): the fast path

    @classmethod
    def of(cls, circuit: LayerCircuit, href: Callable[[str], str], shown: Anchors) -> _Rows:
        linked = _linked(circuit, shown)
        every: list[bool] = np.all(linked | (circuit.source < 0), axis=1).tolist()
        plain = [bool(row) and circuit.weight_before is None for row in every]
        return cls(
            circuit,
            [f'<a href="{escape(href(slug))}-channel-' for slug in circuit.sources],
            ["", *(f"<sup>{chr(ord('a') + i)}</sup>" for i in range(1, len(circuit.sources)))],
            circuit.source.tolist(),
            circuit.channel.tolist(),
            circuit.weight.tolist(),
            linked.tolist(),
            plain,
        )

    def entries(self, index: int, extra: Callable[[int, int, int], str] | None = None) -> str:
        """The ``index``-th shown channel's inputs, strongest first, as links: the channel, the signed strength,
        in a comparison A's strength; ``extra(slot, source, channel)`` puts more inside each link (a scan's
        pictures). An input whose channel has no address on the page is plain text, with its layer and channel
        in ``data-at``."""
        links, marks = self.links, self.marks
        sources, channels, weights = self.source[index], self.channel[index], self.weight[index]
        if all(s < 0 for s in sources):  # a ReLU that never lets anything through on these samples, zero weights
            return NO_INPUT
        if extra is None and self.plain[index]:  # resnet18's page has 46,000 of these
            return "".join(
                [f'{links[s]}{c}">{c}{marks[s]} {w:+.3g}</a>' for s, c, w in zip(sources, channels, weights) if s >= 0]
            )
        before = self.circuit.weight_before
        parts = []
        for slot, (source, channel, weight) in enumerate(zip(sources, channels, weights)):
            if source < 0:
                continue
            was = "" if before is None else f' <span class="was">A {_strength(float(before[index, slot]))}</span>'
            inside = "" if extra is None else extra(slot, source, channel)
            text = f"{inside}{channel}{marks[source]} {_strength(weight)}{was}"
            if self.linked[index][slot]:
                parts.append(f'{links[source]}{channel}">{text}</a>')
            else:
                name = escape(self.circuit.sources[source])
                parts.append(f'<span class="off" data-at="{name} {channel}">{text}</span>')
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
    return Markup(f'{pattern_atlas(layer, src)}<ol class="built">{_report_rows(layer, shown)}</ol>')


# A page over its --max-size is rendered up to four times (the abandoned write, twice while fitting it, the
# write) with the same circuits: each layer's rows are made once (timm rexnet_100: 180,000 inputs, 15 MB).
_MADE: weakref.WeakKeyDictionary[LayerCircuit, dict[tuple[str, bytes], str]] = weakref.WeakKeyDictionary()


NO_INPUT = '<span class="none">no input with a strength other than 0 (on these samples, nothing gets through)</span>'


def _report_rows(layer: LayerSection, shown: Anchors) -> str:
    """A report's rows for ``layer``, each at its channel's address, made once per layer, slug and set of
    linked inputs."""
    circuit = layer.circuit
    assert circuit is not None
    key = (layer.slug, hashlib.blake2b(np.packbits(_linked(circuit, shown)).tobytes()).digest())
    made = _MADE.setdefault(circuit, {})
    if key not in made:
        slug = escape(layer.slug)
        found = _Rows.of(circuit, lambda name: f"#layer-{name}", shown)
        grid = circuit.patterns
        rows = []
        for index, channel in enumerate(circuit.channels.tolist()):
            strip = ""
            if grid is not None:
                strip = _window(
                    "strip", 0, index * grid.tile_height, grid.cols * grid.tile_width, grid.tile_height, f"cp-{slug}"
                )
            rows.append(f'<li id="layer-{slug}-channel-{channel}"><b>{channel}</b>{strip}{found.entries(index)}</li>')
        made[key] = "".join(rows)
    return made[key]


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

    entries = _Rows.of(circuit, href, shown).entries(index, pictures)
    return Markup(f'<p class="built-row"><b>Built from</b> {entries}</p>' if entries else "")
