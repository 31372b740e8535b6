"""A job: one model opened on its samples, with what every pass over them works with (a report's, a
comparison's, a scan's): the layers to capture, chosen once (:func:`~featviz_report.capture.hooks.select_layers`),
the device and the inputs' dtype, the options, where progress goes, when it was opened, and the hash of the
model's weights, taken once, when first asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import nn

from ..config import ReportConfig
from ..errors import ModelError
from ..models.resolve import weights_digest
from ..runtime.device import float_dtype, pick_device
from ..runtime.progress import Progress
from .hooks import select_layers
from .samples import SampleSet

__all__ = ["Job", "open_job"]

S = TypeVar("S", bound=SampleSet, covariant=True)  # a job on a scan's files is a job on samples
T = TypeVar("T", bound=SampleSet)


@dataclass(frozen=True)
class Job(Generic[S]):
    """What every pass over the samples works with, and when it was opened."""

    model: nn.Module
    layers: list[tuple[str, nn.Module]]
    sample_set: S
    device: torch.device
    dtype: torch.dtype
    config: ReportConfig
    progress: Progress
    started: float = dataclasses.field(default_factory=time.monotonic)

    @functools.cached_property
    def weights(self) -> str:
        """The SHA-256 of the model's weights (:func:`~featviz_report.models.resolve.weights_digest`), which the
        feature-visualisation cache and a scan's saved state both key on; what it leaves out is warned about once."""
        return weights_digest(self.model, self.progress.warn)


def open_job(
    model: nn.Module, sample_set: T, config: ReportConfig, progress: Progress, device: torch.device | None = None
) -> Job[T]:
    """What the passes over ``sample_set`` need, the layers to capture chosen and the device picked
    (``config.device``'s, unless ``device`` says). A model whose lazy layers have not run yet is refused: their
    parameters would take their shapes inside the report's inference mode, as tensors no training can use."""
    lazy = [name for name, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ModelError(
            f"{len(lazy)} parameters are not initialised yet ({lazy[0]}, a lazy layer): call the model once on a "
            "batch before the report, so they take their shapes"
        )
    return Job(
        model=model,
        layers=select_layers(model, config.layers, config.featviz),
        sample_set=sample_set,
        device=pick_device(config.device) if device is None else device,
        dtype=float_dtype(model),
        config=config,
        progress=progress,
    )
