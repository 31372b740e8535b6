"""One report for two checkpoints of one architecture, run on the same samples (``--compare``).

Four passes: one per checkpoint that only gathers statistics, then, with every layer's channels ordered
by how much they changed (:mod:`featviz_report.capture.changes`), one per checkpoint that encodes the maps of
the most changed channels, in the same order for both, so the page can set them side by side. The page
is checkpoint B's report with A beside it: weight and activation changes per layer, A's filters and
maps next to B's, A's predictions and the samples whose prediction flipped, and both checkpoints'
class activation maps unless ``config.cam`` is off. B's receptive fields and graph come from the pass every
pipeline shares (:func:`~featviz_report.pipelines.core.sections_and_graph`); both models are on the device
for the whole comparison, once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from ..capture.changes import CHANGED_CHANNELS, channel_order, comparison, layer_change
from ..capture.job import Job, open_job
from ..capture.samples import SamplesArg, SampleSet, open_samples, preprocess
from ..capture.sections import layer_sections
from ..config import ReportConfig
from ..errors import UsageError
from ..models.resolve import check_same_architecture
from ..render.encode import PngEncoder
from ..render.outputs import check_api_outputs
from ..render.spool import Spool
from ..report_data import LayerSection, Report
from ..runtime.device import on_device
from ..runtime.heap import old_objects_frozen
from ..runtime.progress import Progress
from .core import Run, assemble, cam_view, capture_pass, circuits, finish, sections_and_graph, warn_random_weights

__all__ = ["compare_checkpoints"]

RANKING = "change between the checkpoints"


def compare_checkpoints(
    before: nn.Module,
    after: nn.Module,
    samples: SamplesArg,
    out: str | Path | None = None,
    config: ReportConfig | None = None,
    *,
    json_out: str | Path | None = None,
    names: tuple[str, str] = ("A", "B"),
) -> Report:
    """Compare ``before`` (A) with ``after`` (B), two instances of one architecture, on ``samples``.

    Returns (and, with ``out``/``json_out``, writes) B's report with ``comparison`` and each section's
    ``change`` filled in. Both models are left as they were found. Without a ``config``, Grad-CAM maps
    of both are included; with one, as ``config.cam`` says.
    """
    config = config or ReportConfig(cam="gradcam")
    if config.featviz:
        raise UsageError("feature visualisation (featviz) applies to reports and scans, not comparisons")
    check_same_architecture(before.state_dict(), after.state_dict())
    limit = config.max_channels or CHANGED_CHANNELS
    config = dataclasses.replace(config, max_channels=limit, order="index")
    progress = Progress(enabled=not config.quiet)
    check_api_outputs(out, json_out, config.format, samples)
    sample_set = open_samples(samples, preprocess(after, config), config.strict)
    job_a = open_job(before, sample_set, config, progress)
    job_b = open_job(after, sample_set, config, progress)
    model = config.model_name or type(before).__name__
    warn_random_weights(config, progress, f"A ({names[0]}, {model})", "A's predictions are meaningless")
    with old_objects_frozen(), on_device(before, job_a.device), on_device(after, job_b.device):
        rank_a, rank_b = capture_pass(job_a, None, None), capture_pass(job_b, None, None)
        orders = {
            key: channel_order(rank_a.records[key].stats, record.stats)
            for key, record in rank_b.records.items()
            if key in rank_a.records
        }
        with PngEncoder(config.workers, Spool()) as encoder:
            run_a, run_b = capture_pass(job_a, encoder, orders), capture_pass(job_b, encoder, orders, warn=False)
        cams = (cam_view(job_a, "A"), cam_view(job_b, "B")) if config.cam else ()
        sections, graph = sections_and_graph(
            job_b,
            run_b.records,
            lambda: _changed_sections(job_a, job_b, rank_a, rank_b, run_a, run_b, limit),
            run_b.computed,
            run_b.stash,
            before=circuits(job_a, run_a),
        )
        report = assemble(job_b, run_b, sections, cams, graph)
        report = dataclasses.replace(
            report,
            title=config.title or f"{report.model_name}: {names[0]} → {names[1]}",
            comparison=comparison(names[0], names[1], run_a.samples, run_b.samples, report.layers),
        )
        return finish(report, out, json_out, config, progress)


def _changed_sections(
    job_a: Job[SampleSet], job_b: Job[SampleSet], rank_a: Run, rank_b: Run, run_a: Run, run_b: Run, limit: int
) -> tuple[LayerSection, ...]:
    """B's sections, each with what changed since A in its layer (A's statistics from its ranking pass)."""
    config = job_b.config
    sections_a = {
        s.name: s for s in layer_sections(list(run_a.records.values()), job_a.layers, config, run_a.computed, RANKING)
    }
    sections_b = layer_sections(list(run_b.records.values()), job_b.layers, config, run_b.computed, RANKING)
    modules_a = dict(job_a.model.named_modules())
    changed = []
    for (key, record), section in zip(run_b.records.items(), sections_b):
        if key not in rank_a.records or section.name not in sections_a:
            changed.append(section)
            continue
        change = layer_change(
            modules_a[key[0]],
            record.module,
            rank_a.records[key].stats,
            rank_b.records[key].stats,
            sections_a[section.name],
            limit,
        )
        changed.append(dataclasses.replace(section, change=change))
    return tuple(changed)
