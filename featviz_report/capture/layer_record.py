"""What the capture passes collect for one layer call: the kind of its output, running per-channel
statistics, which channels the atlases show, and one atlas (being encoded) per sample.

Every pipeline makes its records here (:meth:`LayerRecord.create`), so the channel count and the shown
channels are decided in one place; sections (:mod:`featviz_report.capture.sections`) only read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from torch import nn

from ..render.spool import Spooled
from .accumulate import ChannelAccumulator

__all__ = ["OutputKind", "output_kind", "channel_count", "new_accumulator", "call_name", "LayerRecord"]

OutputKind = Literal["maps", "sequence", "vector"]
_KINDS: dict[int, OutputKind] = {3: "maps", 2: "sequence", 1: "vector"}


def output_kind(shape: Sequence[int]) -> OutputKind:
    """A per-sample output shape's kind: ``C×H×W`` maps, an ``L×D`` sequence or an ``F`` vector."""
    return _KINDS[len(shape)]


def channel_count(shape: Sequence[int]) -> int:
    """Channels of maps; features (the last axis) of a sequence or a vector."""
    return shape[0] if output_kind(shape) == "maps" else shape[-1]


def call_name(name: str, call: int) -> str:
    """How a module's call is named in the report: ``conv1``, then ``conv1 (call 2)``, ..."""
    return name if call == 0 else f"{name} (call {call + 1})"


def new_accumulator(shape: Sequence[int], top_k: int) -> ChannelAccumulator:
    """Running statistics for an output of ``shape``, keeping each channel's ``top_k`` samples."""
    return ChannelAccumulator(channel_count(shape), top_k)


@dataclass
class LayerRecord:
    """What the batches of one (module, call) have produced: statistics and one atlas per sample."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    stats: ChannelAccumulator
    channel_ids: tuple[int, ...]  # the channels the atlas tiles show, in tile order ((0,): one tile)
    maps: list[Future[bytes | Spooled]] = field(default_factory=list)

    @property
    def kind(self) -> OutputKind:
        return output_kind(self.shape)

    @classmethod
    def create(
        cls,
        name: str,
        module: nn.Module,
        shape: tuple[int, ...],
        stats: ChannelAccumulator,
        max_channels: int | None,
        order: np.ndarray | None = None,
    ) -> LayerRecord:
        """A record whose atlases show ``max_channels`` channels (all by default) in ``order`` (by index by
        default); a sequence or vector is one tile."""
        if output_kind(shape) != "maps":
            return cls(name, module, shape, stats, (0,))
        ids = order if order is not None else np.arange(shape[0])
        return cls(name, module, shape, stats, tuple(int(i) for i in ids[: max_channels or shape[0]]))
