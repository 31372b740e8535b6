"""The layer table on the terminal (``--summary``, as torchinfo prints one) and as CSV (``--summary-csv``):
each captured layer's type, output shape, parameters, activation statistics and flags, as the page's
Summary table has them: the share of values exactly 0 and the share <= 0 (what a ReLU after the layer
zeroes; a convolution captured before its ReLU has no exact zeros). The CSV keeps full-precision numbers
(empty where not finite), its columns named as the JSON's statistics."""

from __future__ import annotations

import csv
import io
import math

from ..report_data import LayerSection, Report

__all__ = ["summary_table", "summary_csv"]

COLUMNS = (
    "layer",
    "type",
    "output",
    "params",
    "min",
    "mean",
    "std",
    "max",
    "zero_fraction",
    "nonpositive_fraction",
    "flags",
)
HEADERS = ("Layer", "Type", "Output", "Params", "Min", "Mean", "Std", "Max", "Exact zeros", "<= 0", "Flags")


def _flags(layer: LayerSection) -> str:
    s, unit = layer.stats, "unit" if layer.kind == "vector" else "channel"
    flags = [f"{s.dead_channels} dead {unit}{'s' if s.dead_channels != 1 else ''}"] if s.dead_channels else []
    flags += [f"{s.saturated_channels} constant"] if s.saturated_channels else []
    flags += [f"{s.nan + s.inf} non-finite"] if s.nan or s.inf else []
    return ", ".join(flags)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.2e}" if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3) else f"{value:.4g}"


def _row(layer: LayerSection, text: bool) -> list[str]:
    s = layer.stats
    stats = [s.min, s.mean, s.std, s.max]
    shown = [_number(v) for v in stats] if text else [repr(v) if math.isfinite(v) else "" for v in stats]
    shares = [f"{100 * v:.1f}%" if text else repr(v) for v in (s.zero_fraction, s.nonpositive_fraction)]
    params = f"{layer.params:,}" if text else str(layer.params)
    shape = "×".join(map(str, layer.output_shape))
    return [layer.name, layer.type, shape, params, *shown, *shares, _flags(layer)]


def summary_table(report: Report) -> str:
    """The table as aligned text, a title line first and a total line last (numbers right-aligned)."""
    rows = [list(HEADERS), *(_row(layer, True) for layer in report.layers)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    right = {3, 4, 5, 6, 7, 8, 9}

    def line(row: list[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(rows[0]))
    body = [line(rows[0]), rule, *(line(row) for row in rows[1:]), rule]
    title = f"{report.title}: {len(report.layers)} layers shown, {report.params:,} parameters in the model"
    return "\n".join([title, *body]) + "\n"


def summary_csv(report: Report) -> str:
    """The table as CSV with a header row (numbers unrounded, shapes as ``C×H×W``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_row(layer, False) for layer in report.layers)
    return out.getvalue()
