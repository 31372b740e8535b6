"""Report → HTML: the page as a stream of text, with images inline (one file) or as links (a folder).

A scan written as a folder is several pages (:data:`INDEX`, then one per layer, named by
:func:`layer_pages`): the index holds everything but the channel cards, each layer's page its cards.

With :mod:`featviz_report.training.page`, the only module that uses Jinja2. Where the text goes is
:mod:`featviz_report.render.outputs`' job."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import math
from collections.abc import Callable, Iterator

import numpy as np
from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined
from jinja2.bccache import Bucket
from markupsafe import Markup, escape

from .._resources import templates_dir
from ..report_data import (
    CardImage,
    ChannelCard,
    ChannelStats,
    GraphBox,
    GraphPicture,
    Grid,
    Histogram,
    LayerSection,
    Png,
    Report,
    SourceImage,
)
from ..scan.crops import context_boxes
from .anchors import old_ids, page_names
from .built import anchors_of, built_from, built_row, card_tops_of, pattern_atlas
from .strict_json import finite_list, strict_json

__all__ = [
    "render_html",
    "html_size",
    "inline_size",
    "data_uri",
    "script_json",
    "environment",
    "style_hash",
    "card_tops",
    "source_image",
    "layer_pages",
    "redirect_html",
    "INDEX",
]

INDEX = "index.html"


def layer_pages(report: Report) -> dict[str, str]:
    """The file name of each layer's page in a scan's folder, by the layer's id (see :mod:`.anchors`)."""
    ids = [layer.slug for layer in report.layers]
    return dict(zip(ids, page_names(ids)))


def redirect_html(target: str) -> str:
    """A page that sends its reader on to ``target`` (a file name beside it), with or without script: a
    scan folder keeps one under each layer page's old name. The script carries the address's fragment
    (a channel's), which a refresh would drop."""
    href = escape(target)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; script-src {style_hash(_CARRY)}">'
        f'<meta http-equiv="refresh" content="0; url={href}"><meta name="robots" content="noindex">'
        f'<title>Moved</title></head><body><p>This layer\'s page is now <a href="{href}">{href}</a>.</p>'
        f"<script>{_CARRY}</script></body></html>\n"
    )


_CARRY = 'location.replace(document.querySelector("a").getAttribute("href") + location.hash);'


def _uri_prefix(png: Png) -> str:
    return f"data:{png.mime};base64,"


def inline_size(png: Png) -> int:
    """Bytes ``png`` takes inline in a single-file page."""
    return len(_uri_prefix(png)) + 4 * -(-png.size // 3)


def html_size(report: Report, page: str | None = None, link_size: int | None = None) -> int:
    """Bytes of the single-file page (or with ``page``, of that page of a folder, each image a link of
    ``link_size`` characters), without encoding any image (each is counted where it appears)."""
    images = 0

    def count(png: Png) -> Markup:
        nonlocal images
        images += inline_size(png) if link_size is None else link_size
        return Markup("")

    text = sum(len(chunk.encode("utf-8")) for chunk in render_html(report, count, link_size is not None, page))
    return text + images


def data_uri(png: Png) -> Markup:
    """The image inline; base64 needs no HTML escaping, and skipping it saves a pass over megabytes."""
    return Markup(_uri_prefix(png) + base64.b64encode(png.data).decode("ascii"))


def _fmt_num(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4g}"


class _BestEffortCache(FileSystemBytecodeCache):
    """Jinja2's bytecode cache, where a failure to read or write it only means compiling again."""

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, EOFError, ValueError):
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _bytecode_cache() -> FileSystemBytecodeCache | None:
    try:
        return _BestEffortCache()
    except (OSError, RuntimeError):  # no private folder can be made in the temp dir
        return None


@functools.cache
def environment() -> Environment:
    """One environment per process, so later reports reuse the compiled template; across processes,
    Jinja2's per-user bytecode cache (a private folder in the temp dir, keyed by the template's checksum)
    saves compiling it again (about 80 ms)."""
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        bytecode_cache=_bytecode_cache(),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["int"] = lambda n: f"{n:,}"
    env.filters["shape"] = lambda shape: "×".join(str(s) for s in shape)
    env.filters["pct"] = lambda x: f"{100 * x:.1f}%"
    env.filters["pick"] = lambda items, indices: [items[i] for i in indices]
    return env


