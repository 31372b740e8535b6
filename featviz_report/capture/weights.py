"""The weight a Conv2d, ConvTranspose2d or Linear computes with, which is not always its ``weight`` parameter:
what the filters panel draws and what circuits read.

timm's ``StdConv2d`` and ``ScaledStdConv2d`` (BiT's ResNetV2, the NF-ResNets, NFNets) standardise theirs in
``forward``, a weight-standardised conv may do it in ``_conv_forward``, a parametrized one (weight norm,
spectral norm) computes it when read. Read off the parameter, every output's summed kernel would be off, and
the order and signs of its inputs with it. So while the capture pass runs the model on the samples, each such
layer's call is watched (:func:`recording`, from :func:`~.hooks.capturing`): the weight its forward (and any
hook on it) hands to its one convolution or linear map is the one it computes with. A layer that makes more
than one (a second branch, a low-rank update as its own product), none torch's functions show, or a weight
that changes from call to call (made from its input) has no one weight, and says so. Nothing runs that the
report would not run anyway: a layer that sets itself up on its first input sees the samples' size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from .tensors import Marked, same_memory, tensors_in

__all__ = ["Computed", "WeightReader", "recording", "weight_of", "NOT_ONE", "NONE_SEEN", "CHANGES", "UNSEEN"]

Computed = Mapping[str, "torch.Tensor | str"]  # by layer name: the weight a layer computes with, or why none
Weighted = nn.Conv2d | nn.ConvTranspose2d | nn.Linear
_WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_KERNEL_OPS = frozenset({"conv2d", "conv_transpose2d", "linear"})
_OTHER_OPS = frozenset(
    "conv1d conv3d conv_transpose1d conv_transpose3d matmul mm bmm addmm einsum __matmul__ __rmatmul__".split()
)
NOT_ONE = (
    "its forward makes more than one convolution or matrix product (a second branch, a low-rank update): no one weight"
)
NONE_SEEN = "its forward makes no convolution or linear map that torch's functions show: no weight to read"
CHANGES = "its weight changes from call to call (made from its input): no one weight"
UNSEEN = "it did not run while watched (a scan resumed with nothing left to scan): the weight it makes was not seen"


class _Recorder(TorchFunctionMode):
    """One call of a watched layer: each convolution, linear map and matrix product that reads what the layer
    was called with, and not what its forward returned (a hook's own product of the output, another layer
    called on it). A product of parameters alone makes the weight (an orthogonal parametrization, a merged
    low-rank update); the calls of a watched layer inside it are that layer's."""

    def __init__(self, reader: WeightReader, inputs: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.reader = reader
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.read = Marked(inputs)  # made from what the layer was called with
        self.returned = Marked()  # made from what its forward returned

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        operands = tensors_in((args, kwargs))
        read, after = self.read.any_of(operands), self.returned.any_of(operands)
        name = getattr(func, "__name__", "")
        if read and not after and self.reader.innermost is self and (name in _KERNEL_OPS or name in _OTHER_OPS):
            self.calls.append((name, args, kwargs))
        if read:
            self.read.add(tensors_in(result))
        if after:
            self.returned.add(tensors_in(result))
        return result


def _used(module: Weighted, calls: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> torch.Tensor | str | None:
    """The weight one call of ``module`` computed with (None: its parameter as stored), or why it has none."""
    if len(calls) > 1:
        return NOT_ONE
    if not calls:
        return NONE_SEEN
    parameter = module.weight
    name, args, kwargs = calls[0]
    if name in _KERNEL_OPS:
        weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
        if not isinstance(weight, torch.Tensor) or weight.shape != parameter.shape:
            return NOT_ONE
        same = weight is parameter or (same_memory(weight, parameter) and weight.stride() == parameter.stride())
        if parametrize.is_parametrized(module):  # kept: read again later, a spectral norm would iterate
            return weight.detach()
        copy = weight.dtype == parameter.dtype and bool(torch.equal(weight, parameter))  # .contiguous() of it
        return None if same or copy else weight.detach()
    operands = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    # x @ W.T + b: a matrix product with the parameter itself
    if any(t is parameter or same_memory(t, parameter) and t.numel() == parameter.numel() for t in operands):
        return None
    return NOT_ONE


class WeightReader:
    """The weights the watched layers computed with, call after call (see the module's docstring)."""

    def __init__(self) -> None:
        self._seen: dict[str, torch.Tensor | str | None] = {}
        self._open: list[_Recorder] = []

    def close(self) -> None:
        """Every recorder still open popped (a KeyboardInterrupt skips the hooks that would: torch runs them for
        an Exception only), so no mode outlives :func:`recording`."""
        while self._open:
            self._open.pop().__exit__(None, None, None)

    @property
    def innermost(self) -> _Recorder | None:
        return self._open[-1] if self._open else None

    def starting(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        recorder = _Recorder(self, tensors_in(args))
        recorder.__enter__()
        self._open.append(recorder)

    def returned(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        """First among the hooks: what the forward returned, which the hooks after it may use."""
        if self._open:
            self._open[-1].returned.add(tensors_in(output))

    def ending(self, name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            recorder = self._open.pop()
            recorder.__exit__(None, None, None)
            if output is None:  # its forward (or a hook) raised: the report fails with that error
                return
            found = _used(module, recorder.calls)  # type: ignore[arg-type]
            if name not in self._seen:
                self._seen[name] = found
            elif not _alike(self._seen[name], found):
                self._seen[name] = CHANGES

        return hook

    def computed(self, layers: Sequence[tuple[str, nn.Module]]) -> dict[str, torch.Tensor | str]:
        """By layer name, for the ``layers`` that do not compute with their parameter as stored; a layer this
        reader never saw run (a resumed scan with nothing left to run) and that may make its weight: why."""
        found = {name: seen for name, seen in self._seen.items() if seen is not None}
        unseen = (name for name, m in layers if isinstance(m, _WEIGHTED) and name not in self._seen)
        return found | {name: UNSEEN for name in unseen if _may_make_weight(dict(layers)[name])}


def _may_make_weight(module: nn.Module) -> bool:
    """Whether ``module`` may compute with something else than its parameter as stored: a forward or
    convolution step of its own class or instance, a parametrization, hooks of its own."""
    if parametrize.is_parametrized(module) or "forward" in vars(module) or module._forward_hooks:
        return True
    base = next(b for b in _WEIGHTED if isinstance(module, b))
    own_step = base is nn.Conv2d and type(module)._conv_forward is not nn.Conv2d._conv_forward  # type: ignore[attr-defined]
    return type(module).forward is not base.forward or own_step


def _alike(before: torch.Tensor | str | None, now: torch.Tensor | str | None) -> bool:
    if isinstance(before, torch.Tensor) and isinstance(now, torch.Tensor):
        return before.shape == now.shape and bool(torch.equal(before, now))
    return before is None and now is None or isinstance(before, str) and before == now


@contextmanager
def recording(layers: Sequence[tuple[str, nn.Module]]) -> Iterator[WeightReader]:
    """Watch every Conv2d, ConvTranspose2d and Linear among ``layers`` while the block runs the model: from just
    before its forward to after every hook on it (hooks registered before this block included)."""
    reader = WeightReader()
    with ExitStack() as stack:
        stack.callback(reader.close)
        for name, module in layers:
            if isinstance(module, _WEIGHTED):
                stack.callback(module.register_forward_pre_hook(reader.starting, prepend=True).remove)
                stack.callback(module.register_forward_hook(reader.returned, prepend=True).remove)
                stack.callback(module.register_forward_hook(reader.ending(name), always_call=True).remove)
        yield reader


def weight_of(module: nn.Module, name: str, computed: Computed) -> torch.Tensor | str:
    """The weight ``module`` (the layer called ``name``) computes with, from ``computed`` or else its parameter."""
    found = computed.get(name)
    return module.weight.detach() if found is None else found  # type: ignore[operator]
