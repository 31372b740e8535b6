"""The graph of what ran: one forward pass recorded as module calls and the tensor operations between them.

Works on any eager model, whatever its Python control flow (no ``torch.fx`` tracing): module hooks
record each leaf module's call (a module with no children, or a layer the report captures whole, such
as ``MultiheadAttention``), and a ``TorchFunctionMode`` records every torch function or tensor method
called between them (adds, concatenations, reshapes, functional activations) that takes a tensor
another node produced. Edges follow tensors by identity, held through weak references so a freed
tensor's id can never be mistaken for a new one. A module called twice is two nodes of one layer.
Parameters are not nodes.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture.hooks import DEFAULT_TYPES
from ..capture.tensors import tensors_in
from ..report_data import GraphNode, ModelGraph

__all__ = ["record_graph"]

MAX_NODES = 5000  # past this, recording stops and the graph says it is cut short


@dataclass
class _Recorder:
    names: dict[nn.Module, str]
    leaves: set[nn.Module]
    nodes: list[GraphNode] = field(default_factory=list)
    edges: set[tuple[int, int]] = field(default_factory=set)
    producers: dict[int, tuple[weakref.ref[torch.Tensor], int]] = field(default_factory=dict)
    scopes: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    inside_leaf: int = 0
    pending: list[list[int]] = field(default_factory=list)  # a leaf's input producers, until it returns

    @property
    def full(self) -> bool:
        return len(self.nodes) >= MAX_NODES

    def add(self, kind: str, name: str, type_: str, output: object, sources: list[int], call: int = 0) -> int:
        tensors = tensors_in(output)
        shape = tuple(tensors[0].shape[1:]) if tensors else ()
        node = GraphNode(len(self.nodes), kind, name, type_, shape, self.scopes[-1] if self.scopes else "", call)
        self.nodes.append(node)
        self.edges.update((source, node.id) for source in dict.fromkeys(sources))
        for tensor in tensors:
            self.producers[id(tensor)] = (weakref.ref(tensor), node.id)
        return node.id

    def sources(self, *values: object) -> list[int]:
        found = []
        for tensor in tensors_in(values):
            entry = self.producers.get(id(tensor))
            if entry is not None and entry[0]() is tensor:
                found.append(entry[1])
        return found

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module in self.leaves:
            self.inside_leaf += 1
            self.pending.append(self.sources(args, kwargs))
        else:
            self.scopes.append(self.names[module])

    def after(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
        if module not in self.leaves:
            self.scopes.pop()
            return
        self.inside_leaf -= 1
        sources = self.pending.pop()
        if self.inside_leaf == 0 and not self.full:
            name = self.names[module]
            call = self.calls.get(name, 0)
            self.calls[name] = call + 1
            self.add("module", name, type(module).__name__, output, sources, call)


class _Operations(TorchFunctionMode):
    """Records torch functions and tensor methods called outside leaf modules on recorded tensors."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        recorder = self.recorder
        if recorder.inside_leaf or recorder.full or not tensors_in(result):
            return result
        sources = recorder.sources(args, kwargs)
        if sources:
            name = getattr(func, "__name__", type(func).__name__)
            if name == "__get__":  # a property such as x.T: the descriptor knows its name
                name = getattr(getattr(func, "__self__", None), "__name__", name)
            name = name.strip("_") or "op"
            recorder.add("op", name, name, result, sources)
        return result


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, DEFAULT_TYPES) or not any(True for _ in module.children())


@contextmanager
def _hooked(model: nn.Module, recorder: _Recorder) -> Iterator[None]:
    with ExitStack() as stack:
        for module in recorder.names:
            stack.callback(module.register_forward_pre_hook(recorder.before, with_kwargs=True).remove)
            stack.callback(module.register_forward_hook(recorder.after, with_kwargs=True, always_call=True).remove)
        yield


def record_graph(
    model: nn.Module, inputs: torch.Tensor, beside: AbstractContextManager[object] | None = None
) -> ModelGraph:
    """Run ``model`` once on ``inputs`` (gradients off) and return the graph of what ran. The caller sets
    the model's mode and device; hooks are removed even when the forward pass raises. ``beside`` is
    entered innermost for the same pass (another recording that wants to see it)."""
    names = {module: name for name, module in model.named_modules() if name}
    recorder = _Recorder(names, {module for module in names if _is_leaf(module)})
    recorder.add("input", "input", "input", inputs, [])
    with torch.no_grad(), _hooked(model, recorder), _Operations(recorder), beside or nullcontext():
        output = model(inputs)
    truncated = recorder.full
    recorder.add("output", "output", "output", output, recorder.sources(output))
    return ModelGraph(tuple(recorder.nodes), tuple(sorted(recorder.edges)), truncated)
