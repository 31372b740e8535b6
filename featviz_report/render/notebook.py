"""A report shown in Jupyter: the page in a sandboxed ``<iframe srcdoc>``, offline, size-capped.

``Report._repr_html_`` calls :func:`notebook_html` (this module registers it as ``Report.notebook_view``), so
``build_report(...)`` or ``compare_checkpoints(...)`` as the last line of a cell displays the report itself. The
page runs as written (its CSP, its script) in an iframe without same-origin rights, so it can touch neither the
notebook nor the network. A page over :data:`MAX_NOTEBOOK_MB` keeps the feature maps of fewer samples (as
``--max-size`` does) and says so under the frame, with a link to the written file when there is one.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..report_data import Report
from .budget import fit_page
from .html import data_uri, render_html

__all__ = ["notebook_html", "MAX_NOTEBOOK_MB", "FRAME_HEIGHT_PX"]

MAX_NOTEBOOK_MB = 16.0  # notebooks keep outputs in the .ipynb: a few MB each is what stays usable
FRAME_HEIGHT_PX = 760


def notebook_html(report: Report, location: str = "", max_mb: float = MAX_NOTEBOOK_MB) -> str:
    """The HTML a notebook shows for ``report``; ``location`` is where the page was written, if it was."""
    shown, left_out = fit_page(report, int(max_mb * 1e6))
    page = "".join(render_html(shown, data_uri))
    caption = ""
    if left_out:
        caption += f"<p>Shown in the notebook within {max_mb:g} MB: {html.escape(left_out.split(': ', 1)[-1])}</p>"
    if location:
        link = html.escape(Path(location).as_posix(), quote=True)
        caption += (
            f'<p>The full report: <a href="{link}" target="_blank" rel="noopener">{html.escape(location)}</a></p>'
        )
    return (
        f'<iframe sandbox="allow-scripts" srcdoc="{html.escape(page, quote=True)}" '
        f'title="featviz-report: {html.escape(report.title, quote=True)}" '
        f'style="width:100%;height:{FRAME_HEIGHT_PX}px;border:1px solid #ccc;border-radius:6px" loading="lazy">'
        f"</iframe>{caption}"
    )


Report.notebook_view = lambda report: notebook_html(report, report.location)
