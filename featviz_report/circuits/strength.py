"""Each target channel's strongest inputs: expanded weights on a linear path, attribution elsewhere.

For a target whose input ``u`` reaches a source ``s`` along a route with gains ``P`` (``u``'s channels ×
``s``'s channels: how much a uniform raise of each source channel by one raises each channel of ``u``), the
strength of source channel ``i`` for output channel ``o`` is ``(W̄ P)[o, i]``, ``W̄`` the target's weights summed
over space (block-diagonal for a grouped convolution: an output channel reads only its group). The spatial
pattern of that weight is ``Σ_c W[o, c] P[c, i]``: a kernel for a convolution, the map's positions for a linear
layer on a flattened map.

* **Expanded weights**: where every route to ``u`` is linear, ``P`` is composed from the weights alone
  (:mod:`.rules`: BatchNorm's scale, pools, padding, residual sums, 1×1 projections).
* **Attribution**: otherwise ``P[c, i]`` is the gradient of the mean of ``u``'s channel ``c`` with respect to
  the source's probe ``i`` (a uniform raise of its channel ``i``), averaged over the samples: the expanded
  weight where the data lets the path through (a ReLU that is on, the maximum of a pool). On a linear path
  the two are equal. Channel-wise routes need one backward pass per colour (channels of ``u`` that read
  the same source channel get different colours: one colour where each source channel feeds one channel,
  as through a ReLU or a residual sum; a map's positions after a flatten); others need a row of ``P`` per
  channel of ``u``, in batches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..fields.budget import Deadline
from .routes import Route
from .rules import Key
from .trace import Target

__all__ = ["Inputs", "EXPANDED", "ATTRIBUTION", "route_gains", "attributed_gains", "strongest_inputs"]

EXPANDED = "expanded weights"
ATTRIBUTION = "attribution"
ROWS_AT_ONCE = 2**22  # values of batched one-hot gradients per backward pass (16 MB of float32)
BATCH_SECONDS = 0.25  # a batch of rows of P takes about this long, so the time budget is checked that often


@dataclass(frozen=True, eq=False)
class Inputs:
    """A target's inputs: how they were found (``method``), from which layer calls (``sources``), and for
    each shown output channel (``outputs``) its strongest inputs, strongest first, as ``outputs × top``
    arrays: the index of the ``source`` (-1: an empty slot), the source ``channel``, the signed ``weight``
    and the weight's spatial ``patterns`` (``outputs × top × h × w``; None where there are none: 1×1
    kernels, features without a map). ``table``: every strength, outputs × the sources' channels side by
    side, each source's first column at its ``offsets``."""

    method: str
    sources: tuple[Key, ...]
    outputs: np.ndarray
    source: np.ndarray
    channel: np.ndarray
    weight: np.ndarray
    patterns: np.ndarray | None
    table: np.ndarray
    offsets: np.ndarray

    def strength(self, output: int, source: Key, channel: int) -> float | None:
        """One input's strength for one output channel (None: that layer does not feed this one)."""
        if source not in self.sources:
            return None
        return float(self.table[output, self.offsets[self.sources.index(source)] + channel])


def route_gains(target: Target) -> dict[Key, Route] | None:
    """The routes' gains when every route to the target is linear (expanded weights), else None."""
    if target.routes and all(route.linear for route in target.routes.values()):
        return dict(target.routes)
    return None


def attributed_gains(target: Target, probes: dict[Key, torch.Tensor], deadline: Deadline) -> dict[Key, Route]:
    """The gains measured by the gradient, averaged over the samples (see the module's docstring)."""
    keys = [key for key in target.routes if key in probes]
    u = target.inputs
    positions = u.numel() // u.shape[target.axis]
    wise = target.axis == 1 and all(target.routes[key].chan is not None for key in keys)
    if wise:
        return _colour_gains(u, [probes[k] for k in keys], keys, target.routes, positions, deadline)
    return _row_gains(u, target.axis, [probes[k] for k in keys], keys, positions, deadline)


