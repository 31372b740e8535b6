"""Two checkpoints of one architecture: what changed in the weights, the activations and the predictions.

Weights: per captured layer, the relative change ‖B−A‖/‖A‖ of its parameters and the cosine similarity of
each output channel's filter (A vs B). Activations: per channel, the shift of the mean in units of the
larger standard deviation, and which channels died (positive somewhere under A, never under B) or woke
up (the reverse); died and woke channels rank first, then the largest shifts. Predictions: the samples
whose top class differs. Everything here works on the statistics the capture passes produced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..report_data import ChannelChange, Comparison, LayerChange, LayerSection, Sample
from .accumulate import ChannelAccumulator

__all__ = [
    "channel_order",
    "layer_change",
    "comparison",
    "ranked_layers",
    "relative_change",
    "CHANGED_CHANNELS",
]

CHANGED_CHANNELS = 16  # channels listed and shown side by side per layer, unless --max-channels says otherwise


def _shift(before: ChannelAccumulator, after: ChannelAccumulator) -> np.ndarray:
    """Per channel: |mean B − mean A| in units of the larger of the two standard deviations."""
    spread = np.maximum(before.std, after.std)
    delta = np.abs(after.mean - before.mean)
    return np.where(spread > 0, delta / np.where(spread > 0, spread, 1), np.where(delta > 0, np.inf, 0.0))


def channel_order(before: ChannelAccumulator, after: ChannelAccumulator) -> np.ndarray:
    """Channel indices, most changed first: died or woke up, then by the shift of the mean (ties: index)."""
    flipped = (before.positives > 0) != (after.positives > 0)
    key = np.where(flipped, np.inf, np.nan_to_num(_shift(before, after), nan=0.0, posinf=np.finfo(float).max))
    return np.argsort(-key, kind="stable")


def _filter_cosines(before: nn.Module, after: nn.Module) -> np.ndarray | None:
    """Cosine similarity of each output channel's weights, A vs B (1 where both are all zero)."""
    a, b = getattr(before, "weight", None), getattr(after, "weight", None)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.ndim < 2:
        return None
    a, b = a.detach().double().flatten(1).cpu(), b.detach().double().flatten(1).cpu()
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    norms = norm_a * norm_b
    cos = torch.where(norms > 0, (a * b).sum(1) / torch.where(norms > 0, norms, torch.ones_like(norms)), 0.0)
    return torch.where((norm_a == 0) & (norm_b == 0), torch.ones_like(cos), cos).numpy()


def _relative_change(before: nn.Module, after: nn.Module) -> float | None:
    """‖B−A‖/‖A‖ over the module's own parameters (weight and bias together); None without any."""
    return relative_change(list(before.parameters(recurse=False)), list(after.parameters(recurse=False)))


def relative_change(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float | None:
    """‖B−A‖/‖A‖ over matching tensors taken together (a layer's weight and bias); None without any."""
    if not before:
        return None
    base = sum(float(a.detach().double().pow(2).sum()) for a in before) ** 0.5
    change = sum(
        float((b.detach().double().cpu() - a.detach().double().cpu()).pow(2).sum()) for a, b in zip(before, after)
    )
    change **= 0.5
    return change / base if base > 0 else (0.0 if change == 0 else float("inf"))


def layer_change(
    before_module: nn.Module,
    after_module: nn.Module,
    before: ChannelAccumulator,
    after: ChannelAccumulator,
    section_before: LayerSection,
    limit: int,
) -> LayerChange:
    """How one layer changed, with its ``limit`` most changed channels."""
    cosines = _filter_cosines(before_module, after_module)
    if cosines is not None and cosines.shape[0] != before.channels:
        cosines = None  # weights not laid out per output channel (e.g. attention): no per-channel cosine
    shift = _shift(before, after)
    died = tuple(int(c) for c in np.flatnonzero((before.positives > 0) & (after.positives == 0)))
    woke = tuple(int(c) for c in np.flatnonzero((before.positives == 0) & (after.positives > 0)))
    std_a, std_b = before.std, after.std
    channels = tuple(
        ChannelChange(
            channel=int(c),
            mean_before=float(before.mean[c]),
            mean_after=float(after.mean[c]),
            std_before=float(std_a[c]),
            std_after=float(std_b[c]),
            shift=float(shift[c]),
            state="died" if c in died else "woke" if c in woke else "",
            cosine=float(cosines[c]) if cosines is not None else None,
        )
        for c in channel_order(before, after)[:limit]
    )
    return LayerChange(
        weight_change=_relative_change(before_module, after_module),
        mean_cosine=float(cosines.mean()) if cosines is not None and cosines.size else None,
        min_cosine=float(cosines.min()) if cosines is not None and cosines.size else None,
        died=died,
        woke=woke,
        channels=channels,
        stats_before=section_before.stats,
        channels_before=section_before.channels,
        maps_before=section_before.maps,
        filters_before=section_before.filters,
    )


def comparison(
    before_name: str,
    after_name: str,
    before_samples: Sequence[Sample],
    after_samples: Sequence[Sample],
    layers: Sequence[LayerSection] = (),
) -> Comparison:
    """The predictions of both, with the samples whose top class changed; the compared ``layers`` ranked
    by weight change, and the channels that died and woke over all of them."""
    flipped = tuple(
        a.index
        for a, b in zip(before_samples, after_samples)
        if a.prediction is not None and b.prediction is not None and a.prediction.index != b.prediction.index
    )
    return Comparison(
        before=before_name,
        after=after_name,
        predictions_before=tuple(s.prediction for s in before_samples),
        flipped=flipped,
        ranked=tuple(index for index, _ in ranked_layers(layers)),
        died=sum(len(layer.change.died) for layer in layers if layer.change),
        woke=sum(len(layer.change.woke) for layer in layers if layer.change),
    )


def ranked_layers(layers: Sequence[LayerSection]) -> list[tuple[int, LayerSection]]:
    """The compared layers with their index, largest relative weight change first (no weights: last)."""
    changed = [(i, layer) for i, layer in enumerate(layers) if layer.change is not None]
    return sorted(changed, key=lambda item: -(item[1].change.weight_change or 0.0))  # type: ignore[union-attr]
