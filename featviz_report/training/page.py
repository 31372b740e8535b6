"""A training run's site index → HTML, and both index files written (:func:`write_site`): per layer, trends over
the steps as inline SVG charts; the samples' predictions per step; links to every step's report and
comparison. No script, no images: the page works from ``file://`` and any static host, and every link is
relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from markupsafe import Markup, escape

from .._resources import templates_dir
from .._version import __version__
from ..errors import InputError
from ..render.html import environment, style_hash
from ..render.outputs import write_now
from ..render.strict_json import strict_json
from .index import SampleHistory, SiteStep, check_site, index_json, read_steps, sample_histories

__all__ = ["render_site", "line_chart", "write_site"]

WIDTH, HEIGHT, PAD = 240, 64, 4


def _fmt(value: float) -> str:
    size = abs(value)
    return f"{value:.2e}" if size and (size >= 1e5 or size < 1e-3) else f"{value:.4g}"


def line_chart(
    steps: Sequence[int], values: Sequence[float | None], label: str, band: Sequence[float | None] | None = None
) -> Markup:
    """``values`` over ``steps`` as an inline SVG line (with a ± ``band`` when given), its range written
    beside it; a step without a value is a gap. Empty when no step has a value."""
    spreads = band or [0.0] * len(values)
    kept = [(s, v, b or 0.0) for s, v, b in zip(steps, values, spreads) if v is not None and math.isfinite(v)]
    if not kept:
        return Markup(f'<p class="none">{escape(label)}: no values</p>')
    points = [(s, v) for s, v, _ in kept]
    lows = [v - b for _, v, b in kept]
    highs = [v + b for _, v, b in kept]
    lo, hi = min(lows), max(highs)
    shown = f"{_fmt(lo)} … {_fmt(hi)}" if lo != hi else f"{_fmt(lo)} throughout"
    lo, hi = (lo - 1, hi + 1) if lo == hi else (lo, hi)
    first, last = steps[0], steps[-1]

    def x(step: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * ((step - first) / (last - first) if last != first else 0.5)

    def y(value: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value - lo) / (hi - lo)

    line = " ".join(f"{'M' if i == 0 else 'L'}{x(s):.1f},{y(v):.1f}" for i, (s, v) in enumerate(points))
    area = ""
    if band is not None:
        upper = " ".join(f"{x(s):.1f},{y(h):.1f}" for (s, _), h in zip(points, highs))
        lower = " ".join(f"{x(s):.1f},{y(low):.1f}" for (s, _), low in reversed(list(zip(points, lows))))
        area = f'<polygon class="band" points="{upper} {lower}"/>'
    dots = "".join(
        f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2"><title>step {s}: {_fmt(v)}</title></circle>' for s, v in points
    )
    summary = (
        f"{label}: from {_fmt(points[0][1])} at step {points[0][0]} to {_fmt(points[-1][1])} at step {points[-1][0]}"
    )
    return Markup(
        f'<figure class="chart"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(summary)}">'
        f'{area}<path d="{line}"/>{dots}</svg>'
        f'<figcaption><span>{escape(label)}</span><span class="range">{shown}</span></figcaption>'
        "</figure>"
    )


def render_site(steps: list[SiteStep], histories: list[SampleHistory]) -> str:
    """The index page of a site of ``steps``."""
    css = (templates_dir() / "site.css").read_text(encoding="utf-8")
    csp = f"default-src 'none'; style-src {style_hash(css)}; base-uri 'none'; form-action 'none'"
    layer_names = list(dict.fromkeys(name for step in steps for name in step.layers))
    numbers = [step.step for step in steps]

    def series(layer: str, key: str) -> list[float | None]:
        values = [step.layers.get(layer, {}).get(key) for step in steps]  # finite numbers or None (site._number)
        return [None if v is None else float(v) for v in values]

    return (
        environment()
        .get_template("site.html.j2")
        .render(
            steps=steps,
            layers=layer_names,
            histories=histories,
            numbers=numbers,
            series=series,
            chart=line_chart,
            css=Markup(css),
            csp=csp,
            version=__version__,
        )
    )


def write_site(site: Path) -> list[SiteStep]:
    """(Re)write ``site``'s ``index.json`` and ``index.html`` from its step reports; each file is written
    to a temporary name and renamed."""
    check_site(site)
    steps = read_steps(site)
    if not steps:
        raise InputError(f"no step reports (a page with its featviz-report JSON sidecar) in {str(site)!r}")
    text = strict_json(index_json(steps), indent=1).encode("utf-8")
    page = render_site(steps, sample_histories(steps)).encode("utf-8")  # both made before either is written
    write_now(site / "index.json", text)
    write_now(site / "index.html", page)
    return steps
