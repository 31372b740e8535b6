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

__all__ = ["Reduced", "reduce_output", "vector_shape", "HISTOGRAM_BINS"]

HISTOGRAM_BINS = 64
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
    """(tile source ``N×T×P``, per-channel view ``N×C×H×W``) of a 2-, 3- or 4-D output."""
    batch = values.shape[0]
    if values.ndim == 4:
        return values.flatten(2), values
    if values.ndim == 3:
        return values.reshape(batch, 1, -1), values.transpose(1, 2).unsqueeze(-1)
    return values.reshape(batch, 1, -1), values[:, :, None, None]


def _tile_shape(values: torch.Tensor) -> tuple[int, int, int]:
    if values.ndim == 4:
        return values.shape[1], values.shape[2], values.shape[3]
    if values.ndim == 3:
        return 1, values.shape[1], values.shape[2]
    return (1, *vector_shape(values.shape[1]))


def _to_uint8(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``values`` scaled so ``lo`` → 0 and ``hi`` → 255, rounded; a constant tile (``hi == lo``) is all 0."""
    span = hi - lo
    scaled = (values - lo) * (255.0 / torch.where(span > 0, span, 1.0))
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


def _scaled_tiles(
    source: torch.Tensor, scale: str
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
    if scale == "sigmoid":
        tiles = torch.sigmoid(source).mul_(255).round_().to(torch.uint8)
    else:
        if scale == "layer":
            lo, hi = lo.amin(1, keepdim=True), hi.amax(1, keepdim=True)
        elif scale == "percentile":
            positions = source.shape[-1]
            k = max(1, math.ceil(PERCENTILE * positions))
            lo = source.kthvalue(k, -1, keepdim=True).values
            hi = source.kthvalue(positions - k + 1, -1, keepdim=True).values
        tiles = _to_uint8(source, lo, hi)
    if finite is not None:
        tiles = torch.where(finite, tiles, 0)
    return tiles, finite, tile_lo.squeeze(-1), (tile_hi.squeeze(-1), hi_at.squeeze(-1))


def reduce_output(output: torch.Tensor, scale: str = "channel") -> Reduced:
    """Reduce a 2-, 3- or 4-D layer output on its own device; ``scale`` one of ``config.SCALES``."""
    values = output.detach().float()
    source, per_channel = _views(values)
    tiles, finite_source, tile_lo, (tile_hi, tile_hi_at) = _scaled_tiles(source, scale)
    if finite_source is None:
        finite = None
        clean, low_filled, high_filled = per_channel, per_channel, per_channel
    else:
        finite = torch.isfinite(per_channel)
        clean = torch.where(finite, per_channel, 0.0)
        low_filled = torch.where(finite, per_channel, math.inf)
        high_filled = torch.where(finite, per_channel, -math.inf)
    if values.ndim == 4:  # tiles are channels: their ranges are the per-(sample, channel) ones
        sample_lo, peak, peak_at = tile_lo, tile_hi, tile_hi_at
    else:
        sample_lo = low_filled.flatten(2).amin(-1)
        peak, peak_at = high_filled.flatten(2).max(-1)
    count_t, height, width = _tile_shape(values)
    batch = values.shape[0]
    if tiles.shape[-1] != height * width:  # a feature vector, padded to its rectangle
        padded = torch.zeros(batch, 1, height * width, dtype=torch.uint8, device=values.device)
        padded[..., : tiles.shape[-1]] = tiles
        tiles = padded
    dims = (0, 2, 3)
    channels = per_channel.shape[1]
    if finite is None:
        var, mean = torch.var_mean(per_channel, dim=dims, correction=0)
        count = torch.full((channels,), per_channel.numel() // channels, device=values.device)
        m2 = var * count
        nans = infs = torch.zeros(channels, dtype=torch.long, device=values.device)
    else:
        count = finite.sum(dims)
        mean = clean.sum(dims) / count.clamp_min(1)
        m2 = torch.where(finite, per_channel - mean.view(1, -1, 1, 1), 0.0).square().sum(dims)
        nans, infs = torch.isnan(per_channel).sum(dims), torch.isinf(per_channel).sum(dims)
    hist_lo = sample_lo.amin()
    hist_hi = peak.amax()
    any_finite = bool(torch.isfinite(hist_lo))
    histogram = (
        torch.histc(clean if finite is None else per_channel[finite], HISTOGRAM_BINS, float(hist_lo), float(hist_hi))
        if any_finite
        else torch.zeros(HISTOGRAM_BINS, device=values.device)
    )
    return Reduced(
        tiles=tiles.view(batch, count_t, height, width),
        count=count,
        minimum=sample_lo.amin(0),
        maximum=peak.amax(0),
        mean=mean,
        m2=m2,
        zeros=(per_channel == 0).sum(dims),
        positives=(per_channel > 0).sum(dims),
        nans=nans,
        infs=infs,
        peak=peak,
        peak_at=peak_at,
        histogram=histogram,
        hist_lo=hist_lo,
        hist_hi=hist_hi,
    )
