"""Every option of a report, with its default, as one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

__all__ = [
    "ReportConfig",
    "IMAGE_SUFFIXES",
    "LIMITS",
    "COLORMAPS",
    "SCALES",
    "ORDERS",
    "FORMATS",
    "DEVICES",
    "DEFAULT_MAX_SIZE_MB",
    "CAM_METHODS",
]

COLORMAPS = ("viridis", "magma", "twilight", "gray")
SCALES = ("channel", "layer", "sigmoid", "percentile")
ORDERS = ("index", "mean", "variance", "max")
FORMATS = ("html", "dir")
DEVICES = ("auto", "cpu", "cuda", "mps")
CAM_METHODS = ("gradcam", "gradcam++")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# past these, memory (or patience) runs out first
LIMITS = {"input_size": 8192, "top_k": 1000, "batch_size": 65536, "featviz_steps": 100_000, "circuit_inputs": 64}
DEFAULT_MAX_SIZE_MB = 64.0  # a single page this size opens in Chromium in about a second; 225 MB takes minutes


@dataclass(frozen=True)
class ReportConfig:
    """Options shared by the CLI and :func:`featviz_report.build_report`.

    ``input_size`` and ``normalize`` left as ``None`` mean "what the model suggests": the demo and
    torchvision models carry their own; any other model gets 224 and no normalisation. ``strict`` turns
    an unreadable sample file from a warning into an error; ``quiet`` silences progress (warnings are
    always printed). ``cam`` (``gradcam`` or ``gradcam++``) adds class activation maps of ``cam_layer``
    (default: the last Conv2d) for ``target_class`` (default: each sample's top class). ``output`` picks
    the class scores of a model that returns several tensors, by tuple index or dict key (default: see
    :mod:`featviz_report.capture.logits`). ``loader_workers``: processes decoding images in a scan. ``graph``: draw
    the graph of what ran (one more forward pass, of one sample; see :mod:`featviz_report.graph.record`).
    ``max_size`` (MB) is the budget of a single-file page (``None``: no limit; see
    :mod:`featviz_report.render.budget`). ``featviz``: layer globs whose channels get an optimised image each
    (``featviz_steps`` steps; see :mod:`featviz_report.featvis.optimise`), cached under ``cache_dir`` (default:
    ``$XDG_CACHE_HOME/featviz-report``). ``random_weights``: the model's weights are an untrained random
    initialisation (in a comparison, A's: B's come from a file); a warning, the page's header and the JSON say so,
    and every prediction is marked meaningless. The command line sets it for a ``torchvision:`` or ``timm:`` spec
    without ``--weights``; an ``nn.Module`` cannot tell.
    ``field_seconds``: how long receptive fields from the gradient may take (``None``: a tenth of the time
    the report took before them, at least 2 s; see :mod:`featviz_report.fields.budget`).
    ``circuit_inputs``: each shown channel of a Conv2d or Linear layer gets its this many strongest inputs among
    the channels of the captured layers that feed it (0: none; see :mod:`featviz_report.circuits`).
    """

    title: str | None = None
    model_name: str | None = None
    layers: tuple[str, ...] = ()
    max_channels: int | None = None
    colormap: str = "viridis"
    scale: str = "channel"
    order: str = "index"
    device: str = "auto"
    batch_size: int = 8
    input_size: int | None = None
    normalize: str | None = None
    labels: tuple[str, ...] | None = None
    format: str = "html"
    max_size: float | None = DEFAULT_MAX_SIZE_MB
    cam: str | None = None
    cam_layer: str | None = None
    target_class: int | None = None
    max_filter_grid: int = 32
    top_k: int = 4
    output: str | None = None
    workers: int | None = None
    loader_workers: int = 2
    graph: bool = True
    featviz: tuple[str, ...] = ()
    featviz_steps: int = 512
    cache_dir: str | None = None
    strict: bool = False
    quiet: bool = True
    random_weights: bool = False
    field_seconds: float | None = None
    circuit_inputs: int = 8

    def __post_init__(self) -> None:
        if self.colormap not in COLORMAPS:
            raise UsageError(f"unknown colormap {self.colormap!r}; choose one of {', '.join(COLORMAPS)}")
        if self.scale not in SCALES:
            raise UsageError(f"unknown scale {self.scale!r}; choose one of {', '.join(SCALES)}")
        if self.order not in ORDERS:
            raise UsageError(f"unknown channel order {self.order!r}; choose one of {', '.join(ORDERS)}")
        if self.format not in FORMATS:
            raise UsageError(f"unknown format {self.format!r}; choose html or dir")
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.cam is not None and self.cam not in CAM_METHODS:
            raise UsageError(f"unknown CAM method {self.cam!r}; choose one of {', '.join(CAM_METHODS)}")
        if self.loader_workers < 0:
            raise UsageError(f"loader-workers must be at least 0, got {self.loader_workers}")
        if self.field_seconds is not None and not self.field_seconds >= 0:
            raise UsageError(f"field-seconds must be 0 or more, got {self.field_seconds}")
        if not 0 <= self.circuit_inputs <= LIMITS["circuit_inputs"]:
            raise UsageError(f"circuit-inputs must be from 0 to {LIMITS['circuit_inputs']}, got {self.circuit_inputs}")
        if self.max_size is not None and not self.max_size > 0:
            raise UsageError(f"max-size must be a positive number of MB, got {self.max_size}")
        counts = ("batch_size", "max_channels", "input_size", "max_filter_grid", "workers", "top_k", "featviz_steps")
        for name in counts:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {value}")
            if value is not None and value > LIMITS.get(name, value):
                raise UsageError(f"{name.replace('_', '-')} must be at most {LIMITS[name]:,}, got {value:,}")
