"""Forward hooks that reduce each captured layer's output on the model's device, batch by batch.

Inside the hook, before anything crosses to the CPU, an output becomes per-(sample, channel) uint8
tiles (min-max over the positions) and per-channel partial statistics; the float activation is
dropped when the hook returns. Reading the output inside the hook is what makes a following
``ReLU(inplace=True)`` harmless: every value used is computed into new tensors before the inplace op
runs (on CUDA, in stream order). The context manager puts the model in eval mode with gradients off
and restores every module's mode, every ``requires_grad`` and removes every hook, even on error.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import UsageError

__all__ = [
    "Reduced",
    "ChannelAccumulator",
    "Capture",
    "capturing",
    "select_layers",
    "reduce_output",
    "first_tensor",
    "vector_shape",
]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def select_layers(model: nn.Module, globs: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Modules to capture, in model order: every Conv2d and Linear, or those whose qualified name
    matches one of ``globs`` (shell-style, e.g. ``layer1.*.conv?``)."""
    named = [(name, module) for name, module in model.named_modules() if name]
    if not globs:
        chosen = [(n, m) for n, m in named if isinstance(m, DEFAULT_TYPES)]
        if not chosen:
            raise UsageError("the model has no Conv2d or Linear layers to capture; name some with --layers")
        return chosen
    for pattern in globs:
        if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in named):
            examples = ", ".join(n for n, _ in named[:6])
            raise UsageError(f"--layers {pattern!r} matches no layer of the model (layers are named like: {examples})")
    return [(n, m) for n, m in named if any(fnmatch.fnmatchcase(n, p) for p in globs)]


def vector_shape(length: int) -> tuple[int, int]:
    """(height, width) of the image a feature vector of ``length`` values is shown as: the most square
    exact rectangle, or a padded square when the exact one would be more than 4:1."""
    height = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
    if length // height > 4 * height:
        height = math.isqrt(length - 1) + 1 if length > 1 else 1
    return height, math.ceil(length / height)


@dataclass
class Reduced:
    """One batch of one layer after reduction: uint8 tiles and per-channel partial statistics."""

    tiles: torch.Tensor  # N×T×h×w uint8
    count: torch.Tensor  # C finite values per channel
    minimum: torch.Tensor
    maximum: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor  # sum of squared deviations from ``mean``
    zeros: torch.Tensor
    positives: torch.Tensor
    nans: torch.Tensor
    infs: torch.Tensor

    def to_cpu(self) -> Reduced:
        return Reduced(**{name: value.cpu() for name, value in vars(self).items()})


def first_tensor(output: object) -> torch.Tensor | None:
    """The output itself, or the first tensor in a tuple, list or dict output."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else ()
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def _to_uint8(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``values`` scaled so ``lo`` → 0 and ``hi`` → 255, rounded; a constant tile (``hi == lo``) is all 0."""
    span = hi - lo
    scaled = (values - lo) * (255.0 / torch.where(span > 0, span, 1.0))
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


def reduce_output(output: torch.Tensor) -> Reduced:
    """Reduce an ``N×C×H×W`` or ``N×F`` output on its own device (float32 arithmetic).

    Tiles are min-max scaled per (sample, channel) for maps and per sample for feature vectors. The
    common all-finite case takes a fast path of few passes over the data; NaN/Inf are masked otherwise.
    """
    values = output.detach().float()
    batch = values.shape[0]
    flat = values.reshape(batch, -1) if values.ndim == 2 else values.flatten(2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)  # NaN propagates into both
    if bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        tiles = _to_uint8(flat, lo, hi)
        stats = _finite_stats(values, lo, hi)
    else:
        finite = torch.isfinite(flat)
        lo = torch.where(finite, flat, math.inf).amin(-1, keepdim=True)
        hi = torch.where(finite, flat, -math.inf).amax(-1, keepdim=True)
        tiles = torch.where(finite, _to_uint8(torch.where(finite, flat, lo), lo, hi), 0)
        stats = _masked_stats(values)
    if values.ndim == 2:
        height, width = vector_shape(values.shape[1])
        padded = torch.zeros(batch, height * width, dtype=torch.uint8, device=values.device)
        padded[:, : values.shape[1]] = tiles
        tiles = padded.view(batch, 1, height, width)
    else:
        tiles = tiles.view(values.shape)
    return Reduced(tiles=tiles, **stats)


def _channels_view(values: torch.Tensor) -> torch.Tensor:
    """``N×C×H×W`` as it is; ``N×F`` as ``N×F×1×1`` (each feature a channel)."""
    return values.view(*values.shape, 1, 1) if values.ndim == 2 else values


