"""The core the three pipelines share (a report, a comparison, a scan's page): capture passes with hooks over
a :class:`~featviz_report.capture.job.Job`'s samples, the ``--featviz`` images, the one pass that traces the
receptive fields and records the graph beside the sections (:func:`sections_and_graph`), the :class:`Report`
assembled around the layer sections, and the files written (:func:`finish`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..capture.gradcam import class_activation_maps, default_cam_layer, overlay
from ..capture.hooks import capturing
from ..capture.job import Job
from ..capture.layer_record import LayerRecord, call_name, new_accumulator
from ..capture.logits import class_scores
from ..capture.reduce import Reduced
from ..capture.samples import SampleSet
from ..capture.sections import colorbar
from ..capture.weights import Computed
from ..circuits.attach import Found, with_circuits
from ..circuits.stage import SAMPLES, circuit_seconds, first_samples, measure, probe, shown_channels
from ..circuits.stash import Stash, stashing
from ..circuits.trace import Traced
from ..config import ReportConfig
from ..errors import InputError, ModelError, first_few, first_line
from ..featvis.stage import settings_record, vis_targets, visualise_layers
from ..fields.budget import field_seconds
from ..fields.receptive import ReceptiveFields, receptive_fields, with_fields
from ..fields.trace import LayerFields, tracing_fields
from ..graph.layout import layout_graph, link_graph
from ..graph.record import record_graph
from ..graph.tree import module_tree
from ..render import notebook  # noqa: F401 - a report shows itself in notebooks (Report.notebook_view)
from ..render.budget import fit_page
from ..render.encode import PngEncoder, grid_shape, png_palette, png_rgb, tile_atlas
from ..render.outputs import write_report
from ..render.spool import Spooled
from ..report_data import (
    CamView,
    DatasetScan,
    FeatureImage,
    GraphView,
    LayerSection,
    ModelGraph,
    Png,
    Prediction,
    Report,
    Sample,
)
from ..runtime.device import evaluating, float_dtype
from ..runtime.heap import release_freed_memory
from ..runtime.progress import Progress
from ..runtime.threads import ThreadPolicy

__all__ = [
    "Run",
    "run_passes",
    "capture_pass",
    "assemble",
    "new_report",
    "finish",
    "cam_view",
    "sections_and_graph",
    "feature_images",
    "circuits",
    "warn_random_weights",
]


@dataclass(frozen=True)
class Run:
    """What the forward passes produced."""

    samples: tuple[Sample, ...]
    records: dict[tuple[str, int], LayerRecord]
    notes: list[str]
    shapes: dict[str, tuple[int, ...]]
    stash: Stash | None = None  # the first samples' captured outputs, for the circuits' probing pass to replay
    computed: Computed = dataclasses.field(default_factory=dict)  # weights layers make (capture/weights.py)


def assemble(
    job: Job[SampleSet],
    run: Run,
    sections: tuple[LayerSection, ...],
    cams: tuple[CamView, ...] = (),
    graph: GraphView | None = None,
) -> Report:
    """The report of one model's run (``graph``: the drawing :func:`sections_and_graph` made)."""
    return new_report(
        job.model,
        job.config,
        job.device,
        job.sample_set.shape,
        sections,
        run.shapes,
        samples=run.samples,
        skipped=tuple(job.sample_set.skipped),
        notes=tuple(run.notes),
        cams=cams,
        graph=graph,
    )


def feature_images(
    job: Job[SampleSet], records: Mapping[tuple[str, int], LayerRecord]
) -> dict[str, tuple[FeatureImage, ...]]:
    """The ``--featviz`` layers' images (:mod:`featviz_report.featvis.stage`) for ``records`` (by module name and
    call), in pixel space at the samples' size."""
    if not job.config.featviz:
        return {}
    return visualise_layers(job, vis_targets(records.items(), job.config, job.progress))


