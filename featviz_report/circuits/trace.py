"""One forward pass that records, for every captured Conv2d and Linear call, what it read and from which
captured layers.

Each captured layer's output is replaced by ``output.detach() + probe``: the same values, but cut off from
what came before, plus a zero per channel that requires a gradient. The gradient of anything with respect
to a layer's probe therefore flows only along paths that reach it from that layer without passing through
another captured layer; those layers are its *sources*. Meanwhile a ``TorchFunctionMode`` follows every
tensor's routes (:mod:`.routes`) from those sources, operation by operation (:mod:`.rules`), outside the
captured modules; a norm over the data's own statistics runs with them held constant (:mod:`.norms`). The
pass runs in eval mode with gradients on, every parameter's ``requires_grad`` off (only the probes need one),
and leaves the model as it found it, hooks removed, also when it raises.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture.hooks import DEFAULT_TYPES
from ..capture.tensors import Marked, first_tensor, tensors_in
from ..fields.rules import writes_first
from ..runtime.device import evaluating
from . import routes as R
from .norms import held_norm
from .rules import Key, Routes, follow
from .stash import Stash, replaying

__all__ = ["Target", "Traced", "trace_circuits", "is_target"]


def is_target(module: nn.Module) -> bool:
    """The layers whose channels get inputs: convolutions and linear layers (weights between channels)."""
    return isinstance(module, (nn.Conv2d, nn.Linear))


@dataclass
class Target:
    """One call of a captured Conv2d or Linear: what it read (linked to the probes by autograd), the axis of its
    channels there (1, or -1 for a Linear on ``N×…×F``), the routes to it from each source, and the version of
    what it read then (changed by a later in-place operation, it no longer is what the layer read)."""

    key: Key
    module: nn.Module
    inputs: torch.Tensor
    axis: int
    routes: Routes
    version: int

    @property
    def changed(self) -> bool:
        return self.inputs._version != self.version


@dataclass
class Traced:
    """Every target of the pass in call order, and each source's probe (shape ``1×C×1×1``, ``1×C``, ...)."""

    targets: list[Target]
    probes: dict[Key, torch.Tensor]
    samples: int


