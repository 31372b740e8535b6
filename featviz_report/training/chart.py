"""Line charts of a training run's statistics over its steps, as static inline SVG: no script and no style
attributes (the page's CSP allows its own stylesheet only, which colours every part by its class).

The axes:

- **x, the steps**: one even slot per recorded step, each labelled with its true step number (a rank axis).
  A run is recorded at steps its author picks: every 5 epochs (even), 0, 1, 2, 5, 10, 20, 40 (about doubling,
  as the demo's), or whenever a checkpoint was kept. Placed by their number, the steps of a doubling run crowd
  into the left edge; a log axis spreads those but crowds an even run (0, 5, …, 100) into the right edge and
  has no place for step 0. Even slots suit all three, are the linear axis itself when the steps are even,
  and line up with the predictions table, one column per step. What they give up: a slope is a change per
  recorded step, not per training step; the labels say which steps these are.
- **y, the values**: round ticks, 1, 2 or 5 × 10ⁿ apart, about four, from one at or below the lowest value to
  one at or above the highest; whole numbers for counts; none below 0 for a measure that cannot be negative.

Every point keeps its value as a hover title; the ``aria-label`` says where each series starts and ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from markupsafe import Markup, escape

__all__ = ["Series", "line_chart", "step_labels", "tick_label", "value_ticks"]

WIDTH, HEIGHT = 272, 130  # SVG units are CSS pixels: site.css shows a chart at this size
TOP, BOTTOM, INSET = 6, 22, 6  # margins above and below the plot, and its inner padding at both ends
CHAR = 6.2  # width of one character of a 10 px tick label (tabular digits), for the room labels need
STEP_WORD = "step"  # written under the value labels, beside the step labels


@dataclass(frozen=True)
class Series:
    """One run's values of a measure at the chart's steps (``None``: none at that step), optionally with a ±
    ``band`` around them (drawn, and in the hover titles)."""

    run: str
    values: Sequence[float | None]
    band: Sequence[float | None] | None = None


def value_ticks(lo: float, hi: float, *, whole: bool = False, nonnegative: bool = False) -> list[float]:
    """About four round ticks, 1, 2 or 5 × 10ⁿ apart, from one at or below ``lo`` to one at or above ``hi``:
    the axis's ends. A flat series (``lo == hi`` to six digits) gets an axis around its value; ``whole``:
    ticks are whole numbers (counts); ``nonnegative``: none below 0."""
    if hi - lo <= 1e-6 * max(abs(lo), abs(hi)):
        pad = abs(lo) / 10 or 1.0
        lo, hi = lo - pad, hi + pad
    if nonnegative:
        lo = max(lo, 0.0)
    raw = (hi - lo) / 4
    power = 10.0 ** math.floor(math.log10(raw))
    spacing = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if whole:
        spacing = max(spacing, 1.0)
    return [k * spacing for k in range(math.floor(lo / spacing), math.ceil(hi / spacing) + 1)]


def tick_label(value: float, spacing: float) -> str:
    """``value``, a multiple of ``spacing``, with the digits that tell ticks ``spacing`` apart and no more:
    ``0.05``, ``-15``, ``2e-5``."""
    if abs(value) < spacing / 2:
        return "0"
    exponent = math.floor(math.log10(spacing) + 1e-6)  # spacing is 1, 2 or 5 × 10ⁿ, up to rounding
    if exponent >= -4 and abs(value) < 1e6:
        return f"{value:.{max(0, -exponent)}f}"
    mantissa, power = f"{value:.{max(0, math.floor(math.log10(abs(value))) - exponent)}e}".split("e")
    return f"{mantissa}e{int(power)}"


def _nice_stride(least: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, … that is at least ``least``."""
    power = 1
    while True:
        for m in (1, 2, 5):
            if m * power >= least:
                return m * power
        power *= 10


def step_labels(count: int, widest: float, room: float) -> list[int]:
    """Which of ``count`` evenly spaced steps over ``room`` pixels get a label ``widest`` pixels wide (gap
    included) without overlapping: every k-th from the first, k 1, 2 or 5 × 10ⁿ (so an even run's labels are
    round: 0, 100, 200), and the last (in place of the one before it when both do not fit)."""
    if count == 1:
        return [0]
    least = max(1, math.ceil(widest / (room / (count - 1))))
    shown = list(range(0, count, _nice_stride(least)))
    if shown[-1] != count - 1:
        if len(shown) > 1 and count - 1 - shown[-1] < least:
            shown.pop()
        if count - 1 - shown[-1] >= least:
            shown.append(count - 1)
    return shown


def _fmt(value: float) -> str:
    size = abs(value)
    return f"{value:.2e}" if size and (size >= 1e5 or size < 1e-3) else f"{value:.4g}"


@dataclass(frozen=True)
class _Frame:
    """Where the plot lies in a chart (``left`` and ``right``: the margins its labels need), and where the
    ``index``-th of ``count`` steps and a value on the axis of ``ticks`` go."""

    left: int
    right: int
    count: int
    ticks: list[float]

    def x(self, index: int) -> float:
        start, end = self.left + INSET, WIDTH - self.right - INSET
        return start + (end - start) * (index / (self.count - 1) if self.count > 1 else 0.5)

    def y(self, value: float) -> float:
        low, high = self.ticks[0], self.ticks[-1]
        return HEIGHT - BOTTOM - (HEIGHT - BOTTOM - TOP) * (value - low) / (high - low)