def sections_and_graph(
    job: Job[SampleSet],
    records: Mapping[tuple[str, int], LayerRecord],
    make_sections: Callable[[], tuple[LayerSection, ...]],
    computed: Computed,
    stash: Stash | None = None,
    before: Found | None = None,
) -> tuple[tuple[LayerSection, ...], GraphView | None]:
    """The sections of ``records`` (by module name and call) that ``make_sections`` makes, with their peaks'
    receptive fields (:mod:`featviz_report.fields.receptive`), their circuits (:mod:`featviz_report.circuits`,
    from the weights the capture pass saw the layers use, ``computed``, :mod:`featviz_report.capture.weights`;
    replaying ``stash`` where the capture pass kept one; with ``before``, checkpoint A's, beside them) and (unless
    ``config.graph`` is off) the graph of what ran, linked to them, for reports, comparisons and scans alike. The
    circuits' probing pass, then the fields' tracing and the graph's recording and layout (one pass of the model
    on its first sample), run on a second thread (in turn: each hooks the model) while the sections are made, and
    the circuits' strengths on a third once their pass is done: their forward passes, ``dot``'s process and the
    strengths' arithmetic run beside the sections' numpy and Pillow work instead of after it. Fields the tracer
    leaves to the gradient get a tenth of the time the job took so far (:mod:`featviz_report.fields.budget`)."""
    with ThreadPoolExecutor(2, thread_name_prefix="graph") as pool:
        traced = pool.submit(probe_circuits, job, stash)
        side = pool.submit(_side_after, traced, job)
        wiring = pool.submit(lambda: measure_circuits(job, records, traced.result(), computed))
        keys = [(record.module, call) for (_, call), record in records.items()]
        what = f"making {len(keys)} layers' sections" + (" and drawing the graph" if job.config.graph else "")
        with job.progress.working("sections", what):
            sections = make_sections()
            drawing, fields = side.result()
            found, samples = wiring.result()
        seconds = field_seconds(time.monotonic() - job.started, job.config.field_seconds)
        sections = with_fields(sections, keys, fields, job.progress, seconds)
        sections = with_circuits(sections, list(records), found, samples, before)
        return sections, None if drawing is None else _linked(drawing, sections)


def _side_after(
    probing: Future[Traced | str | None], job: Job[SampleSet]
) -> tuple[GraphView | None, ReceptiveFields | None]:
    """:func:`_side_pass` once the circuits' probing pass is done (both hook the model)."""
    wait([probing])
    return _side_pass(job)


