"""One layer output, one batch → uint8 tiles and partial statistics, computed on the output's device.

Shapes understood: ``N×C×H×W`` maps (attention weights ``N×heads×L×S`` among them), ``N×L×D``
sequences (one ``L×D`` tile per sample, each of the D features a channel) and ``N×F`` feature vectors
(one tile per sample, reshaped to the nearest rectangle). Arithmetic is float32 whatever the model's
dtype. The all-finite case takes a fast path; NaN/Inf are masked out of statistics and tiles otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Reduced", "reduce_output", "histogram_counts", "vector_shape", "HISTOGRAM_BINS", "HISTOGRAM_VALUES"]

HISTOGRAM_BINS = 64
HISTOGRAM_VALUES = 1 << 16  # a batch's histogram counts at most this many values, evenly strided, scaled up
PERCENTILE = 0.01  # ``percentile`` clips each tile to its 1st–99th percentile


def vector_shape(length: int) -> tuple[int, int]:
    """(height, width) of the image a feature vector of ``length`` values is shown as: the most square
    exact rectangle, or a padded square when the exact one would be more than 4:1."""
    height = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
    if length // height > 4 * height:
        height = math.isqrt(length - 1) + 1 if length > 1 else 1
    return height, math.ceil(length / height)


@dataclass
class Reduced:
    """One batch of one layer after reduction (tensors on the layer's device until ``to_cpu``).

    Per channel (C): finite ``count``, ``minimum``, ``maximum``, ``mean``, ``m2`` (sum of squared
    deviations), ``zeros``, ``positives``, ``nans``, ``infs``. Per sample and channel (N×C): ``peak``
    (largest finite value, -inf if none) and ``peak_at`` (its flat position in the channel's map).
    ``histogram`` counts the batch's finite values in ``HISTOGRAM_BINS`` bins over ``[hist_lo, hist_hi]``.
    """

    tiles: torch.Tensor
    count: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    zeros: torch.Tensor
    positives: torch.Tensor
    nans: torch.Tensor
    infs: torch.Tensor
    peak: torch.Tensor
    peak_at: torch.Tensor
    histogram: torch.Tensor
    hist_lo: torch.Tensor
    hist_hi: torch.Tensor

    def to_cpu(self) -> Reduced:
        return Reduced(**{name: value.cpu() for name, value in vars(self).items()})


def _views(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tile source ``N×T×P``, per-channel view ``N×C×P``) of a 2-, 3- or 4-D output. Statistics reduce
    the per-channel view over its last axis first: that is the fast, contiguous direction for maps."""
    batch = values.shape[0]
    if values.ndim == 4:
        flat = values.flatten(2)
        return flat, flat
    if values.ndim == 3:
        return values.reshape(batch, 1, -1), values.transpose(1, 2)
    return values.reshape(batch, 1, -1), values[:, :, None]


def _tile_shape(values: torch.Tensor) -> tuple[int, int, int]:
    if values.ndim == 4:
        return values.shape[1], values.shape[2], values.shape[3]
    if values.ndim == 3:
        return 1, values.shape[1], values.shape[2]
    return (1, *vector_shape(values.shape[1]))


def _to_uint8(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """``values`` scaled so ``lo`` → 0 and ``hi`` → 255, rounded; a constant tile (``hi == lo``) is all 0.
    Without ``clamp`` the caller promises ``lo`` and ``hi`` are the values' own minimum and maximum (then
    the scaled values lie in [0, 255] already, and one pass over them is saved)."""
    span = hi - lo
    scaled = (values - lo).mul_(255.0 / torch.where(span > 0, span, 1.0)).round_()
    return (scaled.clamp_(0, 255) if clamp else scaled).to(torch.uint8)


def _scaled_tiles(
    source: torch.Tensor, scale: str | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """uint8 tiles of an ``N×T×P`` source; the finite mask (``None`` when all is finite); and each
    tile's finite minimum and (maximum, position of the maximum).

    ``channel``: min-max per tile; ``layer``: min-max per sample over all its tiles (channels
    comparable); ``sigmoid``: 255·σ(x), the same mapping everywhere; ``percentile``: min-max between
    each tile's 1st and 99th percentile. Non-finite values never set a range and are drawn as 0.
    """
    lo = source.amin(-1, keepdim=True)  # NaN propagates into min and max
    hi, hi_at = source.max(-1, keepdim=True)
    finite = None
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        finite = torch.isfinite(source)
        lo = torch.where(finite, source, math.inf).amin(-1, keepdim=True)
        hi, hi_at = torch.where(finite, source, -math.inf).max(-1, keepdim=True)
        source = torch.where(finite, source, lo)
    tile_lo, tile_hi = lo, hi
    if scale is None:  # statistics only (a dataset scan): no tiles
        tiles = torch.empty(0, dtype=torch.uint8, device=source.device)
    elif scale == "sigmoid":
        tiles = torch.sigmoid(source).mul_(255).round_().to(torch.uint8)
    else:
        if scale == "layer":
            lo, hi = lo.amin(1, keepdim=True), hi.amax(1, keepdim=True)
        elif scale == "percentile":
            positions = source.shape[-1]
            k = max(1, math.ceil(PERCENTILE * positions))
            lo = source.kthvalue(k, -1, keepdim=True).values
            hi = source.kthvalue(positions - k + 1, -1, keepdim=True).values
        tiles = _to_uint8(source, lo, hi, clamp=scale == "percentile")
    if finite is not None and tiles.numel():
        tiles = torch.where(finite, tiles, 0)
    return tiles, finite, tile_lo.squeeze(-1), (tile_hi.squeeze(-1), hi_at.squeeze(-1))


def _channel_sums(
    per_channel: torch.Tensor, finite: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel of an ``N×C×P`` view, over finite values only: count, mean, sum of squared
    deviations, zeros and positives. Zeros and positives come from one ``sign`` pass (summing a bool
    comparison is ten times slower); its per-row float sums are exact below 2**24 positions."""
    batch, channels, positions = per_channel.shape
    clean = per_channel if finite is None else torch.where(finite, per_channel, 0.0)
    if finite is None:
        count = torch.full((channels,), batch * positions, dtype=torch.long, device=per_channel.device)
    else:
        count = finite.sum((0, 2))
    mean = clean.sum(-1).sum(0) / count.clamp_min(1)
    deviation = clean - mean.view(1, -1, 1)
    if finite is not None:
        deviation = torch.where(finite, deviation, 0.0)
    m2 = deviation.square_().sum(-1).sum(0)
    sign = torch.sign(clean)
    net = sign.sum(-1).long().sum(0)
    nonzero = sign.abs_().sum(-1).long().sum(0)
    return count, mean, m2, count - nonzero, (net + nonzero) // 2


def histogram_counts(values: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Counts of ``values`` in ``HISTOGRAM_BINS`` bins over ``[lo, hi]``. Past ``HISTOGRAM_VALUES`` values
    (resnet18's first layer has 6.4 M in a batch of 8) every k-th one is counted and the counts scaled by
    k: the shape of the distribution at a quarter of the cost or less, and the same total."""
    flat = values.reshape(-1)
    step = -(-flat.numel() // HISTOGRAM_VALUES)
    if step == 1:
        return torch.histc(flat, HISTOGRAM_BINS, lo, hi)
    counts = torch.histc(flat[::step], HISTOGRAM_BINS, lo, hi)
    return counts * (flat.numel() / max(float(counts.sum()), 1.0))


def reduce_output(output: torch.Tensor, scale: str | None = "channel") -> Reduced:
    """Reduce a 2-, 3- or 4-D layer output on its own device; ``scale`` one of ``config.SCALES``, or
    ``None`` for statistics without tiles."""
    values = output.detach().float()
    source, per_channel = _views(values)
    tiles, finite_source, tile_lo, (tile_hi, tile_hi_at) = _scaled_tiles(source, scale)
    finite = finite_source
    if finite is not None and per_channel is not source:
        finite = torch.isfinite(per_channel)
    if values.ndim == 4:  # tiles are channels: their ranges are the per-(sample, channel) ones
        sample_lo, peak, peak_at = tile_lo, tile_hi, tile_hi_at
    else:
        sample_lo = (per_channel if finite is None else torch.where(finite, per_channel, math.inf)).amin(-1)
        peak, peak_at = (per_channel if finite is None else torch.where(finite, per_channel, -math.inf)).max(-1)
    count_t, height, width = _tile_shape(values)
    batch = values.shape[0]
    if scale is None:
        count_t = 0
    elif tiles.shape[-1] != height * width:  # a feature vector, padded to its rectangle
        padded = torch.zeros(batch, 1, height * width, dtype=torch.uint8, device=values.device)
        padded[..., : tiles.shape[-1]] = tiles
        tiles = padded
    count, mean, m2, zeros, positives = _channel_sums(per_channel, finite)
    if finite is None:
        nans = infs = torch.zeros_like(count)
    else:
        nans, infs = torch.isnan(per_channel).sum((0, 2)), torch.isinf(per_channel).sum((0, 2))
    hist_lo = sample_lo.amin()
    hist_hi = peak.amax()
    histogram = (
        histogram_counts(per_channel if finite is None else per_channel[finite], float(hist_lo), float(hist_hi))
        if bool(torch.isfinite(hist_lo))
        else torch.zeros(HISTOGRAM_BINS, device=values.device)
    )
    return Reduced(
        tiles=tiles.view(batch, count_t, height, width),
        count=count,
        minimum=sample_lo.amin(0),
        maximum=peak.amax(0),
        mean=mean,
        m2=m2,
        zeros=zeros,
        positives=positives,
        nans=nans,
        infs=infs,
        peak=peak,
        peak_at=peak_at,
        histogram=histogram,
        hist_lo=hist_lo,
        hist_hi=hist_hi,
    )
