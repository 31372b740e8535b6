"""A dataset scan as a report: per layer the dataset-wide statistics, filters and a card per channel.

The scan (:mod:`featviz_report.scan.run`) runs on every rank; only rank 0 places the crops
(:mod:`featviz_report.scan.crops`) around each peak's receptive field (:mod:`featviz_report.fields.receptive`) into
one card per shown channel, decodes the top images again to store each once
(:mod:`featviz_report.scan.sources`), keeps the page within its budget (:mod:`featviz_report.scan.budget`)
and writes the page and the JSON, like any other report (atomic writes). Channels shown per layer:
``config.max_channels`` (default 64), in ``config.order``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..capture.samples import display_names, find_images, preprocess
from ..capture.sections import LayerRecord, layer_sections
from ..circuits.attach import with_circuits
from ..circuits.stage import SAMPLES, circuit_inputs, circuit_seconds, shown_channels
from ..config import ReportConfig
from ..errors import InputError, SampleError
from ..featvis.stage import vis_targets, visualise_layers, with_features
from ..fields.budget import field_seconds
from ..fields.receptive import receptive_fields, with_fields
from ..render.outputs import check_api_outputs
from ..report_data import CardImage, ChannelCard, DatasetScan, FeatureImage, LayerSection, Report
from ..runtime.device import float_dtype, model_device, on_device
from ..runtime.progress import Progress
from ..scan.budget import fit_scan
from ..scan.crops import channel_crops
from ..scan.dataset import ImageFiles
from ..scan.run import ScanResult, run_scan
from ..scan.sources import with_sources
from .core import finish, linked, model_graph, new_report, warn_random_weights

__all__ = ["scan_dataset", "SCAN_CHANNELS"]

SCAN_CHANNELS = 64
CACHED_IMAGES = 512  # decoded top images kept while their pictures are stored (about 77 MB at 224² RGB)


def scan_dataset(
    model: nn.Module,
    data: Sequence[str | Path],
    out: str | Path | None = None,
    config: ReportConfig | None = None,
    *,
    json_out: str | Path | None = None,
    state: str | Path | None = None,
    loader_workers: int | None = None,
) -> Report | None:
    """Scan every image under ``data`` (under torchrun, this rank's share) and, on rank 0, return (and
    write) the report; other ranks return None. ``state`` makes the scan resumable (see ``scan``)."""
    config = config or ReportConfig()
    started, progress = time.monotonic(), Progress(enabled=not config.quiet)
    check_api_outputs(out, json_out, config.format, list(data))
    paths = find_images(data)
    prep = preprocess(model, config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once: rank 0's
        name = config.model_name or type(model).__name__
        warn_random_weights(config, progress, name, "its channels respond as no trained model's would")
    workers = config.loader_workers if loader_workers is None else loader_workers
    result = run_scan(model, paths, prep, config, progress, Path(state) if state else None, workers)
    if result.rank != 0:
        return None
    if not result.images:
        raise InputError(f"none of the {len(paths)} image files could be read")
    dataset = ImageFiles(paths, prep)
    pixels = functools.lru_cache(maxsize=CACHED_IMAGES)(functools.partial(_pixels, dataset))
    report = with_sources(_report(model, result, dataset, config, data, progress, started), pixels, progress)
    report = fit_scan(report, config, out is not None, pixels, progress)
    return finish(report, out, json_out, config, progress)


def _report(
    model: nn.Module,
    result: ScanResult,
    dataset: ImageFiles,
    config: ReportConfig,
    data: Sequence[str | Path],
    progress: Progress,
    started: float,
) -> Report:
    """The scan's page (before its pictures are stored): sections with their cards, fields from the gradient
    within a tenth of the time since the scan ``started`` (:mod:`featviz_report.fields.budget`)."""
    limit = config.max_channels or SCAN_CHANNELS
    modules = dict(result.layers)
    records = []
    for name, accumulator in result.accumulators.items():
        order = accumulator.ranking(config.order) if config.order != "index" else None
        records.append(LayerRecord.create(name, modules[name], result.shapes[name], accumulator, limit, order))
    sections = with_features(
        layer_sections(records, result.layers, config), _features(model, records, result, dataset, config, progress)
    )
    with on_device(model, result.device):
        fields = receptive_fields(model, _first_image(model, dataset))
    seconds = field_seconds(time.monotonic() - started, config.field_seconds)
    keys = [(record.module, 0) for record in records]
    sections = with_fields(sections, keys, fields, progress, seconds)
    if config.circuit_inputs:
        calls = {(record.name, 0): record for record in records}
        with on_device(model, result.device):
            found, samples = circuit_inputs(
                model,
                result.layers,
                shown_channels(calls, limit),
                _first_image(model, dataset, SAMPLES),
                config.circuit_inputs,
                circuit_seconds(time.monotonic() - started),
            )
        sections = with_circuits(sections, list(calls), found, samples)
    with_cards = []
    names = dict(zip(range(len(dataset.paths)), display_names(dataset.paths)))
    size = dataset.prep.size
    for section, record in zip(sections, records):
        channels = list(record.channel_ids) if record.kind == "maps" else list(range(min(limit, record.stats.channels)))
        cards = tuple(_card(record, section, channel, size, names) for channel in channels)
        with_cards.append(dataclasses.replace(section, cards=cards))
    referenced = sorted({int(i) for acc in result.accumulators.values() for i in acc.top.sample.flat if i >= 0})
    scan = DatasetScan(
        source=", ".join(str(d) for d in data),
        images=result.images,
        skipped=result.skipped,
        ranks=result.ranks,
        seconds=result.seconds,
        files=dict(zip(referenced, display_names([dataset.paths[i] for i in referenced]))),
        sources={},  # filled by with_sources
    )
    report = new_report(
        model,
        config,
        result.device,
        (dataset.prep.channels, dataset.prep.size, dataset.prep.size),
        tuple(with_cards),
        result.shapes,
        dataset=scan,
    )
    if not config.graph:
        return report
    return dataclasses.replace(report, graph=linked(model_graph(model, _first_image(model, dataset)), report.layers))


def _features(
    model: nn.Module,
    records: list[LayerRecord],
    result: ScanResult,
    dataset: ImageFiles,
    config: ReportConfig,
    progress: Progress,
) -> dict[str, tuple[FeatureImage, ...]]:
    """The ``--featviz`` layers' images, made on the device the scan ran on."""
    targets = vis_targets((((record.name, 0), record) for record in records), config, progress)  # first calls
    if not targets:
        return {}
    prep = dataset.prep
    with on_device(model, result.device):
        shape = (prep.channels, prep.size, prep.size)
        return visualise_layers(model, targets, shape, prep.norm, result.device, float_dtype(model), config, progress)


