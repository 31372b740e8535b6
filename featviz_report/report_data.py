"""Plain dataclasses that describe a finished report: numbers, text and PNGs; no torch, no PIL.

The pipeline fills them, the renderers read them. Everything here is what the page and the JSON
sidecar show, nothing more.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from .render.spool import Spooled

__all__ = [
    "PngSource",
    "Png",
    "Grid",
    "Histogram",
    "Peak",
    "Peaks",
    "Stats",
    "ChannelStats",
    "Prediction",
    "Sample",
    "FilterView",
    "LayerSection",
    "FeatureImage",
    "ChannelCard",
    "CardImage",
    "LayerCircuit",
    "TrainingStep",
    "ChannelChange",
    "LayerChange",
    "Comparison",
    "CamView",
    "DatasetScan",
    "SourceImage",
    "TreeNode",
    "Report",
]


PngSource = bytes | Spooled | Future[bytes | Spooled]


@dataclass(frozen=True)
class Png:
    """One encoded image and its pixel size; the bytes are in memory or in a spool file, or still being
    encoded (a future: asking for the bytes waits for them). A PNG unless ``mime`` says otherwise (a
    scan's photographs are WebP, see :mod:`featviz_report.scan.sources`)."""

    source: PngSource
    width: int
    height: int
    mime: str = "image/png"

    @property
    def data(self) -> bytes:
        source = self._encoded
        return source if isinstance(source, bytes) else source.read()

    @property
    def size(self) -> int:
        """Length of the PNG in bytes."""
        source = self._encoded
        return len(source) if isinstance(source, bytes) else source.length

    @property
    def _encoded(self) -> bytes | Spooled:
        return self.source.result() if isinstance(self.source, Future) else self.source


@dataclass(frozen=True)
class Grid:
    """An atlas: ``count`` tiles of ``tile_height×tile_width`` laid out row-major in ``rows×cols``.

    ``scale`` is the integer magnification the page shows it at, so small maps stay crisp.
    """

    image: Png
    rows: int
    cols: int
    tile_height: int
    tile_width: int
    count: int
    scale: int


@dataclass(frozen=True)
class Histogram:
    """Counts in equal-width bins from ``lo`` to ``hi``."""

    counts: tuple[float, ...]
    lo: float
    hi: float


class Peak(NamedTuple):
    """One of a channel's top-activating samples: its index, the peak value and where it peaked."""

    sample: int
    value: float
    row: int
    col: int


@dataclass(frozen=True, eq=False)
class Peaks:
    """The top samples of every channel as ``k×C`` arrays, best first: ``sample`` (-1 for an empty
    slot), peak ``value``, and the peak's ``row`` and ``col`` in the channel's map; in a dataset scan
    also the peak's receptive field ``box`` (:mod:`featviz_report.fields.receptive`)."""

    sample: np.ndarray
    value: np.ndarray
    row: np.ndarray
    col: np.ndarray
    box: np.ndarray | None = None  # k×C×4 receptive fields of the peaks, x0 y0 x1 y1 (set in a dataset scan)

    def channel(self, index: int) -> list[Peak]:
        keep = self.sample[:, index] >= 0
        columns = (a[keep, index].tolist() for a in (self.sample, self.value, self.row, self.col))
        return [Peak(*entry) for entry in zip(*columns)]

    def lists(self) -> list[list[list[float]]]:
        """Per channel, ``[sample, value, row, col]`` per kept peak (for JSON)."""
        columns = (self.sample.T.tolist(), np.round(self.value, 6).T.tolist(), self.row.T.tolist(), self.col.T.tolist())
        return [[[s, v, r, c] for s, v, r, c in zip(*channel) if s >= 0] for channel in zip(*columns)]

    def boxes(self) -> list[list[list[int]]] | None:
        """Per channel, each kept peak's receptive field ``[x0, y0, x1, y1]`` in input pixels (scans)."""
        if self.box is None:
            return None
        return [
            [
                self.box[rank, channel].tolist()
                for rank in range(self.sample.shape[0])
                if self.sample[rank, channel] >= 0
            ]
            for channel in range(self.sample.shape[1])
        ]


@dataclass(frozen=True)
class Stats:
    """Activation statistics of a whole layer over every sample and position."""

    min: float
    max: float
    mean: float
    std: float
    zero_fraction: float  # of every value, exactly 0
    nonpositive_fraction: float  # of every value, finite and <= 0: what a ReLU after the layer sets to 0
    nan: int
    inf: int
    dead_channels: int
    saturated_channels: int
    histogram: Histogram


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics over every sample and position, one entry per channel in index order."""

    min: tuple[float, ...]
    max: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    zero_fraction: tuple[float, ...]
    top: Peaks

    @functools.cached_property
    def selectivity(self) -> np.ndarray:
        """Per channel, how far its top peaks stand above its mean, in standard deviations (0 without spread)."""
        kept = self.top.sample >= 0
        count = kept.sum(0)
        peaks = np.where(kept, self.top.value, 0.0).sum(0) / np.maximum(count, 1)
        std = np.asarray(self.std, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = (peaks - np.asarray(self.mean, dtype=np.float64)) / std
        return np.where((count > 0) & (std > 0), spread, 0.0)

    def flags(self, channel: int) -> tuple[str, ...]:
        """``dead`` (never above zero) and ``constant`` (one value other than zero everywhere)."""
        low, high = self.min[channel], self.max[channel]
        return tuple(name for name, on in (("dead", high <= 0), ("constant", low == high != 0)) if on)


@dataclass(frozen=True)
class Prediction:
    """The model's top-1 class for one sample."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Sample:
    """One input as the model saw it (after resizing, before normalisation)."""

    index: int
    name: str
    thumbnail: Png
    prediction: Prediction | None
    top_classes: tuple[Prediction, ...]  # the best classes, highest first (prediction is the first)


@dataclass(frozen=True)
class FilterView:
    """A layer's weights as tiles: one per output channel (first layer) or one per kernel."""

    grid: Grid
    caption: str
    colormap: str | None
    value_range: tuple[float, float]
    note: str | None


@dataclass(frozen=True)
class ChannelChange:
    """One channel under checkpoint A (before) and B (after)."""

    channel: int
    mean_before: float
    mean_after: float
    std_before: float
    std_after: float
    shift: float  # |mean B − mean A| / max(std A, std B)
    state: str  # "died", "woke" or ""
    cosine: float | None  # of the channel's filter weights, A vs B


@dataclass(frozen=True)
class LayerChange:
    """How one layer differs between the checkpoints; the section's own fields describe B."""

    weight_change: float | None  # ‖B−A‖ / ‖A‖ of the layer's parameters (weight and bias)
    mean_cosine: float | None
    min_cosine: float | None
    died: tuple[int, ...]
    woke: tuple[int, ...]
    channels: tuple[ChannelChange, ...]  # the most changed first; the maps show these, in this order
    stats_before: Stats
    channels_before: ChannelStats
    maps_before: tuple[Grid | None, ...]
    filters_before: FilterView | None


@dataclass(frozen=True)
class Comparison:
    """Two checkpoints on the same samples: names, A's predictions, and the samples whose class changed."""

    before: str
    after: str
    predictions_before: tuple[Prediction | None, ...]
    flipped: tuple[int, ...]
    ranked: tuple[int, ...] = ()  # indices into Report.layers: compared layers, largest weight change first
    died: int = 0  # channels active under A and never under B, over every layer
    woke: int = 0


@dataclass(frozen=True)
class CamView:
    """Class activation maps of one layer over every sample, as overlays on the inputs."""

    layer: str
    method: str
    label: str  # which checkpoint, in a comparison; else ""
    images: tuple[Png, ...]
    targets: tuple[str, ...]  # the class each map explains
    empty: tuple[bool, ...]  # per map: zero everywhere (no positive gradient-weighted evidence at this layer)


@dataclass(frozen=True)
class DatasetScan:
    """Where a scan report's numbers come from: an image folder scanned by one or more processes."""

    source: str
    images: int
    skipped: int
    ranks: int
    seconds: float
    files: dict[int, str]  # image index → name, for the images among the channels' top-k
    sources: dict[int, SourceImage]  # image index → its picture, stored once, for the images the cards show


@dataclass(frozen=True)
class SourceImage:
    """One of a scan's top images, stored once for every crop of it the page shows: the part of the input
    (as the model saw it) those crops cover, ``left``, ``top``, ``width`` × ``height`` in input pixels, as
    ``picture`` (at the resolution the most enlarged of them is shown at)."""

    picture: Png
    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class FeatureImage:
    """A channel's feature visualisation: the image optimised to excite it (pixel space, the model's input
    size) and the channel's mean activation on exactly that 8-bit image."""

    channel: int
    image: Png
    activation: float


@dataclass(frozen=True)
class CardImage:
    """One of a channel's top dataset images in a scan: the square ``crop`` shown around its peak (top,
    left, side in input pixels; the receptive field outlined in it), the peak's value, the file's name,
    the image's index and the field ``box`` (x0, y0, x1, y1 in input pixels; None where the layer has none).
    The pixels are the image's :class:`SourceImage`, in the report's ``dataset.sources``."""

    crop: tuple[int, int, int]
    value: float
    file: str
    sample: int
    box: tuple[int, ...] | None


@dataclass(frozen=True)
class ChannelCard:
    """One channel of a dataset scan: its statistics over the dataset, flags, and top images, best first.
    ``selectivity``: how far its top images stand out, (mean of their peaks − channel mean) / channel std."""

    channel: int
    mean: float
    max: float
    std: float
    zero_fraction: float
    selectivity: float
    flags: tuple[str, ...]  # "dead" (never positive), "constant" (one non-zero value everywhere)
    tops: tuple[CardImage, ...]
    feature: FeatureImage | None = None  # --featviz: the image optimised to excite the channel
    left_out: int = 0  # top images the scan kept that this page leaves out (its budget: see scan_budget)


@dataclass(frozen=True, eq=False)
class LayerCircuit:
    """What each shown channel of a Conv2d or Linear layer is built from: its strongest inputs among the
    channels of the captured layers whose outputs reach it (``sources``, section slugs) without passing
    through another captured layer (see :mod:`featviz_report.circuits`). ``method``: ``expanded weights``
    (the path between is linear) or ``attribution`` (the mean gradient over ``samples`` samples).

    Arrays of ``channels × top``, per shown output channel (``channels``, in the page's order), strongest
    first: ``source`` (index into ``sources``; -1: an empty slot), the input ``channel`` and its signed
    ``weight``; ``patterns``: the weights' spatial patterns as one atlas, a row per shown channel and a tile
    per slot (None: 1×1 kernels, features without a map). In a comparison (this is B's), ``before`` is A's
    circuit and ``weight_before`` A's strength for each of B's inputs (NaN: that input does not reach A's)."""

    method: str
    sources: tuple[str, ...]
    channels: np.ndarray
    source: np.ndarray
    channel: np.ndarray
    weight: np.ndarray
    patterns: Grid | None
    samples: int
    before: LayerCircuit | None = None
    weight_before: np.ndarray | None = None


@dataclass(frozen=True)
class LayerSection:
    """Everything the report shows about one captured layer (one call of one module)."""

    name: str
    slug: str  # its id: the section's address is #layer-<slug> (see featviz_report.render.anchors)
    type: str
    description: str
    output_shape: tuple[int, ...]
    kind: str  # maps (C×H×W), sequence (L×D) or vector (F): see featviz_report.capture.layer_record.output_kind
    params: int
    stats: Stats
    channels: ChannelStats
    channel_ids: tuple[int, ...]  # the channels the map tiles show, in tile order (empty: not a map)
    maps: tuple[Grid | None, ...]  # one per sample; None: left out to keep the page in its size budget
    filters: FilterView | None
    weight_histogram: Histogram | None
    notes: tuple[str, ...]
    change: LayerChange | None = None  # set in a comparison of two checkpoints
    cards: tuple[ChannelCard, ...] = ()  # a dataset scan: one per shown channel, its top images cut around the peak
    feature_images: tuple[FeatureImage, ...] = ()  # --featviz: one per channel, in the maps' order
    field_unknown: str | None = None  # a map layer whose peaks have no receptive field: why (untrusted text)
    circuit: LayerCircuit | None = None  # a Conv2d or Linear layer: what its shown channels are built from
    circuit_unknown: str | None = None  # a Conv2d or Linear layer whose inputs cannot be given: why


@dataclass(frozen=True)
class TreeNode:
    """One module in the navigation tree; ``slug`` links to its section when it was captured."""

    name: str
    label: str
    type: str
    output_shape: tuple[int, ...] | None
    slug: str | None
    children: tuple[TreeNode, ...]


@dataclass(frozen=True)
class GraphNode:
    """One call in the recorded forward pass: ``kind`` is ``input``, ``module``, ``op`` or ``output``."""

    id: int
    kind: str
    name: str  # a module's qualified name, an operation's function name
    type: str  # the module's class, or the operation's function name
    shape: tuple[int, ...]  # the first output's shape without the batch axis (empty: not a tensor)
    scope: str  # the qualified name of the module the call happened in ("" at the top)
    call: int = 0  # which call of this module (0: the first)


@dataclass(frozen=True)
class ModelGraph:
    """Nodes in the order they ran, edges as (from, to) node ids, and whether recording was cut short."""

    nodes: tuple[GraphNode, ...]
    edges: tuple[tuple[int, int], ...]
    truncated: bool = False


@dataclass(frozen=True)
class GraphBox:
    """One box of a drawn graph (a call, or a module's calls folded into one), placed in SVG units."""

    kind: str  # input, module, op, output, or group (a folded module)
    name: str
    type: str
    shape: tuple[int, ...]
    label: tuple[str, ...]  # lines of text in the box
    x: float
    y: float
    width: float
    height: float
    href: str  # "#layer-…" for a captured layer, "#module-…" for a folded module, "" otherwise
    slug: str  # the captured layer's section slug ("" otherwise), for the highlight that follows the page
    flags: str  # e.g. "3 dead channels" for a captured layer
    merge: bool  # more than one input: where branches join (an add, a concatenation)
    calls: int = 1  # calls folded into this box


@dataclass(frozen=True)
class GraphCluster:
    """The frame around the calls made inside one module (``layer1``, ``layer1.0``)."""

    name: str
    left: float
    top: float
    width: float
    height: float
    depth: int


@dataclass(frozen=True)
class GraphPicture:
    """One laid-out drawing: frames, edges (SVG path data) and boxes."""

    width: float
    height: float
    boxes: tuple[GraphBox, ...]
    clusters: tuple[GraphCluster, ...]
    edges: tuple[str, ...]


@dataclass(frozen=True)
class GraphDetail:
    """The inside of a module folded into one box of the overview, drawn on its own."""

    anchor: str  # the element id, "module-…"
    name: str
    type: str
    picture: GraphPicture


@dataclass(frozen=True)
class GraphView:
    """The graph of what ran: the recording, an overview (big models fold their repeated blocks into
    one box each, drawn inside below), or no drawing and a note saying why."""

    recorded: ModelGraph
    overview: GraphPicture | None
    details: tuple[GraphDetail, ...] = ()
    note: str = ""
    layers: dict[int, str] = field(default_factory=dict)  # node id → captured layer's section slug


@dataclass(frozen=True)
class TrainingStep:
    """Where a report stands in a training run (a :class:`~featviz_report.Recorder` step): its step, the
    step recorded before it and each layer's relative weight change since then (‖W−W₀‖/‖W₀‖)."""

    step: int
    previous: int | None
    weight_change: dict[str, float | None]


@dataclass(frozen=True)
class Report:
    """A whole report: header facts, the input samples and one section per captured layer."""

    title: str
    model_name: str
    device: str
    input_shape: tuple[int, ...]
    params: int
    colormap: str
    scale: str
    colorbar: Png
    weight_colorbar: Png
    samples: tuple[Sample, ...]
    skipped_samples: tuple[tuple[str, str], ...]
    layers: tuple[LayerSection, ...]
    tree: tuple[TreeNode, ...]
    notes: tuple[str, ...]
    version: str
    comparison: Comparison | None = None
    cams: tuple[CamView, ...] = ()
    dataset: DatasetScan | None = None  # set in a dataset scan's report (which has no samples)
    graph: GraphView | None = None
    featviz: dict[str, object] | None = None  # the settings feature visualisations were made with (--featviz)
    training: TrainingStep | None = None  # set by a Recorder: this report is one step of a training run
    location: str = ""  # where the page was written ("" when it was not)
    random_weights: bool = False  # the model's (in a comparison, A's) weights are an untrained initialisation

    # How a notebook draws a report (``full``: everything, else a compact view): set by
    # :mod:`featviz_report.render.notebook` when it is imported (every pipeline imports it), so that these data
    # classes import nothing that draws them.
    notebook_view: ClassVar[Callable[[Report, bool], str] | None] = None

    def _repr_html_(self) -> str:
        """Jupyter shows the report itself, compact (see :mod:`featviz_report.render.notebook`)."""
        return self.show()._repr_html_()

    def show(self, full: bool = False) -> NotebookView:
        """The report for a notebook cell: compact (at most 2 MB) unless ``full``."""
        view = Report.notebook_view
        if view is None:
            text = f"<pre>{html.escape(repr(self.title))}: import featviz_report.render.notebook to view it</pre>"
            return NotebookView(text)
        return NotebookView(view(self, full))


@dataclass(frozen=True)
class NotebookView:
    """HTML a notebook displays (``_repr_html_``): what :meth:`Report.show` returns."""

    html: str

    def _repr_html_(self) -> str:
        return self.html