def _histogram_svg(histogram: Histogram | None, label: str) -> Markup:
    """Bars as one inline SVG path (no style attributes, so the CSP stays strict)."""
    if histogram is None or not any(histogram.counts):
        return Markup("")
    top = max(histogram.counts)
    height = 24
    path = "".join(
        f"M{i} {height}V{height * (1 - c / top):.2f}H{i + 1}V{height}Z" for i, c in enumerate(histogram.counts) if c
    )
    bins = len(histogram.counts)
    return Markup(
        f'<figure class="hist"><svg viewBox="0 0 {bins} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(label)}: {bins} bins from {_fmt_num(histogram.lo)} to {_fmt_num(histogram.hi)}">'
        f'<path d="{path}"/></svg><figcaption><span>{_fmt_num(histogram.lo)}</span><span>{escape(label)}</span>'
        f"<span>{_fmt_num(histogram.hi)}</span></figcaption></figure>"
    )


def _graph_svg(picture: GraphPicture, label: str, markers: bool = False) -> Markup:
    """A laid-out drawing as inline SVG: frames per module, edges, and one box per call; a captured
    layer's box links to its section, a folded module's to its drawing. Only attributes and classes, no
    style: the CSP stays strict. The arrowhead is defined once (``markers``) and shared by every drawing."""
    defs = (
        '<defs><marker id="graph-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0L8,4L0,8z"/></marker></defs>'
        if markers
        else ""
    )
    parts = [
        f'<svg class="graph" viewBox="0 0 {picture.width} {picture.height}" width="{picture.width}" '
        f'height="{picture.height}" aria-label="{escape(label)}">{defs}<g class="frames">'
    ]
    for frame in picture.clusters:
        parts.append(
            f'<g class="frame d{min(frame.depth, 2)}"><rect x="{frame.left}" y="{frame.top}" width="{frame.width}" '
            f'height="{frame.height}" rx="6"/><text x="{frame.left + 6}" y="{frame.top + 12}">{escape(frame.name)}'
            "</text></g>"
        )
    parts.append('</g><g class="edges">')
    parts += [f'<path d="{path}" marker-end="url(#graph-arrow)"/>' for path in picture.edges]
    parts.append('</g><g class="nodes">')
    parts += [_graph_box(box) for box in picture.boxes]
    parts.append("</g></svg>")
    return Markup("".join(parts))


def _graph_box(box: GraphBox) -> str:
    classes = " ".join(
        c
        for c in (
            "node",
            box.kind,
            "layer" if box.slug else "",
            "merge" if box.merge else "",
            "flagged" if box.flags else "",
        )
        if c
    )
    shape = "×".join(map(str, box.shape))
    title = " · ".join(p for p in (box.name, box.type, shape, box.flags) if p)
    cx, cy = round(box.x + box.width / 2, 1), round(box.y + box.height / 2, 1)
    if box.kind == "op":
        outline = f'<ellipse cx="{cx}" cy="{cy}" rx="{box.width / 2:.1f}" ry="{box.height / 2:.1f}"/>'
    else:
        outline = f'<rect x="{box.x}" y="{box.y}" width="{box.width}" height="{box.height}" rx="4"/>'
    first = cy - 6 * (len(box.label) - 1) + 3.5
    text = "".join(
        f'<text x="{cx}" y="{first + 12 * i:.1f}" text-anchor="middle">{escape(line)}</text>'
        for i, line in enumerate(box.label)
    )
    inner = f"<title>{escape(title)}</title>{outline}{text}"
    if box.href:
        node = f' data-node="{escape(box.slug)}"' if box.slug else ""
        return f'<a href="{escape(box.href)}" class="{classes}"{node}>{inner}</a>'
    return f'<g class="{classes}">{inner}</g>'


def _grid_css(report: Report) -> str:
    """One rule per grid geometry in the page: where the lines between tiles fall."""
    geometries = {(g.cols, g.rows) for layer in report.layers for g in layer.maps if g}
    geometries |= {(layer.filters.grid.cols, layer.filters.grid.rows) for layer in report.layers if layer.filters}
    return "".join(
        f".g-{c}x{r}::after{{background-size:calc(100% / {c}) calc(100% / {r})}}\n" for c, r in sorted(geometries)
    )


