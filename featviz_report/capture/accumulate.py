"""Running statistics of one layer over all batches, in fixed memory whatever the number of samples.

Per channel: count, min, max, mean and variance (merged in float64 with Chan et al.'s parallel
update), zeros, positives, NaN/Inf, and the top-k samples by peak activation with where it peaked (a
running top-k: ties go to the lower sample index). Per layer: a histogram, kept as one small
fixed-bin histogram per batch and rebinned onto the final range at the end (folded into one whenever
more than 64 pile up, so a scan of any length keeps fixed memory). Accumulators of disjoint shares of the
samples merge into the same statistics and exactly the same top-k.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .reduce import HISTOGRAM_BINS, Reduced

__all__ = ["ChannelAccumulator", "TopK", "rebin"]

COUNTS = ("zeros", "positives", "nans", "infs")
MAX_HISTOGRAM_PIECES = 64


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
        """Fold in candidates (any number of rows × C): the highest values stay, ties to the lower sample
        index, so the result does not depend on the order candidates arrive in (or which process saw them)."""
        k = self.value.shape[0]
        values = np.concatenate([self.value, value])
        samples = np.concatenate([self.sample, sample])
        empty = samples < 0  # unfilled slots sort last among equal values
        order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, samples), -values), axis=0)[:k]
        self.value = np.take_along_axis(values, order, 0)
        self.sample = np.take_along_axis(samples, order, 0)
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

    def add(self, batch: Reduced, first_sample: int, ids: np.ndarray | None = None) -> None:
        """Fold in one batch (on the CPU): its samples are ``first_sample``, ``first_sample + 1``, … or,
        given, the sample indices ``ids``."""
        self._combine(
            batch.count.double().numpy(),
            batch.mean.double().numpy(),
            batch.m2.double().numpy(),
            batch.minimum.double().numpy(),
            batch.maximum.double().numpy(),
            {name: getattr(batch, name).double().numpy() for name in COUNTS},
        )
        peak = batch.peak.double().numpy()
        if ids is None:
            ids = np.arange(first_sample, first_sample + peak.shape[0])
        self.top.merge(peak, np.broadcast_to(ids[:, None], peak.shape), batch.peak_at.numpy())
        if np.isfinite(float(batch.hist_lo)):
            self._add_histogram((batch.histogram.double().numpy(), float(batch.hist_lo), float(batch.hist_hi)))

    def merge(self, other: ChannelAccumulator) -> None:
        """Fold in another accumulator of the same layer (another process's share of the samples)."""
        self._combine(
            other.count, other.mean, other.m2, other.minimum, other.maximum, {n: getattr(other, n) for n in COUNTS}
        )
        self.top.merge(other.top.value, other.top.sample, other.top.position)
        for piece in other.histograms:
            self._add_histogram(piece)

    def _combine(
        self,
        n_b: np.ndarray,
        mean_b: np.ndarray,
        m2_b: np.ndarray,
        minimum: np.ndarray,
        maximum: np.ndarray,
        counts: dict[str, np.ndarray],
    ) -> None:
        """Chan et al.'s parallel update of count, mean and m2; min, max and counts."""
        total = self.count + n_b
        delta = mean_b - self.mean
        safe_total = np.maximum(total, 1)
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n_b / safe_total
        self.mean = self.mean + delta * n_b / safe_total
        self.count = total
        self.minimum = np.minimum(self.minimum, minimum)
        self.maximum = np.maximum(self.maximum, maximum)
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)

    def _add_histogram(self, piece: tuple[np.ndarray, float, float]) -> None:
        self.histograms.append(piece)
        if len(self.histograms) > MAX_HISTOGRAM_PIECES:  # fixed memory on long scans: fold them into one
            self.histograms = [rebin(self.histograms, HISTOGRAM_BINS)]

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as named arrays (to save a scan's state or send it to another process)."""
        counts, lo, hi = self.histogram()
        return {
            **{name: getattr(self, name) for name in ("count", "mean", "m2", "minimum", "maximum", *COUNTS)},
            "top_value": self.top.value,
            "top_sample": self.top.sample,
            "top_position": self.top.position,
            "histogram": counts,
            "histogram_range": np.array([lo, hi] if self.histograms else [np.nan, np.nan]),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ChannelAccumulator:
        top = arrays["top_value"]
        accumulator = cls(top.shape[1], top.shape[0])
        for name in ("count", "mean", "m2", "minimum", "maximum", *COUNTS):
            setattr(accumulator, name, np.array(arrays[name], dtype=np.float64))
        accumulator.top = TopK(np.array(top), np.array(arrays["top_sample"]), np.array(arrays["top_position"]))
        lo, hi = (float(v) for v in arrays["histogram_range"])
        accumulator.histograms = [(np.array(arrays["histogram"]), lo, hi)] if np.isfinite(lo) else []
        return accumulator

    @property
    def variance(self) -> np.ndarray:
        """Per channel, the (population) variance of the finite values seen."""
        return self.m2 / np.maximum(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    def ranking(self, order: str) -> np.ndarray:
        """Channel indices by ``mean``, ``variance`` or ``max``, highest first (ties: lower index first)."""
        key = {"mean": self.mean, "variance": self.variance, "max": self.maximum}[order]
        return np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")

    def histogram(self) -> tuple[np.ndarray, float, float]:
        return rebin(self.histograms, HISTOGRAM_BINS)
