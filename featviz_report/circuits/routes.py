"""How one tensor's channels depend on one captured layer's channels (its *source*): a :class:`Route`, and
the algebra of routes that the operations between two captured layers apply (see :mod:`.rules`).

A route is *channel-wise* when each of the tensor's channels reads at most one of the source's channels
(``chan``: which one, -1 for none). It is *linear* when the path so far is affine; it then carries the
gain of a uniform raise of each source channel by one: per tensor channel (channel-wise, ``gain`` 1-D), or
as a matrix of tensor channels × source channels once a convolution or a linear layer mixed them. A route
that is neither (a nonlinearity after a mixing, or an operation no rule knows) is *unknown*: the tensor
depends on the source somehow, and only the gradient can say how much.

Channels are axis 1 (``N×C×H×W``, ``N×F``). After a flatten, ``grid`` is the ``(H, W)`` of the map the
features came from: feature ``f`` is position ``f % (H·W)`` of the map's channel ``f // (H·W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Route",
    "source",
    "unknown",
    "nonlinear",
    "scaled",
    "as_matrix",
    "mixed",
    "merged",
    "broadcast",
    "sliced",
    "concatenated",
    "flattened",
    "MAX_MATRIX",
]

MAX_MATRIX = 2**24  # entries of a mixed route's gain matrix (128 MB of float64); past it the route is unknown


@dataclass(frozen=True, eq=False)
class Route:
    """``width``: the source's channels; ``chan`` (int, per tensor channel) and ``gain`` (float64: per tensor
    channel alongside ``chan``, else tensor channels × ``width``) as described above; None where not known."""

    width: int
    chan: np.ndarray | None = None
    gain: np.ndarray | None = None
    grid: tuple[int, int] | None = None

    @property
    def linear(self) -> bool:
        return self.gain is not None

    @property
    def channels(self) -> int | None:
        """The tensor's channels, where the route knows them."""
        if self.chan is not None:
            return len(self.chan)
        return None if self.gain is None else self.gain.shape[0]


def source(width: int) -> Route:
    """A captured layer's own output: channel ``c`` is its channel ``c``, gain 1."""
    return Route(width, np.arange(width), np.ones(width))


def unknown(width: int) -> Route:
    return Route(width)


def nonlinear(route: Route) -> Route:
    """After an operation that keeps channels apart but is not affine (an activation, a max pool)."""
    return Route(route.width, route.chan, None, route.grid)


def scaled(route: Route, factor: np.ndarray | float) -> Route:
    """After multiplying each channel by ``factor`` (a number, or one per channel): a BatchNorm's scale."""
    if route.gain is None:
        return route
    factor = np.asarray(factor, dtype=np.float64)
    gain = route.gain * (factor if route.gain.ndim == 1 or factor.ndim == 0 else factor[:, None])
    return Route(route.width, route.chan, gain, route.grid)


def as_matrix(route: Route) -> np.ndarray:
    """A linear route's gains as tensor channels × source channels."""
    assert route.gain is not None
    if route.gain.ndim == 2:
        return route.gain
    assert route.chan is not None  # a gain per channel comes with its channel map
    matrix = np.zeros((len(route.gain), route.width))
    rows = np.flatnonzero(route.chan >= 0)
    matrix[rows, route.chan[rows]] = route.gain[rows]
    return matrix


def mixed(route: Route, matrix: np.ndarray) -> Route:
    """After a linear map of the channels (``matrix``: new channels × old): a convolution's summed kernel."""
    if route.gain is None or matrix.shape[0] * route.width > MAX_MATRIX:
        return unknown(route.width)
    return Route(route.width, None, matrix @ as_matrix(route))


def _joined_chan(routes: Sequence[Route]) -> np.ndarray | None:
    """The channel map of routes combined channel by channel, where every channel reads one source channel."""
    chans = [route.chan for route in routes]
    if any(chan is None for chan in chans):
        return None
    joined = np.full(len(chans[0]), -1)  # type: ignore[arg-type]
    for chan in chans:
        assert chan is not None
        clash = (joined >= 0) & (chan >= 0) & (joined != chan)
        if clash.any():
            return None
        joined = np.where(chan >= 0, chan, joined)
    return joined


def merged(routes: Sequence[Route], linear: bool) -> Route:
    """Routes of the same tensor channels combined channel by channel: summed (``linear``: an add) or by
    an operation that is not affine (a product of two followed tensors)."""
    width, grid = routes[0].width, routes[0].grid if all(r.grid == routes[0].grid for r in routes) else None
    chan = _joined_chan(routes)
    if not (linear and all(r.linear for r in routes)):
        return Route(width, chan, None, grid)
    if chan is not None:
        gain = np.zeros(len(chan))
        for route in routes:
            assert route.chan is not None and route.gain is not None
            gain += np.where(route.chan >= 0, route.gain, 0.0)
        return Route(width, chan, gain, grid)
    if routes[0].channels is not None and routes[0].channels * width > MAX_MATRIX:
        return unknown(width)
    return Route(width, None, sum((as_matrix(r) for r in routes), np.zeros((routes[0].channels or 0, width))))


def broadcast(route: Route, channels: int) -> Route | None:
    """The route of a tensor broadcast to ``channels`` channels (None when it cannot be)."""
    if route.channels == channels or route.channels is None and route.gain is None:
        return route
    if route.channels != 1:
        return None
    chan = None if route.chan is None else np.repeat(route.chan, channels)
    gain = None if route.gain is None else np.repeat(route.gain, channels, axis=0)
    return Route(route.width, chan, gain)


def sliced(route: Route, index: slice | np.ndarray) -> Route:
    """The route of some of the tensor's channels (``x[:, a:b]``, a chunk)."""
    if route.chan is None and route.gain is None:
        return route
    chan = None if route.chan is None else route.chan[index]
    return Route(route.width, chan, None if route.gain is None else route.gain[index])


def concatenated(parts: Sequence[tuple[Route | None, int]]) -> Route:
    """The route of channels concatenated from several tensors: each part's route (None: that tensor does
    not read this source) and its channels."""
    width = next(route.width for route, _ in parts if route is not None)
    routes = [route or Route(width, np.full(n, -1), np.zeros(n)) for route, n in parts]
    if all(route.chan is not None for route in routes):
        chan = np.concatenate([route.chan for route in routes])  # type: ignore[misc]
        linear = all(route.gain is not None for route in routes)
        gain = np.concatenate([route.gain for route in routes]) if linear else None  # type: ignore[misc]
        return Route(width, chan, gain)
    if all(route.gain is not None for route in routes) and sum(n for _, n in parts) * width <= MAX_MATRIX:
        return Route(width, None, np.concatenate([as_matrix(route) for route in routes]))
    return unknown(width)


def flattened(route: Route, grid: tuple[int, int]) -> Route:
    """The route of a map's channels flattened with their ``grid`` positions into features."""
    size = grid[0] * grid[1]
    chan = None if route.chan is None else np.repeat(route.chan, size)
    gain = route.gain
    if gain is not None:
        if gain.ndim == 2 and gain.shape[0] * size * route.width > MAX_MATRIX:
            return Route(route.width, chan)
        gain = np.repeat(gain, size, axis=0)
    return Route(route.width, chan, gain, grid if route.grid is None else None)
