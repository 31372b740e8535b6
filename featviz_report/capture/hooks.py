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
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UsageError
from ..runtime.device import evaluating
from .reduce import Reduced, reduce_output
from .tensors import first_tensor
from .weights import WeightReader, recording

__all__ = ["Capture", "capturing", "select_layers", "maps_order", "DEFAULT_TYPES"]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, nn.MultiheadAttention)


def select_layers(
    model: nn.Module, globs: Sequence[str] = (), featviz: Sequence[str] = ()
) -> list[tuple[str, nn.Module]]:
    """Modules to capture, in model order: every Conv2d, Linear and MultiheadAttention, or those whose
    qualified name matches one of ``globs`` (shell-style, e.g. ``layer1.*.conv?``); and for each ``featviz``
    glob (``--featviz``) that matches none of these, the modules it names, so that a container such as
    resnet's ``layer2`` (not captured by default) is captured for its output to be visualised."""
    named = [(name, module) for name, module in model.named_modules() if name]
    for option, patterns in (("--layers", globs), ("--featviz", featviz)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in named):
                examples = ", ".join(n for n, _ in named[:6])
                raise UsageError(
                    f"{option} {pattern!r} matches no layer of the model (layers are named like: {examples})"
                )
    if globs:
        chosen = {n for n, _ in named if any(fnmatch.fnmatchcase(n, p) for p in globs)}
    else:
        chosen = {n for n, m in named if isinstance(m, DEFAULT_TYPES)}
    for pattern in featviz:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in chosen):
            chosen |= {n for n, _ in named if fnmatch.fnmatchcase(n, pattern)}
    if not chosen:
        raise UsageError("the model has no Conv2d or Linear layers to capture; name some with --layers")
    return [(n, m) for n, m in named if n in chosen]


def maps_order(module: nn.Module) -> tuple[int, int, int, int]:
    """The order of a module's 4-D output's axes that gives the N×C×H×W maps a report shows: as they are, or
    for a Linear (on N×H×W×C, a 1×1 convolution channels last) channels first."""
    return (0, 3, 1, 2) if isinstance(module, nn.Linear) else (0, 1, 2, 3)


def _attention_weights(module: nn.MultiheadAttention, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    """Per-head attention weights for the call just made, recomputed beside it so the model's own
    output is untouched (``forward`` directly: no hooks run again)."""
    return module.forward(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})[1]  # type: ignore[arg-type]


@dataclass
class Capture:
    """What the hooks collected in the current batch, keyed by (qualified name, call number)."""

    modules: dict[str, nn.Module]
    scale: str | None = "channel"  # None: statistics only, no tiles
    pending: list[tuple[tuple[str, int], tuple[int, ...], Reduced]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer name → what it gave instead
    last_call: tuple[str, nn.Module, tuple[int, ...]] | None = None  # the leaf module entered last
    last_returned: bool = False  # whether that module's forward returned
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # every module's first output shape
    batch: int | None = None  # the samples in the model's input now (None: not a tensor)
    weights: WeightReader = field(default_factory=WeightReader)  # what the weighted layers compute with
    _calls: Counter[str] = field(default_factory=Counter)

    def hook(self, name: str):  # type: ignore[no-untyped-def]
        def on_output(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], output: object) -> None:
            call = self._calls[name]
            self._calls[name] += 1
            if isinstance(module, nn.MultiheadAttention):
                output = _attention_weights(module, args, kwargs)
            tensor = first_tensor(output)
            if tensor is not None and tensor.ndim == 4:
                tensor = tensor.permute(maps_order(module))
            if tensor is None or tensor.ndim not in (2, 3, 4):
                self.skipped[name] = "no tensor" if tensor is None else f"a {tensor.ndim}-D output"
                return
            if self.batch is not None and tensor.shape[0] != self.batch:  # windows or heads folded into it
                self.skipped[name] = f"{tensor.shape[0]} along the first axis for {self.batch} samples"
                return
            self.pending.append(((name, call), tuple(tensor.shape[1:]), reduce_output(tensor, self.scale)))

        return on_output

    def starting(self, _model: nn.Module, inputs: tuple[object, ...]) -> None:
        """The model's own pre-hook: how many samples this forward pass holds."""
        tensor = first_tensor(inputs)
        self.batch = tensor.shape[0] if tensor is not None and tensor.ndim > 0 else None

    def entering(self, name: str):  # type: ignore[no-untyped-def]
        def on_input(module: nn.Module, inputs: tuple[object, ...]) -> None:
            tensor = first_tensor(inputs)
            self.last_call = (name, module, tuple(tensor.shape) if tensor is not None else ())
            self.last_returned = False

        return on_input

    def leaving(self, name: str):  # type: ignore[no-untyped-def]
        def on_return(module: nn.Module, inputs: object, output: object) -> None:
            self.last_returned = True
            if name not in self.shapes:
                tensor = first_tensor(output)
                self.shapes[name] = tuple(tensor.shape[1:]) if tensor is not None else ()

        return on_return

    def drain(self) -> list[tuple[tuple[str, int], tuple[int, ...], Reduced]]:
        """The batch's reductions, moved to the CPU, in call order; resets for the next batch."""
        done = [(key, shape, reduced.to_cpu()) for key, shape, reduced in self.pending]
        self.pending.clear()
        self._calls.clear()
        self.last_call = None
        return done


@contextmanager
def capturing(
    model: nn.Module, layers: Sequence[tuple[str, nn.Module]], scale: str | None = "channel"
) -> Iterator[Capture]:
    """Hook ``layers`` of ``model`` for the duration of the block, in eval mode without gradients.

    On exit, normally or by an exception, every hook is removed and every module's training flag and
    every parameter's ``requires_grad`` are what they were before. While attention layers are captured,
    PyTorch's fused Transformer fast path is off (it would skip the attention module and its hook).
    """
    grads = {param: param.requires_grad for param in model.parameters()}
    capture = Capture(dict(layers), scale)
    handles = []
    mha = getattr(torch.backends, "mha", None)
    fused = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None and any(isinstance(m, nn.MultiheadAttention) for _, m in layers):
            mha.set_fastpath_enabled(False)  # the fused encoder path would bypass the attention module
        for param in grads:
            param.requires_grad_(False)
        handles.append(model.register_forward_pre_hook(capture.starting))
        for name, module in layers:
            handles.append(module.register_forward_hook(capture.hook(name), with_kwargs=True))
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()):
                handles.append(module.register_forward_pre_hook(capture.entering(name)))
            if name:
                handles.append(module.register_forward_hook(capture.leaving(name)))
        with evaluating(model), recording(layers) as capture.weights:
            yield capture
    finally:
        for handle in handles:
            handle.remove()
        for param, required in grads.items():
            param.requires_grad_(required)
        if mha is not None and fused is not None:
            mha.set_fastpath_enabled(fused)
