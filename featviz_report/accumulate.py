"""Running statistics of one layer over all batches, in fixed memory whatever the number of samples.

Per channel: count, min, max, mean and variance (merged in float64 with Chan et al.'s parallel
update), zeros, positives, NaN/Inf, and the top-k samples by peak activation with where it peaked (a
running top-k: ties go to the lower sample index). Per layer: a histogram, kept as one small
fixed-bin histogram per batch and rebinned onto the final range at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .reduce import HISTOGRAM_BINS, Reduced

__all__ = ["ChannelAccumulator", "TopK", "rebin"]


@dataclass
class TopK:
    """The ``k`` best samples per channel: ``value``, ``sample`` and ``position`` arrays of shape k×C,
    best first; empty slots have value -inf and sample -1."""

    value: np.ndarray
    sample: np.ndarray
    position: np.ndarray

    @classmethod
    def empty(cls, k: int, channels: int) -> TopK:
        return cls(np.full((k, channels), -np.inf), np.full((k, channels), -1), np.zeros((k, channels), np.int64))

    def merge(self, value: np.ndarray, sample: np.ndarray, position: np.ndarray) -> None:
        """Fold in N×C candidates whose sample indices are all higher than the ones kept so far."""
        k = self.value.shape[0]
        values = np.concatenate([self.value, value])
        order = np.argsort(-values, axis=0, kind="stable")[:k]  # stable: earlier (lower index) wins ties
        self.value = np.take_along_axis(values, order, 0)
        self.sample = np.take_along_axis(np.concatenate([self.sample, sample]), order, 0)
        self.position = np.take_along_axis(np.concatenate([self.position, position]), order, 0)


def rebin(pieces: list[tuple[np.ndarray, float, float]], bins: int) -> tuple[np.ndarray, float, float]:
    """Merge per-batch histograms ``(counts, lo, hi)`` into one of ``bins`` bins over the overall range,
    spreading each piece's bin uniformly over the bins it overlaps."""
    if not pieces:
        return np.zeros(bins), 0.0, 0.0
    lo = min(p[1] for p in pieces)
    hi = max(p[2] for p in pieces)
    if hi <= lo:
        return np.array([sum(float(p[0].sum()) for p in pieces)] + [0.0] * (bins - 1)), lo, hi
    edges = np.linspace(lo, hi, bins + 1)
    merged = np.zeros(bins)
    for counts, p_lo, p_hi in pieces:
        if p_hi <= p_lo:
            merged[min(int((p_lo - lo) / (hi - lo) * bins), bins - 1)] += counts.sum()
            continue
        src = np.linspace(p_lo, p_hi, len(counts) + 1)
        cumulative = np.concatenate([[0.0], np.cumsum(counts)])
        merged += np.diff(np.interp(edges, src, cumulative))
    return merged, lo, hi


@dataclass
class ChannelAccumulator:
    """Statistics of one layer (one module call) accumulated over batches."""

    channels: int
    top_k: int = 4
    count: np.ndarray = field(init=False)
    minimum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    zeros: np.ndarray = field(init=False)
    positives: np.ndarray = field(init=False)
    nans: np.ndarray = field(init=False)
    infs: np.ndarray = field(init=False)
    top: TopK = field(init=False)
    histograms: list[tuple[np.ndarray, float, float]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        for name in ("count", "mean", "m2", "zeros", "positives", "nans", "infs"):
            setattr(self, name, np.zeros(self.channels, dtype=np.float64))
        self.minimum = np.full(self.channels, np.inf)
        self.maximum = np.full(self.channels, -np.inf)
        self.top = TopK.empty(self.top_k, self.channels)

    def add(self, batch: Reduced, first_sample: int) -> None:
        """Fold in one batch (on the CPU) whose first sample has index ``first_sample``."""
        n_b = batch.count.double().numpy()
        mean_b = batch.mean.double().numpy()
        total = self.count + n_b
        delta = mean_b - self.mean
        safe_total = np.maximum(total, 1)
        self.m2 = self.m2 + batch.m2.double().numpy() + delta**2 * self.count * n_b / safe_total
        self.mean = self.mean + delta * n_b / safe_total
        self.count = total
        self.minimum = np.minimum(self.minimum, batch.minimum.double().numpy())
        self.maximum = np.maximum(self.maximum, batch.maximum.double().numpy())
        for name in ("zeros", "positives", "nans", "infs"):
            setattr(self, name, getattr(self, name) + getattr(batch, name).double().numpy())
        peak = batch.peak.double().numpy()
        samples = np.broadcast_to(np.arange(first_sample, first_sample + peak.shape[0])[:, None], peak.shape)
        self.top.merge(peak, samples, batch.peak_at.numpy())
        if np.isfinite(float(batch.hist_lo)):
            self.histograms.append((batch.histogram.double().numpy(), float(batch.hist_lo), float(batch.hist_hi)))

    def ranking(self, order: str) -> np.ndarray:
        """Channel indices by ``mean``, ``variance`` or ``max``, highest first (ties: lower index first)."""
        key = {"mean": self.mean, "variance": self.m2 / np.maximum(self.count, 1), "max": self.maximum}[order]
        return np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")

    def histogram(self) -> tuple[np.ndarray, float, float]:
        return rebin(self.histograms, HISTOGRAM_BINS)