def _value_axis(frame: _Frame, texts: list[str]) -> str:
    """A grid line and a label at each value tick."""
    return "".join(
        f'<line x1="{frame.left}" x2="{WIDTH - frame.right}" y1="{frame.y(t):.1f}" y2="{frame.y(t):.1f}"/>'
        f'<text x="{frame.left - 4}" y="{frame.y(t) + 3.5:.1f}">{text}</text>'
        for t, text in zip(frame.ticks, texts)
    )


def _step_axis(frame: _Frame, texts: list[str]) -> str:
    """A mark at every step, its number under as many as fit (:func:`step_labels`), and the word "step"."""
    bottom = HEIGHT - BOTTOM
    room = WIDTH - frame.right - frame.left - 2 * INSET
    marks = "".join(
        f'<line x1="{frame.x(i):.1f}" x2="{frame.x(i):.1f}" y1="{bottom}" y2="{bottom + 3}"/>'
        for i in range(frame.count)
    )
    labels = "".join(
        f'<text x="{frame.x(i):.1f}" y="{HEIGHT - 4}">{texts[i]}</text>'
        for i in step_labels(frame.count, CHAR * max(map(len, texts)) + 8, room)
    )
    return (
        f'<g class="x">{marks}{labels}</g><text class="word" x="{frame.left - 4}" y="{HEIGHT - 4}">{STEP_WORD}</text>'
    )


def _series(
    frame: _Frame, number: int, run: Series, points: list[tuple[int, float, float]], title: Callable[..., str]
) -> str:
    """Run ``number``'s line, its band and a dot per point ``(step index, value, ± band)``, each dot's hover
    title ``title(*point)``."""
    if not points:
        return ""
    x, y = frame.x, frame.y
    area = ""
    if run.band is not None:
        upper = " ".join(f"{x(i):.1f},{y(v + b):.1f}" for i, v, b in points)
        lower = " ".join(f"{x(i):.1f},{y(v - b):.1f}" for i, v, b in reversed(points))
        area = f'<polygon class="band" points="{upper} {lower}"/>'
    line = " ".join(f"{'M' if n == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for n, (i, v, _) in enumerate(points))
    dots = "".join(
        f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5"><title>{title(i, v, b)}</title></circle>'
        for i, v, b in points
    )
    return f'<g class="run-{number}">{area}<path d="{line}"/>{dots}</g>'


def line_chart(
    steps: Sequence[int],
    series: Sequence[Series],
    label: str,
    *,
    unit: str = "",
    whole: bool = False,
    nonnegative: bool = False,
) -> Markup:
    """Each of ``series`` (one per run, styled ``run-0``, ``run-1``, …) over ``steps`` as an inline SVG line with
    a dot per value, on labelled step and value axes (see the module's docstring); a step without a value is
    left out and the line joins its neighbours. ``unit`` follows values in hover titles (``%``); ``whole`` and
    ``nonnegative`` shape the value axis. With several series, titles and the ``aria-label`` name each run. A
    note instead of a chart when no series has a value."""
    kept = [
        [(i, v, (s.band[i] or 0.0) if s.band else 0.0) for i, v in enumerate(s.values) if v is not None] for s in series
    ]
    caption = f"<figcaption>{escape(label)}</figcaption>"
    if not any(kept):
        return Markup(f'<figure class="chart">{caption}<p class="none">no values</p></figure>')
    ticks = value_ticks(
        min(v - b for points in kept for _, v, b in points),
        max(v + b for points in kept for _, v, b in points),
        whole=whole,
        nonnegative=nonnegative,
    )
    tick_texts = [tick_label(t, ticks[1] - ticks[0]) for t in ticks]
    step_texts = [str(s) for s in steps]
    frame = _Frame(
        left=round(CHAR * max(len(STEP_WORD), *map(len, tick_texts)) + 6),
        right=max(8, round(CHAR * len(step_texts[-1]) / 2 + 2 - INSET)),
        count=len(steps),
        ticks=ticks,
    )
    named = len(series) > 1

    def title(run: Series, index: int, value: float, band: float) -> str:
        spread = f" ± {_fmt(band)}{unit}" if run.band is not None else ""
        return f"{escape(run.run) + ' · ' if named else ''}step {steps[index]}: {_fmt(value)}{unit}{spread}"

    lines = "".join(
        _series(frame, n, run, points, partial(title, run)) for n, (run, points) in enumerate(zip(series, kept))
    )
    summary = "; ".join(
        f"{run.run + ': ' if named else ''}from {_fmt(points[0][1])}{unit} at step {steps[points[0][0]]} "
        f"to {_fmt(points[-1][1])}{unit} at step {steps[points[-1][0]]}"
        for run, points in zip(series, kept)
        if points
    )
    return Markup(
        f'<figure class="chart">{caption}<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(f"{label}: {summary}")}"><g class="y">{_value_axis(frame, tick_texts)}</g>'
        f"{_step_axis(frame, step_texts)}{lines}</svg></figure>"
    )
