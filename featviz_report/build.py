"""The pipeline: model + samples → capture → encode → :class:`Report` (and, if asked, the files).

``build_report`` is the Python API; the CLI resolves its specs and then calls it too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .capture import ChannelAccumulator, Reduced, capturing, first_tensor, select_layers, vector_shape
from .config import ReportConfig
from .device import pick_device
from .encode import PngEncoder, grid_shape, png_palette, png_rgb, tile_atlas
from .errors import InputError, ModelError
from .progress import Progress
from .render import check_output, write_report
from .report import ChannelStats, FilterView, Grid, LayerSection, Png, Prediction, Report, Sample, Stats
from .samples import Preprocess, SamplesArg, SampleSet, open_samples, parse_normalize
from .weights import FilterTiles, filter_tiles

__all__ = ["build_report"]

MAP_TILE_PX = 64  # a feature-map tile is shown at least this wide (integer zoom), if the page allows
FILTER_TILE_PX = 36
KERNEL_TILE_PX = 12
MAX_WIDTH_PX = 920


@dataclass
class _LayerRecord:
    """What the batches of one (module, call) have produced so far."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    stats: ChannelAccumulator
    maps: list[Future[bytes]] = field(default_factory=list)


def build_report(
    model: nn.Module,
    samples: SamplesArg,
    out: str | Path | None = None,
    config: ReportConfig | None = None,
    *,
    json_out: str | Path | None = None,
) -> Report:
    """Run ``model`` over ``samples`` and describe what every captured layer does.

    ``samples`` is an image file or folder, a list of them, or an ``N×C×H×W`` float tensor (used as
    is). With ``out`` the report is written there (a single HTML file, or a folder with
    ``config.format == "dir"``); with ``json_out`` the numbers too. The model is left as it was found:
    same device, same training flags, same ``requires_grad``, no hooks.
    """
    config = config or ReportConfig()
    progress = Progress(enabled=not config.quiet)
    if out is not None:
        check_output(Path(out), config.format)
    device = pick_device(config.device)
    layers = select_layers(model, config.layers)
    sample_set = open_samples(samples, _preprocess(model, config), config.strict)
    params = list(model.parameters())
    home = params[0].device if params else torch.device("cpu")
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    try:
        model.to(device)
        samples_out, records, skipped = _run(model, layers, sample_set, device, dtype, config, progress)
    finally:
        model.to(home)
    report = Report(
        title=config.title or config.model_name or type(model).__name__,
        model_name=config.model_name or type(model).__name__,
        device=_device_name(device),
        input_shape=sample_set.shape,
        params=sum(p.numel() for p in params),
        colormap=config.colormap,
        colorbar=_colorbar(config.colormap),
        weight_colorbar=_colorbar("diverging"),
        samples=samples_out,
        skipped_samples=tuple(sample_set.skipped),
        layers=_sections(records, layers, config),
        notes=tuple(skipped),
        version=__version__,
    )
    if out is not None or json_out is not None:
        write_report(report, out, config.format, json_out, progress)
    return report


def _preprocess(model: nn.Module, config: ReportConfig) -> Preprocess:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None and first.in_channels in (1, 3) else 3
    norm = parse_normalize(config.normalize or "none", channels)
    mean, std = norm if norm else (None, None)
    return Preprocess(config.input_size or 224, channels, mean, std)


def _colorbar(colormap: str) -> Png:
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 256)
    return Png(png_palette(ramp, colormap), 256, 1)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _run(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    sample_set: SampleSet,
    device: torch.device,
    dtype: torch.dtype,
    config: ReportConfig,
    progress: Progress,
) -> tuple[tuple[Sample, ...], dict[tuple[str, int], _LayerRecord], list[str]]:
    """Every batch through the model with hooks; tiles are encoded while the next batch runs."""
    records: dict[tuple[str, int], _LayerRecord] = {}
    thumbs: list[tuple[str, Future[bytes], tuple[int, int]]] = []
    predictions: list[Prediction | None] = []
    total, done = len(sample_set), 0
    with PngEncoder(config.workers) as encoder, capturing(model, layers) as capture, torch.inference_mode():
        for batch in sample_set.batches(config.batch_size):
            inputs = batch.inputs.to(device=device, dtype=dtype)
            try:
                outputs = model(inputs)
            except Exception as err:  # noqa: BLE001 - the user's model may raise anything; name where
                last = capture.last_call
                raise ModelError(_forward_failure(err, inputs, last, capture.last_returned)) from err
            predictions.extend(_predictions(outputs, len(batch.names), config.labels))
            for name, pixels in zip(batch.names, batch.thumbnails):
                thumbs.append((name, encoder.submit(png_rgb, pixels), (pixels.shape[1], pixels.shape[0])))
            for key, shape, reduced in capture.drain():
                record = records.get(key)
                if record is None:
                    name = key[0] if key[1] == 0 else f"{key[0]} (call {key[1] + 1})"
                    record = records[key] = _LayerRecord(
                        name, capture.modules[key[0]], shape, ChannelAccumulator(shape[0])
                    )
                record.stats.add(reduced)
                _submit_maps(encoder, record, reduced, config)
            done = len(thumbs) + len(sample_set.skipped)
            progress.update("capture", done, total)
        _warn_skipped(sample_set, progress)
        samples = tuple(
            Sample(i, name, Png(future.result(), *size), pred)
            for i, ((name, future, size), pred) in enumerate(zip(thumbs, predictions))
        )
        for record in records.values():
            for future in record.maps:
                future.result()
    return samples, records, _skipped_note(capture.skipped)