def style_hash(text: str) -> str:
    """The CSP source that allows exactly ``text`` as an inline style or script."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def script_json(value: object) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` or line separators; NaN
    and ±Inf are ``null``."""
    text = strict_json(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def _before_data(channels: ChannelStats) -> dict[str, object]:
    """Checkpoint A's per-channel statistics, for the enlarged view of A's tiles in a comparison."""
    return {key: finite_list(getattr(channels, key)) for key in ("min", "max", "mean", "std")}


def _top_data(channels: ChannelStats, height: int, width: int) -> dict[str, object]:
    """Every channel's top samples for the enlarged view, as little-endian typed arrays in base64 (a
    resnet18 page's 19,200 entries: 1 MB and 45 ms as JSON lists, a few ms this way): ``ints``, per
    channel and rank, ``sample`` (-1: an empty slot), the map's ``row`` and ``col``, and where the
    receptive field is known its box ``x0 y0 x1 y1`` and the square shown around it ``top left side``;
    ``values``, the peaks (float32). ``k`` ranks, ``n`` ints each, of ``bytes`` bytes (2 where they fit)."""
    top = channels.top
    parts = [np.stack([top.sample, top.row, top.col], -1)]
    if top.box is not None:
        parts += [top.box, context_boxes(top.box, height, width)]
    ints = np.concatenate(parts, -1).transpose(1, 0, 2)  # channel × rank × n
    size = 2 if ints.size == 0 or -(2**15) <= ints.min() and ints.max() < 2**15 else 4
    return {
        "k": ints.shape[1],
        "n": ints.shape[2],
        "bytes": size,
        "ints": base64.b64encode(np.ascontiguousarray(ints, dtype=f"<i{size}").tobytes()).decode("ascii"),
        "values": base64.b64encode(np.ascontiguousarray(top.value.T, dtype="<f4").tobytes()).decode("ascii"),
    }


def _page_data(report: Report, layers: tuple[LayerSection, ...]) -> dict[str, object]:
    """What the page's script needs for the enlarged tile view: geometry and channel statistics (a
    scan's cards need only each layer's name and kind)."""
    height, width = report.input_shape[-2:]
    if report.dataset is not None:
        return {
            "samples": [],
            "input": [height, width],
            "layers": {layer.slug: {"name": layer.name, "vector": layer.kind == "vector"} for layer in layers},
        }
    return {
        "samples": [s.name for s in report.samples],
        "input": [height, width],
        "layers": {
            layer.slug: {
                "name": layer.name,
                "ids": list(layer.channel_ids),
                "vector": layer.kind == "vector",
                "min": finite_list(layer.channels.min),
                "max": finite_list(layer.channels.max),
                "mean": finite_list(layer.channels.mean),
                "std": finite_list(layer.channels.std),
                "zeros": finite_list(layer.channels.zero_fraction),
                "selectivity": np.round(layer.channels.selectivity, 3).tolist(),
                "flags": {c: flags for c in range(len(layer.channels.mean)) if (flags := layer.channels.flags(c))},
                "top": _top_data(layer.channels, height, width),
                "before": _before_data(layer.change.channels_before) if layer.change else None,
            }
            for layer in layers
        },
    }


def render_html(
    report: Report, src: Callable[[Png], Markup], folder: bool = False, page: str | None = None
) -> Iterator[str]:
    """The page as a stream of text chunks; ``src`` turns each image into its URL. ``page``: None for
    the whole report; for a scan written as a folder, :data:`INDEX` or a layer's slug (that layer's page)."""
    template_dir = templates_dir()
    css = (template_dir / "report.css").read_text(encoding="utf-8") + _grid_css(report)
    js = (template_dir / "report.js").read_text(encoding="utf-8")
    images = "'self'" if folder else "data:"
    csp = (
        f"default-src 'none'; img-src {images}; style-src {style_hash(css)}; script-src {style_hash(js)}; "
        "base-uri 'none'; form-action 'none'"
    )
    layers = report.layers if page in (None, INDEX) else tuple(layer for layer in report.layers if layer.slug == page)
    shown = {top.sample for layer in layers for card in layer.cards for top in card.tops} if page != INDEX else set()
    sources = report.dataset.sources if report.dataset else {}
    template = environment().get_template("report.html.j2")
    anchors = anchors_of(report)
    pages = layer_pages(report)
    return template.generate(
        report=report,
        layers=layers,
        page="layer" if page not in (None, INDEX) else "index" if page == INDEX else "all",
        layer_href=_layer_href(page, pages),
        layer_page=pages.__getitem__,
        old_id=old_ids([layer.name for layer in report.layers], list(pages)).get,
        sources=Markup("".join(source_image(s, sources[s], src) for s in sorted(shown) if s in sources)),
        card_tops=card_tops,
        src=src,
        css=Markup(css),
        js=Markup(js),
        csp=csp,
        data_json=Markup(script_json(_page_data(report, layers))),
        grid_class=_grid_class,
        histogram=_histogram_svg,
        graph_svg=_graph_svg,
        channel_anchors=_channel_anchors,
        built_from=functools.partial(built_from, src=src, shown=anchors),
        built_atlas=functools.partial(pattern_atlas, src=src),
        built_row=functools.partial(
            built_row, href=_layer_href(page, pages), tops=card_tops_of(report, set(sources) & shown), shown=anchors
        ),
    )


def _layer_href(page: str | None, pages: dict[str, str]) -> Callable[[str], str]:
    """A layer's link: its section on this page, or on a layer's page, the other layers' pages."""
    if page in (None, INDEX):
        return lambda slug: f"#layer-{slug}"
    return lambda slug: f"#layer-{slug}" if slug == page else f"{pages[slug]}#layer-{slug}"


def source_image(sample: int, source: SourceImage, src: Callable[[Png], Markup]) -> str:
    """A scan's top image, stored once, as an SVG ``<image>`` placed where it lies in input pixels: every
    crop of it is a ``<use>`` of this (see :func:`card_tops`)."""
    picture = source.picture
    return (
        f'<image id="src-{sample}" x="{source.left}" y="{source.top}" width="{source.width}" '
        f'height="{source.height}" preserveAspectRatio="none" href="{src(picture)}"/>'
    )


def card_tops(card: ChannelCard) -> Markup:
    """A scan card's top images, best first, as one string (a loop in the template would cost a chunk and
    an escape per crop): each a 64 px window (``viewBox``, input pixels) on its image, the receptive
    field a rectangle in the same pixels, so nothing is resampled twice or drawn off its place."""
    return Markup("".join(_crop_figure(rank, top) for rank, top in enumerate(card.tops, 1)))


def _crop_figure(rank: int, top: CardImage) -> str:
    y, x, side = top.crop
    value, name = _fmt_num(top.value), escape(top.file)
    field = ""
    if top.box is not None:
        x0, y0, x1, y1 = top.box
        field = f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"/>'
    return (
        f'<figure><button type="button" class="whole" aria-label="Top image {rank}, {name}, peak {value}: '
        f'show it whole"><svg viewBox="{x} {y} {side} {side}" aria-hidden="true"><use href="#src-{top.sample}"/>'
        f'{field}</svg></button><figcaption><span class="mono">{value}</span> '
        f'<span class="file" title="{name}">{name}</span></figcaption></figure>'
    )


def _channel_anchors(layer: LayerSection) -> Markup:
    """An empty element per shown channel with its address (``#layer-<id>-channel-<c>``), as one string:
    a loop in the template would cost a chunk and an escape per channel. A channel with a row in the layer's
    'built from' panel has its address there instead."""
    slug = escape(layer.slug)
    rows = set(layer.circuit.channels.tolist()) if layer.circuit is not None and not layer.cards else set()
    return Markup("".join(f'<span id="layer-{slug}-channel-{c}"></span>' for c in layer.channel_ids if c not in rows))


def _grid_class(grid: Grid) -> str:
    lined = " lined" if min(grid.tile_width, grid.tile_height) * grid.scale >= 8 else ""
    return f"grid g-{grid.cols}x{grid.rows}{lined}"
