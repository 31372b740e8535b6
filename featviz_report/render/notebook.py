"""A report shown in Jupyter: the page in a sandboxed ``<iframe srcdoc>``, offline, size-capped.

``Report._repr_html_`` calls :func:`notebook_html` (this module registers it as ``Report.notebook_view``), so
``build_report(...)`` or ``compare_checkpoints(...)`` as the last line of a cell displays the report itself. The
page runs as written (its CSP, its script) in an iframe without same-origin rights, so it can touch neither the
notebook nor the network. A page over :data:`MAX_NOTEBOOK_MB` keeps the feature maps of fewer samples (as
``--max-size`` does) and says so under the frame, with a link to the written file when there is one.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

from ..report_data import Report
from .budget import fit_page
from .html import data_uri, render_html

__all__ = ["notebook_html", "MAX_NOTEBOOK_MB", "FRAME_HEIGHT_PX"]

MAX_NOTEBOOK_MB = 2.0  # notebooks keep outputs in the .ipynb: a cell of a few MB each makes it slow to open
FRAME_HEIGHT_PX = 760


def notebook_html(report: Report, location: str = "", max_mb: float | None = MAX_NOTEBOOK_MB) -> str:
    """The HTML a notebook shows for ``report`` (at most ``max_mb``, the frame and its caption included;
    ``None``: everything); ``location`` is where the page was written, if it was."""
    if max_mb is None:
        return _cell(report, "".join(render_html(report, data_uri)), "", location, max_mb)
    budget, page_budget = int(max_mb * 1e6), int(max_mb * 1e6)
    for _ in range(4):  # the page is escaped into srcdoc: aim its own budget lower until the cell fits
        shown, left_out = fit_page(report, page_budget)
        cell = _cell(report, "".join(render_html(shown, data_uri)), left_out or "", location, max_mb)
        if len(cell) <= budget:
            return cell
        page_budget = int(page_budget * budget / len(cell) * 0.98)
    return _first_layers(shown, budget, location, max_mb)


def _first_layers(report: Report, budget: int, location: str, max_mb: float) -> str:
    """The cell with the first layers that fit (the most that do, found by halving), the rest named as left out."""

    def cell(count: int) -> str:
        kept = dataclasses.replace(report, layers=report.layers[:count])
        rest = f"the first {count} of {len(report.layers)} layers (the others are in the written report)"
        return _cell(report, "".join(render_html(kept, data_uri)), rest, location, max_mb)

    low, high = 0, len(report.layers)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(cell(middle)) <= budget else (low, middle - 1)
    return cell(low)


def _cell(report: Report, page: str, left_out: str, location: str, max_mb: float | None) -> str:
    caption = ""
    if left_out:
        caption += f"<p>Shown in the notebook within {max_mb:g} MB: {html.escape(left_out.split(': ', 1)[-1])}."
        caption += " <code>report.show(full=True)</code> shows everything.</p>"
    if location:
        link = html.escape(_from_here(location), quote=True)
        caption += (
            f'<p>The full report: <a href="{link}" target="_blank" rel="noopener">{html.escape(location)}</a></p>'
        )
    return (
        f'<iframe sandbox="allow-scripts" srcdoc="{html.escape(page, quote=True)}" '
        f'title="featviz-report: {html.escape(report.title, quote=True)}" '
        f'style="width:100%;height:{FRAME_HEIGHT_PX}px;border:1px solid #ccc;border-radius:6px" loading="lazy">'
        f"</iframe>{caption}"
    )


def _from_here(location: str) -> str:
    """``location`` relative to the working directory (a notebook's: its server resolves links from there)
    where it lies below it, else as written."""
    path = Path(location).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(location).as_posix()


Report.notebook_view = lambda report, full: notebook_html(report, report.location, None if full else MAX_NOTEBOOK_MB)