def _grads(u: torch.Tensor, probes: Sequence[torch.Tensor], seed: torch.Tensor, batched: bool) -> list[np.ndarray]:
    found = torch.autograd.grad(u, list(probes), seed, retain_graph=True, allow_unused=True, is_grads_batched=batched)
    rows = seed.shape[0] if batched else 1
    return [
        np.zeros((rows, p.numel())) if g is None else g.detach().double().reshape(rows, -1).cpu().numpy()
        for g, p in zip(found, probes)
    ]


def _colour_gains(
    u: torch.Tensor,
    probes: Sequence[torch.Tensor],
    keys: Sequence[Key],
    routes: dict[Key, Route],
    positions: int,
    deadline: Deadline,
) -> dict[Key, Route]:
    chans = [routes[key].chan for key in keys]
    colours = _colours(chans)  # type: ignore[arg-type]
    gains = [np.zeros(u.shape[1]) for _ in keys]
    shape = [1] * u.ndim
    shape[1] = u.shape[1]
    for colour in range(int(colours.max()) + 1 if colours.size else 0):
        deadline.allow(0.0)
        chosen = torch.from_numpy(colours == colour).to(device=u.device, dtype=u.dtype).reshape(shape)
        for gain, chan, grad in zip(gains, chans, _grads(u, probes, (chosen / positions).expand_as(u), False)):
            assert chan is not None
            rows = np.flatnonzero((colours == colour) & (chan >= 0))
            gain[rows] = grad[0][chan[rows]]
    return {key: Route(routes[key].width, routes[key].chan, gain, routes[key].grid) for key, gain in zip(keys, gains)}


def _colours(chans: Sequence[np.ndarray]) -> np.ndarray:
    """A colour per channel such that no two channels of one colour read the same channel of one source."""
    ranks = []
    for chan in chans:
        order = np.argsort(chan, kind="stable")
        sorted_chan = chan[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_chan)) + 1]
        within = np.arange(len(chan)) - np.repeat(starts, np.diff(np.r_[starts, len(chan)]))
        rank = np.empty(len(chan), dtype=np.int64)
        rank[order] = within
        ranks.append(np.where(chan >= 0, rank, 0))
    if not ranks or not any(rank.any() for rank in ranks):  # each source channel read at most once: one colour
        return np.zeros(len(chans[0]) if chans else 0, dtype=np.int64)
    _, colours = np.unique(np.stack(ranks, 1), axis=0, return_inverse=True)
    return colours.reshape(-1)