def _warn_skipped(sample_set: SampleSet, progress: Progress) -> None:
    """Say which sample files were skipped; fail when none was usable."""
    for name, reason in sample_set.skipped:
        progress.warn(f"skipped sample {name!r}: {reason}")
    if sample_set.skipped and len(sample_set.skipped) == len(sample_set):
        listed = "; ".join(f"{name!r}: {reason}" for name, reason in sample_set.skipped[:3])
        more = f" (+{len(sample_set.skipped) - 3} more)" if len(sample_set.skipped) > 3 else ""
        raise InputError(f"none of the {len(sample_set)} sample files could be used: {listed}{more}")


def _skipped_note(skipped: dict[str, str]) -> list[str]:
    """One line about selected layers whose output cannot be shown, naming a few of them."""
    if not skipped:
        return []
    examples = ", ".join(f"{name} ({what})" for name, what in list(skipped.items())[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return [f"{len(skipped)} selected layers give neither N×C×H×W nor N×F outputs and are not shown: {examples}{more}"]


def _forward_failure(
    err: Exception, inputs: torch.Tensor, last: tuple[str, nn.Module, tuple[int, ...]] | None, returned: bool
) -> str:
    """What went wrong in the forward pass, in the user's terms where the failing layer tells."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    samples = "×".join(map(str, inputs.shape[1:]))
    if last is None:
        return f"the model failed on samples of shape {samples}: {first}"
    name, module, shape = last
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d) and len(shape) == 4 and shape[1] != module.in_channels:
        return (
            f"layer {name} ({kind}) expects {module.in_channels} input channels but gets {shape[1]} "
            f"(samples are {samples})"
        )
    if isinstance(module, nn.Linear) and shape and shape[-1] != module.in_features:
        return (
            f"layer {name} ({kind}) expects {module.in_features} input features but gets {shape[-1]}: "
            f"the model was probably built for another input size than {samples} (see --input-size)"
        )
    where = "after" if returned else "in"
    return f"the model failed {where} layer {name} ({kind}) on samples of shape {samples}: {first}"


def _predictions(outputs: object, count: int, labels: Sequence[str] | None) -> list[Prediction | None]:
    """Top-1 class and softmax probability per sample, when the output looks like class logits."""
    logits = first_tensor(outputs)
    if logits is None or logits.ndim != 2 or logits.shape[0] != count or logits.shape[1] < 2:
        return [None] * count
    probs = torch.softmax(logits.float(), dim=1)
    top_p, top_i = probs.max(dim=1)
    names = labels if labels is not None and len(labels) == logits.shape[1] else None
    return [
        Prediction(int(i), names[int(i)] if names else f"class {int(i)}", float(p))
        for p, i in zip(top_p.cpu().tolist(), top_i.cpu().tolist())
    ]


def _shown_channels(channels: int, config: ReportConfig) -> int:
    return min(channels, config.max_channels) if config.max_channels else channels


def _submit_maps(encoder: PngEncoder, record: _LayerRecord, reduced: Reduced, config: ReportConfig) -> None:
    tiles = reduced.tiles.numpy()
    shown = tiles.shape[1] if len(record.shape) == 1 else _shown_channels(tiles.shape[1], config)
    cols = grid_shape(shown)[1]
    for sample_tiles in tiles:
        atlas = tile_atlas(sample_tiles[:shown], cols)
        record.maps.append(encoder.submit(png_palette, atlas, config.colormap))


def _grid(png: bytes, tile_h: int, tile_w: int, count: int, cols: int, target_px: int) -> Grid:
    rows = -(-count // cols)
    width, height = cols * tile_w, rows * tile_h
    zoom = max(1, min(-(-target_px // tile_w), MAX_WIDTH_PX // width))
    return Grid(Png(png, width, height), rows, cols, tile_h, tile_w, count, zoom)


def _filter_view(tiles: FilterTiles) -> FilterView:
    count, tile_h, tile_w = tiles.tiles.shape[:3]
    atlas = tile_atlas(tiles.tiles, tiles.cols)
    png = png_rgb(atlas) if tiles.rgb else png_palette(atlas, "diverging")
    target = KERNEL_TILE_PX if tiles.kernels else FILTER_TILE_PX
    return FilterView(
        _grid(png, tile_h, tile_w, count, tiles.cols, target),
        tiles.caption,
        None if tiles.rgb else "diverging",
        tiles.value_range,
        tiles.note,
    )


def _stats(acc: ChannelAccumulator) -> tuple[Stats, ChannelStats]:
    count = acc.count.sum()
    mean = float((acc.mean * acc.count).sum() / max(count, 1))
    m2 = float((acc.m2 + acc.count * (acc.mean - mean) ** 2).sum())
    elements = max(float(count + acc.nans.sum() + acc.infs.sum()), 1.0)
    finite_min = acc.minimum[np.isfinite(acc.minimum)]
    finite_max = acc.maximum[np.isfinite(acc.maximum)]
    std = np.sqrt(acc.m2 / np.maximum(acc.count, 1))
    layer = Stats(
        min=float(finite_min.min()) if finite_min.size else float("nan"),
        max=float(finite_max.max()) if finite_max.size else float("nan"),
        mean=mean,
        std=float(np.sqrt(m2 / max(count, 1))),
        zero_fraction=float(acc.zeros.sum() / elements),
        nan=int(acc.nans.sum()),
        inf=int(acc.infs.sum()),
        dead_channels=int((acc.positives == 0).sum()),
    )
    per_total = np.maximum(acc.count + acc.nans + acc.infs, 1)
    channels = ChannelStats(
        min=tuple(acc.minimum.tolist()),
        max=tuple(acc.maximum.tolist()),
        mean=tuple(acc.mean.tolist()),
        std=tuple(std.tolist()),
        zero_fraction=tuple((acc.zeros / per_total).tolist()),
    )
    return layer, channels


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        parts = [f"Conv2d {module.in_channels}→{module.out_channels}", "×".join(map(str, module.kernel_size))]
        if module.stride != (1, 1):
            parts.append(f"stride {'×'.join(map(str, module.stride))}")
        if module.groups != 1:
            parts.append("depthwise" if module.groups == module.in_channels else f"{module.groups} groups")
        return " · ".join(parts)
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    return type(module).__name__


def _slugs(names: Sequence[str]) -> list[str]:
    """URL-safe, unique ids for ``names`` (``layer1.0.conv1`` → ``layer1-0-conv1``)."""
    seen: set[str] = set()
    slugs = []
    for name in names:
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "layer"
        slug, n = base, 1
        while slug in seen:
            n += 1
            slug = f"{base}-{n}"
        seen.add(slug)
        slugs.append(slug)
    return slugs


def _sections(
    records: dict[tuple[str, int], _LayerRecord], layers: list[tuple[str, nn.Module]], config: ReportConfig
) -> tuple[LayerSection, ...]:
    if not records:
        raise ModelError("none of the selected layers ran during the forward pass; check --layers")
    first_conv = next((name for name, m in layers if isinstance(m, nn.Conv2d)), None)
    ordered = list(records.values())
    sections = []
    for record, slug in zip(ordered, _slugs([r.name for r in ordered])):
        stats, channels = _stats(record.stats)
        vector = len(record.shape) == 1
        shown = 1 if vector else _shown_channels(record.shape[0], config)
        tile_h, tile_w = (record.shape[1], record.shape[2]) if not vector else vector_shape(record.shape[0])
        cols = grid_shape(shown)[1]
        maps = tuple(_grid(f.result(), tile_h, tile_w, shown, cols, MAP_TILE_PX) for f in record.maps)
        tiles = filter_tiles(record.module, record.name == first_conv, config.max_filter_grid)
        notes = []
        if not vector and shown < record.shape[0]:
            notes.append(f"showing channels 0–{shown - 1} of {record.shape[0]} (--max-channels {shown})")
        if stats.nan or stats.inf:
            notes.append(f"{stats.nan} NaN and {stats.inf} infinite values (shown as the lowest colour)")
        sections.append(
            LayerSection(
                name=record.name,
                slug=slug,
                type=type(record.module).__name__,
                description=_describe(record.module),
                output_shape=record.shape,
                params=sum(p.numel() for p in record.module.parameters()),
                stats=stats,
                channels=channels,
                shown_channels=shown,
                maps=maps,
                filters=_filter_view(tiles) if tiles else None,
                notes=tuple(notes),
            )
        )
    return tuple(sections)
