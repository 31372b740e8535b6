"""A dataset scan as a report: per layer the dataset-wide statistics, filters and a card per channel.

The scan (:mod:`featviz_report.scan.run`) runs on every rank, the model placed on its device once for the
scan and the page; only rank 0 makes the page: ``--featviz`` images, the receptive fields and the graph
from the pass every pipeline shares (:func:`~featviz_report.pipelines.core.sections_and_graph`), then the
crops (:mod:`featviz_report.scan.crops`) around each peak's receptive field (:mod:`featviz_report.fields.receptive`)
in one card per shown channel; it decodes the top images again to store each once
(:mod:`featviz_report.scan.sources`), keeps the page within its budget (:mod:`featviz_report.scan.budget`)
and writes the page and the JSON, like any other report (atomic writes). Under torchrun, rank 0 alone
prints. Channels shown per layer: ``config.max_channels`` (default 64), in ``config.order``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from ..capture.job import Job, open_job
from ..capture.samples import display_names, find_images, preprocess
from ..capture.sections import LayerRecord, layer_sections
from ..config import ReportConfig
from ..errors import InputError, SampleError
from ..featvis.stage import with_features
from ..render.outputs import check_api_outputs
from ..report_data import CardImage, ChannelCard, DatasetScan, LayerSection, Report
from ..runtime.device import on_device
from ..runtime.progress import Progress
from ..scan.budget import fit_scan
from ..scan.crops import channel_crops
from ..scan.dataset import ImageFiles
from ..scan.run import ScanResult, run_scan, scan_device
from ..scan.sources import with_sources
from .core import feature_images, finish, new_report, sections_and_graph, warn_random_weights

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
    first = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone prints
    progress = Progress(enabled=first and not config.quiet, warnings=first)
    check_api_outputs(out, json_out, config.format, list(data))
    dataset = ImageFiles(find_images(data), preprocess(model, config))
    name = config.model_name or type(model).__name__
    warn_random_weights(config, progress, name, "its channels respond as no trained model's would")
    job = open_job(model, dataset, config, progress, scan_device(config.device))
    workers = config.loader_workers if loader_workers is None else loader_workers
    with on_device(model, job.device):
        result = run_scan(job, Path(state) if state else None, workers)
        if result.rank != 0:
            return None
        if not result.images:
            raise InputError(f"none of the {len(dataset)} image files could be read")
        report = _report(job, result, data)
    pixels = functools.lru_cache(maxsize=CACHED_IMAGES)(functools.partial(_pixels, dataset))
    report = with_sources(report, pixels, progress)
    report = fit_scan(report, config, out is not None, pixels, progress)
    return finish(report, out, json_out, config, progress)


def _report(job: Job[ImageFiles], result: ScanResult, data: Sequence[str | Path]) -> Report:
    """The scan's page (before its pictures are stored): sections with their fields (from the gradient within a
    tenth of the time since the job was opened, :mod:`featviz_report.fields.budget`), their cards, and the graph."""
    config, dataset = job.config, job.sample_set
    limit = config.max_channels or SCAN_CHANNELS
    modules = dict(job.layers)
    records = {}
    for name, accumulator in result.accumulators.items():
        order = accumulator.ranking(config.order) if config.order != "index" else None
        records[name, 0] = LayerRecord.create(name, modules[name], result.shapes[name], accumulator, limit, order)
    images = feature_images(job, records)
    sections, graph = sections_and_graph(
        job,
        records,
        lambda: with_features(layer_sections(list(records.values()), job.layers, config, result.computed), images),
        result.computed,
    )
    with_cards = []
    for section, record in zip(sections, records.values()):
        channels = list(record.channel_ids) if record.kind == "maps" else list(range(min(limit, record.stats.channels)))
        cards = tuple(_card(record, section, channel, dataset.prep.size, dataset.names) for channel in channels)
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
    layers = tuple(with_cards)
    return new_report(job.model, config, job.device, dataset.shape, layers, result.shapes, dataset=scan, graph=graph)


def _card(
    record: LayerRecord,
    section: LayerSection,
    channel: int,
    size: int,
    names: Sequence[str],
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


def _pixels(dataset: ImageFiles, index: int) -> np.ndarray | None:
    try:
        return dataset.pixels(index)
    except SampleError:  # changed since the scan: the crop stays blank
        return None