def probe_circuits(job: Job[SampleSet], stash: Stash | None) -> Traced | str | None:
    """The circuits' probing pass (:func:`featviz_report.circuits.stage.probe`) on the job's first samples,
    replaying ``stash`` (what a capture pass kept of them) where there is one; None when
    ``config.circuit_inputs`` is 0."""
    if not job.config.circuit_inputs:
        return None
    candidates = (
        batch.to(device=job.device, dtype=job.dtype) for batch in first_samples(job.sample_set, job.config.batch_size)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the model's own warnings were shown when it ran for the report
        return probe(job.model, job.layers, candidates, stash)


def measure_circuits(
    job: Job[SampleSet],
    records: Mapping[tuple[str, int], LayerRecord],
    traced: Traced | str | None,
    computed: Computed,
) -> tuple[Found, int]:
    """What each shown channel of ``records``' Conv2d and Linear layers is built from, and the samples the
    attribution averaged over (:func:`featviz_report.circuits.stage.measure`), from the probing pass and the
    weights the layers computed with."""
    if traced is None:
        return {}, 0
    shown = shown_channels(records, job.config.max_channels)
    seconds = circuit_seconds(time.monotonic() - job.started)
    return measure(traced, job.layers, shown, job.config.circuit_inputs, seconds, computed)


def circuits(job: Job[SampleSet], run: Run) -> Found:
    """What each shown channel of ``run``'s layers is built from: :func:`probe_circuits` then
    :func:`measure_circuits` (a comparison's checkpoint A, beside B's in :func:`sections_and_graph`)."""
    return measure_circuits(job, run.records, probe_circuits(job, run.stash), run.computed)[0]


def _side_pass(job: Job[SampleSet]) -> tuple[GraphView | None, ReceptiveFields | None]:
    if not job.config.graph:
        return None, receptive_fields(job.model, _graph_inputs(job))
    return _graph_and_fields(job.model, _graph_inputs(job))


def _graph_and_fields(model: nn.Module, candidates: Iterable[torch.Tensor]) -> tuple[GraphView, ReceptiveFields | None]:
    """The graph (:func:`_model_graph`) and the receptive fields traced in its recording pass."""
    found: LayerFields = {}
    samples: list[torch.Tensor] = []

    def tracing(inputs: torch.Tensor) -> AbstractContextManager[None]:
        found.clear()
        samples.append(inputs[:1])
        return tracing_fields(model, inputs, found)

    drawing = _model_graph(model, candidates, tracing)
    if not samples:
        return drawing, None
    shape = (samples[-1].shape[1], samples[-1].shape[2], samples[-1].shape[3])
    return drawing, ReceptiveFields(model, shape, found, samples[-1])


def _graph_inputs(job: Job[SampleSet]) -> Iterator[torch.Tensor]:
    """What the graph is recorded on: the first sample, else (a model exported for whole batches) the
    first batch; on the job's device. Decoded from a copy of the sample set, whose list of skipped files
    is the report's and must not change."""
    samples = copy.copy(job.sample_set)
    for size in dict.fromkeys((1, job.config.batch_size)):
        batch = next(samples.batches(size), None)
        if batch is not None:
            yield batch.inputs.to(device=job.device, dtype=job.dtype)


def _model_graph(
    model: nn.Module,
    candidates: Iterable[torch.Tensor],
    beside: Callable[[torch.Tensor], AbstractContextManager[None]] | None = None,
) -> GraphView:
    """The graph of ``model`` recorded on the first of ``candidates`` it runs on, in eval mode (its modes
    restored after), and laid out (not yet linked: see :func:`_linked`); ``beside(inputs)``, when given,
    also sees the recording pass (:func:`.graph.record_graph`)."""
    graph, failure = None, "no sample could be used"
    with evaluating(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the model's own warnings were shown when it ran for the report
        for inputs in candidates:
            try:
                graph = record_graph(model, inputs, None if beside is None else beside(inputs))
                break
            except Exception as err:  # noqa: BLE001 - the model ran for the report; one sample may not
                failure = f"the recording pass failed ({type(err).__name__})"
    if graph is None:
        return GraphView(ModelGraph((), ()), None, (), f"no graph: {failure}")
    return layout_graph(graph)


def _linked(view: GraphView, sections: Sequence[LayerSection]) -> GraphView:
    """``view`` with the captured layers' boxes linked to their ``sections`` and flagged as they are."""
    return link_graph(view, {s.name: s.slug for s in sections}, {s.name: _flags(s) for s in sections})


def _flags(section: LayerSection) -> str:
    stats = section.stats
    unit = "unit" if section.kind == "vector" else "channel"
    parts = (
        [f"{stats.dead_channels} dead {unit}{'s' if stats.dead_channels != 1 else ''}"] if stats.dead_channels else []
    )
    if stats.nan or stats.inf:
        parts.append(f"{stats.nan} NaN, {stats.inf} Inf")
    return ", ".join(parts)


def new_report(
    model: nn.Module,
    config: ReportConfig,
    device: torch.device,
    input_shape: tuple[int, ...],
    sections: tuple[LayerSection, ...],
    shapes: dict[str, tuple[int, ...]],
    *,
    samples: tuple[Sample, ...] = (),
    skipped: tuple[tuple[str, str], ...] = (),
    notes: tuple[str, ...] = (),
    cams: tuple[CamView, ...] = (),
    dataset: DatasetScan | None = None,
    graph: GraphView | None = None,
) -> Report:
    """A report's header facts, navigation tree and colour bars around ``sections``."""
    return Report(
        title=config.title or config.model_name or type(model).__name__,
        model_name=config.model_name or type(model).__name__,
        device=_device_name(device),
        input_shape=input_shape,
        params=sum(p.numel() for p in model.parameters()),
        colormap=config.colormap,
        scale=config.scale,
        colorbar=colorbar(config.colormap),
        weight_colorbar=colorbar("diverging"),
        samples=samples,
        skipped_samples=skipped,
        layers=sections,
        tree=module_tree(model, shapes, {s.name: s.slug for s in sections}),
        notes=notes,
        version=__version__,
        cams=cams,
        dataset=dataset,
        graph=graph,
        featviz=settings_record(config, device, float_dtype(model)) if config.featviz else None,
        random_weights=config.random_weights,
    )


def warn_random_weights(
    config: ReportConfig, progress: Progress, who: str, meaning: str = "its predictions are meaningless"
) -> None:
    """One line on stderr, before the model runs, when ``config.random_weights`` says that ``who`` is an
    untrained initialisation, saying what that means (``meaning``)."""
    if config.random_weights:
        progress.warn(f"random weights: {who} runs on an untrained random initialisation (no --weights), so {meaning}")


def finish(
    report: Report, out: str | Path | None, json_out: str | Path | None, config: ReportConfig, progress: Progress
) -> Report:
    """Write what was asked for and return what was written. A single page over its budget is cut to
    fit (:mod:`featviz_report.render.budget`); that is found while writing it, so a page that fits costs nothing."""
    if out is None and json_out is None:
        return report
    budget = int(config.max_size * 1e6) if config.max_size and config.format == "html" and out is not None else None
    with progress.working("page", f"writing {out if out is not None else json_out}"):
        if not write_report(report, out, config.format, json_out, progress, budget):
            report, left_out = fit_page(report, budget or 0)
            if left_out:
                progress.warn(left_out)
            write_report(report, out, config.format, json_out, progress)
    if out is None:
        return report
    page = Path(out) / "index.html" if config.format == "dir" else Path(out)
    return dataclasses.replace(report, location=str(page))


def cam_view(job: Job[SampleSet], label: str = "") -> CamView:
    """Class activation maps of every sample for ``config.cam_layer`` (default: the last Conv2d)."""
    config = job.config
    layer = config.cam_layer or default_cam_layer(job.model)
    images, targets, empty = [], [], []
    stage, skipped = f"grad-cam {label}".strip(), len(job.sample_set.skipped)
    for batch in job.sample_set.batches(config.batch_size):
        inputs = batch.inputs.to(device=job.device, dtype=job.dtype)
        cams = class_activation_maps(
            job.model, layer, inputs, config.target_class, config.cam or "gradcam", config.output
        )
        for thumbnail, cam, target in zip(batch.thumbnails, cams.maps, cams.targets):
            pixels = overlay(thumbnail, cam)
            images.append(Png(png_rgb(pixels), pixels.shape[1], pixels.shape[0]))
            targets.append(_label(target, config.labels))
            empty.append(not cam.any())
        job.progress.update(stage, len(images) + skipped, len(job.sample_set))
    return CamView(layer, config.cam or "gradcam", label, tuple(images), tuple(targets), tuple(empty))


def _label(index: int, labels: Sequence[str] | None) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else f"class {index}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def run_passes(job: Job[SampleSet], encoder: PngEncoder) -> Run:
    """All samples through the model, their atlases and thumbnails given to ``encoder`` (still being
    encoded when this returns: the sections and the page wait for each one only where they need it).
    Ordering channels by a statistic takes a first pass that only ranks them: atlases are encoded as
    batches go, so the order must be known before. With circuits on, the first samples' captured outputs are kept
    (:mod:`featviz_report.circuits.stash`)."""
    orders = None
    with stashing(job.model, job.layers, SAMPLES) if job.config.circuit_inputs else nullcontext() as stash:
        if job.config.order != "index":
            ranking = capture_pass(job, None, None)
            orders = {key: record.stats.ranking(job.config.order) for key, record in ranking.records.items()}
        run = capture_pass(job, encoder, orders)
    return dataclasses.replace(run, stash=stash)


def capture_pass(
    job: Job[SampleSet], encoder: PngEncoder | None, orders: dict[tuple[str, int], np.ndarray] | None, warn: bool = True
) -> Run:
    """Every batch through the model with hooks; with an ``encoder``, tiles are encoded while the next
    batch runs, channels in ``orders`` (by layer) or by index. Skipped samples are warned about in the
    encoding pass (when ``warn``): every pass sees the same files."""
    model, sample_set, config, progress = job.model, job.sample_set, job.config, job.progress
    records: dict[tuple[str, int], LayerRecord] = {}
    thumbs: list[tuple[str, Future[bytes | Spooled], tuple[int, int]]] = []
    predictions: list[tuple[Prediction, ...]] = []
    notes: dict[str, None] = {}  # in order, once each
    seen = 0
    stage = "capture" if encoder is not None else "rank"
    with (
        ThreadPolicy() as threads,
        capturing(model, job.layers, config.scale) as capture,
        torch.inference_mode(),
    ):
        for batch in sample_set.batches(config.batch_size):
            threads.refresh()
            inputs = batch.inputs.to(device=job.device, dtype=job.dtype)
            try:
                outputs = model(inputs)
            except Exception as err:  # noqa: BLE001 - the user's model may raise anything; name where
                last = capture.last_call
                raise ModelError(_forward_failure(err, inputs, last, capture.last_returned)) from err
            scores = class_scores(outputs, len(batch.names), config.output)
            notes.update(dict.fromkeys(n for n in (scores.note, _label_mismatch(config.labels, scores.tensor)) if n))
            predictions.extend(_predictions(scores.tensor, len(batch.names), config.labels))
            if encoder is not None:
                for name, pixels in zip(batch.names, batch.thumbnails):
                    thumbs.append((name, encoder.submit(png_rgb, pixels), (pixels.shape[1], pixels.shape[0])))
            for key, shape, reduced in capture.drain():
                record = records.get(key)
                if record is None:
                    name = call_name(*key)
                    stats = new_accumulator(shape, config.top_k)
                    order = orders.get(key) if orders else None
                    module = capture.modules[key[0]]
                    record = records[key] = LayerRecord.create(name, module, shape, stats, config.max_channels, order)
                record.stats.add(reduced, seen)
                if encoder is not None:
                    _submit_maps(encoder, record, reduced, config)
            seen += len(batch.names)
            release_freed_memory()
            progress.update(stage, seen + len(sample_set.skipped), len(sample_set))
        if encoder is not None and warn:
            for name, reason in sample_set.skipped:
                progress.warn(f"skipped sample {name!r}: {reason}")
            for note in notes:
                progress.warn(note)
        _require_usable(sample_set)
        samples = tuple(
            Sample(i, name, Png(future, *size), pred[0] if pred else None, pred)
            for i, ((name, future, size), pred) in enumerate(zip(thumbs, predictions))
        )
    found = [*notes, *_skipped_note(capture.skipped)]
    return Run(samples, records, found, capture.shapes, computed=capture.weights.computed(job.layers))


def _require_usable(sample_set: SampleSet) -> None:
    """Fail when no sample file could be used."""
    if sample_set.skipped and len(sample_set.skipped) == len(sample_set):
        listed = first_few([f"{name!r}: {reason}" for name, reason in sample_set.skipped], sep="; ")
        raise InputError(f"none of the {len(sample_set)} sample files could be used: {listed}")


def _skipped_note(skipped: dict[str, str]) -> list[str]:
    """One line about selected layers whose output cannot be shown, naming a few of them."""
    if not skipped:
        return []
    examples = first_few([f"{name} ({what})" for name, what in skipped.items()])
    return [f"{len(skipped)} selected layers give no N×C×H×W, N×L×D or N×F output and are not shown: {examples}"]


def _forward_failure(
    err: Exception, inputs: torch.Tensor, last: tuple[str, nn.Module, tuple[int, ...]] | None, returned: bool
) -> str:
    """What went wrong in the forward pass, in the user's terms where the failing layer tells."""
    first = first_line(err)
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


TOP_CLASSES = 5


def _predictions(scores: torch.Tensor | None, count: int, labels: Sequence[str] | None) -> list[tuple[Prediction, ...]]:
    """The top classes (up to 5) with softmax probabilities per sample, from ``N×K`` class scores."""
    if scores is None:
        return [()] * count
    probs = torch.softmax(scores.float(), dim=1)
    top_p, top_i = probs.topk(min(TOP_CLASSES, scores.shape[1]), dim=1)
    names = labels if labels is not None and len(labels) == scores.shape[1] else None
    return [
        tuple(Prediction(i, names[i] if names else f"class {i}", p) for p, i in zip(row_p, row_i))
        for row_p, row_i in zip(top_p.cpu().tolist(), top_i.cpu().tolist())
    ]


def _label_mismatch(labels: Sequence[str] | None, scores: torch.Tensor | None) -> str | None:
    if labels is None or scores is None or len(labels) == scores.shape[1]:
        return None
    return f"{len(labels)} labels for a model with {scores.shape[1]} classes: labels are not used, classes are numbered"


def _submit_maps(encoder: PngEncoder, record: LayerRecord, reduced: Reduced, config: ReportConfig) -> None:
    ids = list(record.channel_ids)
    tiles = reduced.tiles.numpy()
    if ids != list(range(tiles.shape[1])):  # a subset or another order: a copy; all in order: a view
        tiles = tiles[:, ids]
    cols = grid_shape(len(ids))[1]
    for sample_tiles in tiles:
        record.maps.append(encoder.submit(png_palette, tile_atlas(sample_tiles, cols), config.colormap))