def _finite_stats(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> dict[str, torch.Tensor]:
    per_channel = _channels_view(values)
    dims = (0, 2, 3)
    var, mean = torch.var_mean(per_channel, dim=dims, correction=0)
    channels = per_channel.shape[1]
    count = torch.full((channels,), per_channel.numel() // channels, device=values.device)
    if values.ndim == 2:
        minimum, maximum = per_channel.amin(dims), per_channel.amax(dims)
    else:
        minimum, maximum = lo.squeeze(-1).amin(0), hi.squeeze(-1).amax(0)
    none = torch.zeros(channels, dtype=torch.long, device=values.device)
    return {
        "count": count,
        "minimum": minimum,
        "maximum": maximum,
        "mean": mean,
        "m2": var * count,
        "zeros": (per_channel == 0).sum(dims),
        "positives": (per_channel > 0).sum(dims),
        "nans": none,
        "infs": none,
    }


def _masked_stats(values: torch.Tensor) -> dict[str, torch.Tensor]:
    per_channel = _channels_view(values)
    dims = (0, 2, 3)
    finite = torch.isfinite(per_channel)
    count = finite.sum(dims)
    mean = torch.where(finite, per_channel, 0.0).sum(dims) / count.clamp_min(1)
    deviation = torch.where(finite, per_channel - mean.view(1, -1, 1, 1), 0.0)
    return {
        "count": count,
        "minimum": torch.where(finite, per_channel, math.inf).amin(dims),
        "maximum": torch.where(finite, per_channel, -math.inf).amax(dims),
        "mean": mean,
        "m2": deviation.square().sum(dims),
        "zeros": (per_channel == 0).sum(dims),
        "positives": (per_channel > 0).sum(dims),
        "nans": torch.isnan(per_channel).sum(dims),
        "infs": torch.isinf(per_channel).sum(dims),
    }


@dataclass
class ChannelAccumulator:
    """Running per-channel statistics over batches, merged in float64 (Chan et al.'s parallel update)."""

    channels: int
    count: np.ndarray = field(init=False)
    minimum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    zeros: np.ndarray = field(init=False)
    positives: np.ndarray = field(init=False)
    nans: np.ndarray = field(init=False)
    infs: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for name in ("count", "mean", "m2", "zeros", "positives", "nans", "infs"):
            setattr(self, name, np.zeros(self.channels, dtype=np.float64))
        self.minimum = np.full(self.channels, np.inf)
        self.maximum = np.full(self.channels, -np.inf)

    def add(self, batch: Reduced) -> None:
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


@dataclass
class Capture:
    """What the hooks collected in the current batch, keyed by (qualified name, call number)."""

    modules: dict[str, nn.Module]
    pending: list[tuple[tuple[str, int], tuple[int, ...], Reduced]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer name → what it gave instead
    last_call: tuple[str, nn.Module, tuple[int, ...]] | None = None  # the leaf module entered last
    last_returned: bool = False  # whether that module's forward returned
    _calls: Counter[str] = field(default_factory=Counter)

    def hook(self, name: str):  # type: ignore[no-untyped-def]
        def on_output(module: nn.Module, inputs: object, output: object) -> None:
            call = self._calls[name]
            self._calls[name] += 1
            tensor = first_tensor(output)
            if tensor is not None and tensor.ndim == 4 and isinstance(module, nn.Linear):
                tensor = tensor.permute(0, 3, 1, 2)  # a Linear on N×H×W×C is a 1×1 convolution, channels last
            if tensor is None or tensor.ndim not in (2, 4):
                self.skipped[name] = "no tensor" if tensor is None else f"a {tensor.ndim}-D output"
                return
            self.pending.append(((name, call), tuple(tensor.shape[1:]), reduce_output(tensor)))

        return on_output

    def entering(self, name: str):  # type: ignore[no-untyped-def]
        def on_input(module: nn.Module, inputs: tuple[object, ...]) -> None:
            tensor = first_tensor(inputs)
            self.last_call = (name, module, tuple(tensor.shape) if tensor is not None else ())
            self.last_returned = False

        return on_input

    def leaving(self, module: nn.Module, inputs: object, output: object) -> None:
        self.last_returned = True

    def drain(self) -> list[tuple[tuple[str, int], tuple[int, ...], Reduced]]:
        """The batch's reductions, moved to the CPU, in call order; resets for the next batch."""
        done = [(key, shape, reduced.to_cpu()) for key, shape, reduced in self.pending]
        self.pending.clear()
        self._calls.clear()
        self.last_call = None
        return done


@contextmanager
def capturing(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> Iterator[Capture]:
    """Hook ``layers`` of ``model`` for the duration of the block, in eval mode without gradients.

    On exit, normally or by an exception, every hook is removed and every module's training flag and
    every parameter's ``requires_grad`` are what they were before.
    """
    modes = {module: module.training for module in model.modules()}
    grads = {param: param.requires_grad for param in model.parameters()}
    capture = Capture(dict(layers))
    handles = []
    try:
        model.eval()
        for param in grads:
            param.requires_grad_(False)
        for name, module in layers:
            handles.append(module.register_forward_hook(capture.hook(name)))
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()):
                handles.append(module.register_forward_pre_hook(capture.entering(name)))
                handles.append(module.register_forward_hook(capture.leaving))
        yield capture
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
        for param, required in grads.items():
            param.requires_grad_(required)