def _row_gains(
    u: torch.Tensor,
    axis: int,
    probes: Sequence[torch.Tensor],
    keys: Sequence[Key],
    positions: int,
    deadline: Deadline,
) -> dict[Key, Route]:
    """Every row of ``P``: the gradient of each channel's mean of ``u``, a batch of channels per backward pass.
    The first batch is one channel; each next one is as many as fit in :data:`BATCH_SECONDS` at the pace so
    far (and in :data:`ROWS_AT_ONCE` values), and starts only if it ends before the ``deadline``."""
    channels, axis = u.shape[axis], axis % u.ndim
    rows = [np.zeros((channels, p.numel())) for p in probes]
    start, pace = 0, None  # seconds per channel
    while start < channels:
        count = 1 if pace is None else max(1, min(int(BATCH_SECONDS / max(pace, 1e-9)), ROWS_AT_ONCE // u.numel()))
        count = min(count, channels - start)
        deadline.allow(0.0 if pace is None else pace * count)
        began = time.monotonic()
        seed = torch.zeros((count, *u.shape), dtype=u.dtype, device=u.device)
        for j in range(count):
            seed[j].select(axis, start + j).fill_(1.0 / positions)
        for row, grad in zip(rows, _grads(u, probes, seed, True)):
            row[start : start + count] = grad
        pace, start = (time.monotonic() - began) / count, start + count
    return {key: Route(p.numel(), None, row) for key, p, row in zip(keys, probes, rows)}


def tap_shares(module: nn.Module, size: Sequence[int]) -> torch.Tensor | None:
    """For a Conv2d on ``size`` (height, width) maps, each tap's share of the output positions at which it reads
    the map rather than its zero padding (strides and dilation counted): a uniform raise of an input channel
    raises the output's mean by the kernel summed over space with each tap weighted so. 1 everywhere on a map
    large enough, less at the edge taps of a small one (a 3×3 kernel with padding 1 on a 5×5 map: 0.8)."""
    if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros" or len(size) != 2:
        return None
    pads = module._reversed_padding_repeated_twice  # left, right, top, bottom
    axes = []
    for axis, (length, before, after) in enumerate(zip(size, (pads[2], pads[0]), (pads[3], pads[1]))):
        kernel, stride, dilation = module.kernel_size[axis], module.stride[axis], module.dilation[axis]
        outputs = (length + before + after - dilation * (kernel - 1) - 1) // stride + 1
        if outputs < 1:
            return None
        read = torch.arange(outputs)[:, None] * stride - before + torch.arange(kernel)[None, :] * dilation
        axes.append(((read >= 0) & (read < length)).float().mean(0))
    return axes[0][:, None] * axes[1][None, :]


def _weights(computed: torch.Tensor, groups: int, shares: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights in float32 on the CPU (finite: the stage gives no strengths for a layer with a NaN or an
    infinity among them), and ``W̄``: outputs × input channels, the kernels summed over space (each tap by its
    share of the positions it reads the map at, :func:`tap_shares`), block-diagonal for groups."""
    weight = computed.float().cpu()
    if weight.ndim == 4:
        summed = (weight if shares is None else weight * shares).sum((2, 3))
    else:
        summed = weight
    return weight, torch.block_diag(*summed.chunk(groups, 0)) if groups > 1 else summed


def _strengths(summed: torch.Tensor, route: Route) -> torch.Tensor:
    """``W̄ P``: outputs × source channels (a channel-wise route as a scatter of columns, not a product)."""
    assert route.gain is not None
    gain = torch.from_numpy(route.gain).float()
    if route.gain.ndim == 2:
        return summed @ gain
    assert route.chan is not None
    if route.width == len(route.chan) and (route.chan == np.arange(route.width)).all():  # channel c reads c
        return summed * gain
    keep = torch.from_numpy(np.flatnonzero(route.chan >= 0))
    result = torch.zeros((summed.shape[0], route.width))
    return result.index_add_(1, torch.from_numpy(route.chan)[keep], summed[:, keep] * gain[keep])


def _readers(chan: np.ndarray, width: int) -> np.ndarray:
    """``ranks × width``: the r-th channel of ``u`` that reads each source channel (-1: none)."""
    keep = np.flatnonzero(chan >= 0)
    order = keep[np.argsort(chan[keep], kind="stable")]
    counts = np.bincount(chan[keep], minlength=width)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    readers = np.full((int(counts.max()) if counts.size else 0, width), -1)
    for rank in range(readers.shape[0]):
        has = counts > rank
        readers[rank, has] = order[starts[has] + rank]
    return readers


def _kernel_patterns(
    weight: np.ndarray, groups: int, route: Route, outputs: np.ndarray, channels: np.ndarray
) -> np.ndarray:
    """``Σ_c W[o, c] P[c, i]`` for a convolution, over the output's group: through a channel-wise route
    only the channels of ``u`` that read ``i`` count, so this is a gather, not a product."""
    per = weight.shape[1]
    first = (outputs // (weight.shape[0] // groups)) * per
    assert route.gain is not None
    if route.gain.ndim == 2:
        rows = np.take_along_axis(route.gain[:, channels].T, first[:, None] + np.arange(per)[None, :], axis=1)
        return np.matmul(rows[:, None, :], weight[outputs].reshape(len(outputs), per, -1))[:, 0].reshape(
            len(outputs), *weight.shape[2:]
        )
    assert route.chan is not None
    found = np.zeros((len(outputs), *weight.shape[2:]))
    for readers in _readers(route.chan, route.width):
        read = readers[channels]
        local = read - first
        ok = np.flatnonzero((read >= 0) & (local >= 0) & (local < per))
        found[ok] += weight[outputs[ok], local[ok]] * route.gain[read[ok], None, None]
    return found


def _map_patterns(weight: np.ndarray, route: Route, outputs: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """``Σ_f W[o, f] P[f, i]`` at each position of the flattened map (a linear layer reading one)."""
    assert route.gain is not None and route.grid is not None
    if route.gain.ndim == 2:
        columns = route.gain[:, channels].T
    else:
        assert route.chan is not None
        columns = np.where(route.chan[None, :] == channels[:, None], route.gain[None, :], 0.0)
    size = route.grid[0] * route.grid[1]
    return (weight[outputs] * columns).reshape(len(outputs), -1, size).sum(1).reshape(len(outputs), *route.grid)


def _pattern_shape(weight: np.ndarray, gains: dict[Key, Route]) -> tuple[int, int] | None:
    """The shape of every entry's pattern, or None where there is none (1×1 kernels, features without one
    map behind them)."""
    if weight.ndim == 4:
        return None if weight.shape[2:] == (1, 1) else (weight.shape[2], weight.shape[3])
    grids = {route.grid for route in gains.values()}
    grid = grids.pop() if len(grids) == 1 else None
    return None if grid is None or grid == (1, 1) else grid


def _top_columns(magnitudes: torch.Tensor, top: int) -> np.ndarray:
    """Per row, the columns of the ``top`` largest values, largest first (ties: the lower column first)."""
    picked, part = magnitudes.topk(min(top, magnitudes.shape[1]), dim=1)
    order = np.lexsort((part.numpy(), -picked.numpy()), axis=1)
    return np.take_along_axis(part.numpy(), order, axis=1)


ENTRIES_AT_ONCE = 2**22  # values per batch of patterns (32 MB of float64)


def strongest_inputs(
    module: nn.Module,
    computed: torch.Tensor,
    gains: dict[Key, Route],
    shown: Sequence[int],
    top: int,
    method: str,
    channels: int,
    size: Sequence[int] = (),
) -> Inputs:
    """Each of the ``shown`` output channels' ``top`` strongest inputs over every source, by |strength|
    (exact zeros are no input: their slot's source is -1), from ``gains`` (of ``channels`` input channels) and
    the weight ``computed`` by the ``module`` (:mod:`.weights`) on maps of ``size`` (for its taps' shares)."""
    groups = module.groups if isinstance(module, nn.Conv2d) else 1
    weights, summed = _weights(computed, groups, tap_shares(module, size))
    keys = list(gains)
    full = torch.cat([_strengths(summed, gains[key]) for key in keys], 1)
    offsets = np.cumsum([0] + [gains[key].width for key in keys])[:-1]
    outputs = np.asarray(shown, dtype=np.int64)
    order = _top_columns(full[torch.from_numpy(outputs)].abs(), top)
    table, weight = full.numpy(), weights.numpy()
    values = np.take_along_axis(table[outputs], order, axis=1).astype(np.float64)
    source = np.searchsorted(offsets, order, side="right") - 1
    source[(values == 0) | ~np.isfinite(values)] = -1
    channel = order - offsets[np.maximum(source, 0)]
    shape = _pattern_shape(weight, gains)
    patterns = None
    if shape is not None:
        patterns = np.zeros((*order.shape, *shape))
        step = max(1, ENTRIES_AT_ONCE // max(channels, weight[0].size, 1))
        for which, key in enumerate(keys):
            slots = np.argwhere(source == which)
            for start in range(0, len(slots), step):
                part = slots[start : start + step]
                rows, columns = outputs[part[:, 0]], channel[part[:, 0], part[:, 1]]
                if weight.ndim == 4:
                    found = _kernel_patterns(weight, groups, gains[key], rows, columns)
                else:
                    found = _map_patterns(weight, gains[key], rows, columns)
                patterns[part[:, 0], part[:, 1]] = found
    return Inputs(method, tuple(keys), outputs, source, channel, values, patterns, table, offsets)