def _card(
    record: LayerRecord,
    section: LayerSection,
    channel: int,
    size: int,
    names: dict[int, str],
) -> ChannelCard:
    """One channel's card: its dataset statistics, flags and top images (cut around the peak)."""
    stats, top = section.channels, record.stats.top
    boxes = section.channels.top.box
    crops = channel_crops(record.stats, boxes, channel, size, size)
    tops = tuple(
        CardImage(
            crop,
            float(top.value[rank, channel]),
            names[int(top.sample[rank, channel])],
            int(top.sample[rank, channel]),
            None if boxes is None else tuple(int(v) for v in boxes[rank, channel]),
        )
        for rank, crop in crops
    )
    feature = next((f for f in section.feature_images if f.channel == channel), None)
    return ChannelCard(
        channel,
        stats.mean[channel],
        stats.max[channel],
        stats.std[channel],
        stats.zero_fraction[channel],
        float(stats.selectivity[channel]),
        stats.flags(channel),
        tops,
        feature,
    )


def _first_image(model: nn.Module, dataset: ImageFiles, count: int = 1) -> Iterator[torch.Tensor]:
    """The first readable image (the first ``count`` of them) as a batch, on the model's device and in its dtype."""
    images = []
    for index in range(len(dataset)):
        image, _, ok = dataset[index]
        if ok:
            images.append(image)
        if len(images) == count:
            break
    if images:
        yield torch.stack(images).to(device=model_device(model), dtype=float_dtype(model))


def _pixels(dataset: ImageFiles, index: int) -> np.ndarray | None:
    try:
        return dataset.pixels(index)
    except SampleError:  # changed since the scan: the crop stays blank
        return None
