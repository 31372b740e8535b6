"""Report → files: one self-contained HTML page, or a folder for static hosting, and a JSON sidecar.

The only module that uses Jinja2. Pages are streamed into a temporary file next to the target and
renamed into place, so a failed or interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined
from jinja2.bccache import Bucket
from markupsafe import Markup, escape

from .compare import ranked_layers
from .errors import OutputError
from .progress import Progress
from .report import (
    ChannelStats,
    Comparison,
    DatasetScan,
    Grid,
    Histogram,
    LayerChange,
    Png,
    Prediction,
    Report,
    Sample,
    Stats,
)
from .resources import templates_dir

__all__ = ["check_output", "write_report", "render_html", "html_size", "inline_size", "report_json", "script_json"]

IMAGE_DIR = "img"


def check_output(out: Path, fmt: str) -> None:
    """Fail before any work when ``out`` cannot be written (or would replace something not ours)."""
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {str(out)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {str(out)!r}: folder {str(parent)!r} is not writable")
    if fmt == "html" and out.is_dir():
        raise OutputError(f"{str(out)!r} is a folder; name a file, or use --format dir")
    if fmt == "dir" and out.exists():
        if not out.is_dir():
            raise OutputError(f"{str(out)!r} is a file; --format dir writes a folder")
        if any(out.iterdir()) and not (out / "index.html").is_file():
            raise OutputError(f"{str(out)!r} is a folder that is not a featviz report; not replacing it")


class _OverBudget(Exception):
    """The page grew past its budget while being written (nothing is left behind)."""


def write_report(
    report: Report,
    out: str | Path | None,
    fmt: str,
    json_out: str | Path | None,
    progress: Progress,
    max_bytes: int | None = None,
) -> bool:
    """Write the page (or folder) and the JSON sidecar, each atomically. A single page that would exceed
    ``max_bytes`` is abandoned as soon as it does: then nothing is written and the result is False."""
    if out is not None:
        out = Path(out)
        if fmt == "dir":
            _write_folder(report, out)
        else:
            try:
                with _atomic_file(out) as handle:
                    _write_page(handle, render_html(report, _data_uri), max_bytes)
            except _OverBudget:
                return False
        progress.message(f"wrote {out} ({_size(out) / 1e6:.1f} MB)")
    if json_out is not None:
        with _atomic_file(Path(json_out)) as handle:
            json.dump(report_json(report), handle, indent=1, allow_nan=False)
            handle.write("\n")
        progress.message(f"wrote {json_out}")
    return True


def _write_page(handle: IO[str], chunks: Iterator[str], max_bytes: int | None) -> None:
    if max_bytes is None:
        handle.writelines(chunks)
        return
    written = 0
    for chunk in chunks:
        written += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8"))
        if written > max_bytes:
            raise _OverBudget
        handle.write(chunk)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def _atomic_file(target: Path) -> Iterator[IO[str]]:
    """A text file that appears at ``target`` only when the block succeeds."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"cannot write {str(target)!r}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(target)!r}: {err.strerror or err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_folder(report: Report, out: Path) -> None:
    """``out/index.html`` plus content-addressed images, built aside and swapped in whole."""
    parent = out.resolve().parent
    try:
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as err:
        raise OutputError(f"cannot write {str(out)!r}: {err.strerror or err}") from None
    try:
        images = staging / IMAGE_DIR
        images.mkdir()

        def link(png: Png) -> Markup:
            name = hashlib.sha256(png.data).hexdigest()[:20] + ".png"
            path = images / name
            if not path.exists():
                path.write_bytes(png.data)
            return Markup(f"{IMAGE_DIR}/{name}")  # hex digits: nothing to escape

        with open(staging / "index.html", "w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(render_html(report, link, folder=True))
        for path in (staging, images, *images.iterdir(), staging / "index.html"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.old."))
            os.replace(out, old / "report")
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {str(out)!r}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


DATA_URI_PREFIX = "data:image/png;base64,"


def inline_size(png: Png) -> int:
    """Bytes ``png`` takes inline in a single-file page."""
    return len(DATA_URI_PREFIX) + 4 * -(-png.size // 3)


def html_size(report: Report) -> int:
    """Bytes of the single-file page, without encoding any image (each is counted where it appears)."""
    images = 0

    def count(png: Png) -> Markup:
        nonlocal images
        images += inline_size(png)
        return Markup("")

    text = sum(len(chunk.encode("utf-8")) for chunk in render_html(report, count))
    return text + images


def _data_uri(png: Png) -> Markup:
    """The image inline; base64 needs no HTML escaping, and skipping it saves a pass over megabytes."""
    return Markup(DATA_URI_PREFIX + base64.b64encode(png.data).decode("ascii"))


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
def _environment() -> Environment:
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
    return env


def _histogram_svg(histogram: Histogram | None, label: str) -> Markup:
    """Bars as one inline SVG path (no style attributes, so the CSP stays strict)."""
    if histogram is None or not any(histogram.counts):
        return Markup("")
    top = max(histogram.counts)
    height = 24
    path = "".join(
        f"M{i} {height}V{height - height * c / top:.2f}H{i + 1}V{height}Z" for i, c in enumerate(histogram.counts) if c
    )
    bins = len(histogram.counts)
    return Markup(
        f'<figure class="hist"><svg viewBox="0 0 {bins} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(label)}: {bins} bins from {_fmt_num(histogram.lo)} to {_fmt_num(histogram.hi)}">'
        f'<path d="{path}"/></svg><figcaption><span>{_fmt_num(histogram.lo)}</span><span>{escape(label)}</span>'
        f"<span>{_fmt_num(histogram.hi)}</span></figcaption></figure>"
    )


def _grid_css(report: Report) -> str:
    """One rule per grid geometry in the page: where the lines between tiles fall."""
    geometries = {(g.cols, g.rows) for layer in report.layers for g in layer.maps if g}
    geometries |= {(layer.filters.grid.cols, layer.filters.grid.rows) for layer in report.layers if layer.filters}
    return "".join(
        f".g-{c}x{r}::after{{background-size:calc(100% / {c}) calc(100% / {r})}}\n" for c, r in sorted(geometries)
    )


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def script_json(value: object) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` or line separators."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def _finite(values: tuple[float, ...]) -> list[float | None]:
    return [round(v, 6) if math.isfinite(v) else None for v in values]


def _before_data(channels: ChannelStats) -> dict[str, object]:
    """Checkpoint A's per-channel statistics, for the enlarged view of A's tiles in a comparison."""
    return {key: _finite(getattr(channels, key)) for key in ("min", "max", "mean", "std")}


def _page_data(report: Report) -> dict[str, object]:
    """What the page's script needs for the enlarged tile view: geometry and channel statistics."""
    return {
        "samples": [s.name for s in report.samples],
        "layers": {
            layer.slug: {
                "name": layer.name,
                "ids": list(layer.channel_ids),
                "vector": len(layer.output_shape) == 1,
                "min": _finite(layer.channels.min),
                "max": _finite(layer.channels.max),
                "mean": _finite(layer.channels.mean),
                "std": _finite(layer.channels.std),
                "map": list(layer.output_shape[1:]) if len(layer.output_shape) == 3 else None,
                "top": layer.channels.top.lists(),
                "before": _before_data(layer.change.channels_before) if layer.change else None,
            }
            for layer in report.layers
        },
    }


def render_html(report: Report, src: Callable[[Png], Markup], folder: bool = False) -> Iterator[str]:
    """The page as a stream of text chunks; ``src`` turns each image into its URL."""
    template_dir = templates_dir()
    css = (template_dir / "report.css").read_text(encoding="utf-8") + _grid_css(report)
    js = (template_dir / "report.js").read_text(encoding="utf-8")
    images = "'self'" if folder else "data:"
    csp = (
        f"default-src 'none'; img-src {images}; style-src {_sha256(css)}; script-src {_sha256(js)}; "
        "base-uri 'none'; form-action 'none'"
    )
    template = _environment().get_template("report.html.j2")
    return template.generate(
        report=report,
        src=src,
        css=Markup(css),
        js=Markup(js),
        csp=csp,
        data_json=Markup(script_json(_page_data(report))),
        grid_class=_grid_class,
        histogram=_histogram_svg,
        ranked_changes=ranked_layers,
    )


def _grid_class(grid: Grid) -> str:
    lined = " lined" if min(grid.tile_width, grid.tile_height) * grid.scale >= 8 else ""
    return f"grid g-{grid.cols}x{grid.rows}{lined}"


def _clean(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _histogram_json(histogram: Histogram | None) -> dict[str, object] | None:
    if histogram is None:
        return None
    return {"lo": _clean(histogram.lo), "hi": _clean(histogram.hi), "counts": [round(c, 3) for c in histogram.counts]}


def _stats_json(stats: Stats) -> dict[str, object]:
    numbers = {k: _clean(v) if isinstance(v, float) else v for k, v in vars(stats).items() if k != "histogram"}
    return {**numbers, "histogram": _histogram_json(stats.histogram)}


def _top_json(channels: ChannelStats) -> list[list[dict[str, object]]]:
    keys = ("sample", "value", "row", "col")
    return [[dict(zip(keys, peak)) for peak in channel] for channel in channels.top.lists()]


def _channels_json(channels: ChannelStats) -> dict[str, object]:
    numbers: dict[str, object] = {k: _finite(v) for k, v in vars(channels).items() if k != "top"}
    return {**numbers, "top": _top_json(channels)}


def _prediction_json(prediction: Prediction | None) -> dict[str, object] | None:
    if prediction is None:
        return None
    return {"index": prediction.index, "label": prediction.label, "probability": prediction.probability}


def _change_json(change: LayerChange) -> dict[str, object]:
    def number(value: float | None) -> float | None:
        return None if value is None else _clean(value)

    return {
        "weight_change": number(change.weight_change),
        "mean_cosine": number(change.mean_cosine),
        "min_cosine": number(change.min_cosine),
        "died": list(change.died),
        "woke": list(change.woke),
        "stats_before": _stats_json(change.stats_before),
        "most_changed": [
            {k: number(v) if isinstance(v, float) else v for k, v in vars(c).items()} for c in change.channels
        ],
    }


def _comparison_json(comparison: Comparison, samples: tuple[Sample, ...]) -> dict[str, object]:
    return {
        "before": comparison.before,
        "after": comparison.after,
        "flipped": [
            {
                "sample": i,
                "before": _prediction_json(comparison.predictions_before[i]),
                "after": _prediction_json(samples[i].prediction),
            }
            for i in comparison.flipped
        ],
        "predictions_before": [_prediction_json(p) for p in comparison.predictions_before],
    }


def _dataset_json(scan: DatasetScan) -> dict[str, object]:
    return {
        "source": scan.source,
        "images": scan.images,
        "skipped": scan.skipped,
        "processes": scan.ranks,
        "seconds": round(scan.seconds, 3),
        "files": {str(index): name for index, name in scan.files.items()},  # the channels' top samples
    }


def report_json(report: Report) -> dict[str, object]:
    """The report's numbers, machine-readable (no images)."""
    return {
        "featviz_report": report.version,
        "title": report.title,
        "model": report.model_name,
        "device": report.device,
        "input_shape": list(report.input_shape),
        "params": report.params,
        "samples": [
            {
                "index": s.index,
                "name": s.name,
                "prediction": _prediction_json(s.prediction),
                "top_classes": [_prediction_json(p) for p in s.top_classes],
            }
            for s in report.samples
        ],
        "layers": [
            {
                "name": layer.name,
                "id": f"layer-{layer.slug}",
                "type": layer.type,
                "output_shape": list(layer.output_shape),
                "params": layer.params,
                "stats": _stats_json(layer.stats),
                "channels": _channels_json(layer.channels),
                "weight_histogram": _histogram_json(layer.weight_histogram),
                **({"change": _change_json(layer.change)} if layer.change else {}),
            }
            for layer in report.layers
        ],
        **({"comparison": _comparison_json(report.comparison, report.samples)} if report.comparison else {}),
        "cams": [
            {
                "layer": view.layer,
                "method": view.method,
                "checkpoint": view.label or None,
                "targets": list(view.targets),
            }
            for view in report.cams
        ],
        "skipped_samples": [{"name": name, "reason": reason} for name, reason in report.skipped_samples],
        **({"dataset": _dataset_json(report.dataset)} if report.dataset else {}),
        "notes": list(report.notes),
    }