class _Books(TorchFunctionMode):
    """The routes of every followed tensor, by identity (weak references guard against a reused id)."""

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[int, tuple[weakref.ref[torch.Tensor], Routes]] = {}
        self.data = Marked()  # tensors made from the samples (masks, gates...)
        self.inside = 0  # depth inside captured leaf modules, whose insides are not followed

    def routes(self, value: Any) -> Routes | None:
        entry = self.known.get(id(value)) if isinstance(value, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is value else None

    def set(self, tensor: torch.Tensor, routes: Routes) -> None:
        self.known[id(tensor)] = (weakref.ref(tensor), routes)
        self.mark(tensor)

    def mark(self, tensor: torch.Tensor) -> None:
        """``tensor`` depends on the samples."""
        self.data.add((tensor,))

    def is_data(self, value: Any) -> bool:
        return value in self.data

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.inside:
            return func(*args, **kwargs)
        held = held_norm(func, args, kwargs) if args and self.routes(args[0]) else None
        result = func(*args, **kwargs) if held is None else held
        with torch._C.DisableTorchFunction():  # the books' own tensor reads are not the model's
            read = list(tensors_in((args, kwargs)))
            if any(self.routes(t) for t in read):
                outputs = [t for t in tensors_in(result) if t.is_floating_point()]
                for output, routes in zip(outputs, follow(func, args, kwargs, outputs, self.routes, self.is_data)):
                    self.set(output, routes)
                if _writes(func, kwargs) and read:
                    self._written(read[0], read, frozenset(id(t) for t in outputs))
            if any(self.is_data(t) for t in read):
                for output in tensors_in(result):
                    self.mark(output)
        return result

    def _written(self, target: torch.Tensor, read: list[torch.Tensor], followed: frozenset[int]) -> None:
        """After an in-place write into ``target``: every followed tensor sharing its memory (the tensor a
        view or ``x[:, 0] = ...`` wrote into, its other views) holds what no rule followed; ``followed``: the
        outputs the rules just gave routes (``relu_``'s own result)."""
        reached = {key: route.width for t in read for key, route in (self.routes(t) or {}).items()}
        try:
            memory = target.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # no storage of its own (a tensor subclass): nothing shares it
            return
        for ref, routes in list(self.known.values()):
            tensor = ref()
            if tensor is None or id(tensor) in followed or tensor.untyped_storage().data_ptr() != memory:
                continue
            widths = {key: route.width for key, route in routes.items()} | reached
            self.set(tensor, {key: R.unknown(width) for key, width in widths.items()})


def _writes(func: Any, kwargs: dict[str, Any]) -> bool:
    """Whether ``func`` writes into its first argument (``mul_``, ``x[:, 0] = 0``, ``x += y``) or into ``out=``."""
    return writes_first(func) or kwargs.get("out") is not None


def _probe_shape(module: nn.Module, output: torch.Tensor) -> tuple[list[int], bool]:
    """The probe's shape for ``output`` and whether its channels are axis 1 (else the last axis, as for a
    Linear on ``N×…×F``: the report shows that axis as the channels)."""
    on_axis_1 = output.ndim in (2, 4) and not (isinstance(module, nn.Linear) and output.ndim > 2)
    shape = [1] * output.ndim
    shape[1 if on_axis_1 else -1] = output.shape[1 if on_axis_1 else -1]
    return shape, on_axis_1


@contextmanager
def _hooked(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], books: _Books, traced: Traced) -> Iterator[None]:
    calls: Counter[str] = Counter()
    opened: list[Key] = []

    def before(name: str, leaf: bool):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            key = (name, calls[name])
            calls[name] += 1
            opened.append(key)
            tensor = first_tensor(args)
            if is_target(module) and isinstance(tensor, torch.Tensor) and tensor.ndim >= 2 and not books.inside:
                axis = 1 if tensor.ndim == 2 or isinstance(module, nn.Conv2d) else -1
                routes = books.routes(tensor) or {}
                if axis != 1:  # routes follow axis 1: here only which sources reach it is known
                    routes = {k: R.unknown(route.width) for k, route in routes.items()}
                traced.targets.append(Target(key, module, tensor, axis, routes, tensor._version))
            if leaf:
                books.inside += 1
            if leaf and isinstance(tensor, torch.Tensor) and tensor.requires_grad and tensor is args[0]:
                return (tensor.detach(), *args[1:])  # its output is cut off anyway: no graph through it
            return None

        return hook

    def after(leaf: bool):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            key = opened.pop()
            if leaf:
                books.inside -= 1
            if (
                not isinstance(output, torch.Tensor)
                or output.ndim < 2
                or not output.is_floating_point()
                or books.inside
            ):
                return None
            shape, on_axis_1 = _probe_shape(module, output)
            probe = torch.zeros(shape, dtype=output.dtype, device=output.device, requires_grad=True)
            traced.probes[key] = probe
            replaced = output.detach() + probe
            width = probe.numel()
            books.set(replaced, {key: R.source(width) if on_axis_1 else R.unknown(width)})
            return replaced

        return hook

    with ExitStack() as stack:
        for name, module in layers:
            leaf = _leaf(module)
            stack.callback(module.register_forward_pre_hook(before(name, leaf)).remove)
            stack.callback(module.register_forward_hook(after(leaf)).remove)
        yield


@contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """Eval mode, gradients on, parameters without ``requires_grad`` (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with evaluating(model), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _leaf(module: nn.Module) -> bool:
    return isinstance(module, DEFAULT_TYPES) or not any(True for _ in module.children())


def trace_circuits(
    model: nn.Module, layers: Sequence[tuple[str, nn.Module]], inputs: torch.Tensor, stash: Stash | None = None
) -> Traced:
    """Run ``model`` on ``inputs`` with the captured ``layers`` probed; what every target read, and from where.
    With a ``stash`` of these inputs' captured outputs, the captured leaf modules return those instead of
    running (:mod:`.stash`)."""
    traced = Traced([], {}, int(inputs.shape[0]))
    books = _Books()
    replayed = {name for name, _ in stash.outputs if _leaf(dict(layers)[name])} if stash is not None else set()
    books.mark(inputs)  # what is made from it depends on the samples: no constant of the wiring
    with _probing(model), _hooked(model, layers, books, traced), books:
        with replaying(layers, stash, replayed) if stash is not None else nullcontext():
            model(inputs)
    return traced
