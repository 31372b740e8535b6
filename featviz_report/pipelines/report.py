"""The report of one model: samples through :mod:`featviz_report.pipelines.core`'s passes, sections, page and JSON.

``build_report`` is the Python API; the CLI resolves its specs and then calls it too.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..capture.job import open_job
from ..capture.samples import SamplesArg, open_samples, preprocess
from ..capture.sections import layer_sections
from ..config import ReportConfig
from ..featvis.stage import with_features
from ..render.encode import PngEncoder
from ..render.outputs import check_api_outputs
from ..render.spool import Spool
from ..report_data import Report
from ..runtime.device import on_device
from ..runtime.heap import old_objects_frozen
from ..runtime.progress import Progress
from .core import (
    assemble,
    cam_view,
    feature_images,
    finish,
    run_passes,
    sections_and_graph,
    warn_random_weights,
)

__all__ = ["build_report"]


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
    with old_objects_frozen():
        return _build(model, samples, out, config, json_out)


def _build(
    model: nn.Module, samples: SamplesArg, out: str | Path | None, config: ReportConfig, json_out: str | Path | None
) -> Report:
    progress = Progress(enabled=not config.quiet)
    check_api_outputs(out, json_out, config.format, samples)
    job = open_job(model, open_samples(samples, preprocess(model, config), config.strict), config, progress)
    warn_random_weights(config, progress, config.model_name or type(model).__name__)
    with PngEncoder(config.workers, Spool()) as encoder:  # still encoding while the sections and page are made
        with on_device(job.model, job.device):
            run = run_passes(job, encoder)
            images = feature_images(job, run.records)
            cams = (cam_view(job),) if config.cam else ()
            sections, graph = sections_and_graph(
                job,
                run.records,
                lambda: with_features(
                    layer_sections(list(run.records.values()), job.layers, config, run.computed), images
                ),
                run.computed,
                run.stash,
            )
        return finish(assemble(job, run, sections, cams, graph), out, json_out, config, progress)
