"""Receptive fields composed exactly along one forward pass, operation by operation.

A ``TorchFunctionMode`` follows every tensor that depends on the input and keeps, for each of its two
spatial axes, the first and last input row (or column) each position reads. The input's own positions
read themselves; each operation maps its inputs' ranges to its output's:

- convolutions and max/average pooling (kernel, stride, padding, dilation, ceil mode), adaptive
  pooling and padding (constant, reflect, replicate, circular) read a window of positions, clipped to
  the real ones;
- spatially pointwise operations (activations, normalisation, dropout, arithmetic, linear layers and
  softmax over channels, concatenation, stacking and splits over channels, reshapes and permutations
  that keep the spatial axes) take the union of their inputs' ranges, a broadcast axis of size 1
  reading for all;
- a mean, sum or max over a spatial axis (keeping it) reads the whole axis; over both (or everything)
  without keeping them, every element reads everything the positions read;
- once every position of a tensor reads the same box (maps pooled to 1×1), so does every element of
  anything computed from it alone, by any operation: a squeeze-excitation gate written as
  ``view(b, c)``, linear layers, ``view(b, c, 1, 1)`` keeps its box, which a product with the maps then
  adds to every position;
- maps merged into tokens (``flatten(2)``, ``view(b, c, h * w)``) keep each token's field, through
  permutations, reshapes of other axes, token-wise layers and back to maps; attention (``q @ kᵀ``,
  softmax, ``@ v``, ``scaled_dot_product_attention``), a softmax, mean or linear layer across the tokens
  (GCNet, non-local blocks, CoAtNet, MLP-Mixer) read every token;
- resampling (``F.interpolate``, ``nn.Upsample``: any mode, size, scale or antialias) reads what the
  same call reads when run on one-hot inputs, one axis at a time; transposed convolutions and pixel
  (un)shuffles read the positions their geometry sends to each output.

Every other operation on a followed tensor makes its outputs unknown, as do anything unknown flowing
into a union, a write (every other name for the memory written into becomes unknown: its views, its base,
tensors made where the mode did not see; an indexed assignment makes the written tensor unknown too), a module
whose output did not come through the mode (a compiled extension), a tensor this bookkeeping cannot read
(sparse) and any TorchScript module in the model (the tracer then stays out). So a layer gets a field
only when every step to it was understood; the caller then falls back to the gradient
(:mod:`featviz_report.fields.receptive`). Normalisation counts as pointwise (local response norm runs along
dim 1): its statistics are not part of the field, as in the gradient method. Channels are merged: after
a pixel unshuffle (space to depth) and a shuffle back, a field can be larger than the exact one. Fields
are bounding boxes in input pixels.

The kinds of field live in :mod:`featviz_report.fields.kinds`, the rule of each operation in
:mod:`featviz_report.fields.rules` (tables by operation name, given each operation as a
:class:`~featviz_report.fields.calls.Call`); this module follows the pass and keeps the books (what is
followed, what was written into, what counts as a constant).

A layer the tracer refuses is :class:`Blind` rather than None (and its fields unknown, not the gradient's)
where what it computes depends on values that reached it where autograd does not see, so that the gradient's
box would miss them: a tensor handed on without a gradient (``detach()``, ``new_tensor()``, ``torch.tensor()``,
``.data``), another tensor over followed memory, outside the views autograd links to it (``nn.Parameter(y)``,
the tensor behind a write through ``detach()`` or ``.data``), or, once values of the input have left torch
(``.numpy()``, ``.tolist()``, ``.item()``, ``float()``), any tensor neither followed nor a constant (maps
filled through numpy, a tensor made from a list). Each such tensor, whatever is computed from it and whatever
memory it is written into carry the reason.

Not seen: values that leave torch and come back as Python numbers (``x * s.item()``), into a parameter, a
buffer or a small tensor from a factory (filled through numpy), or out of a scripted function (not module)
or ``torch.vmap`` as a scalar, a vector or 1×1 maps, are taken for constants, so what they carry from the
input is missing from the field; nor ``Tensor.set_``, nor a write where torch's functions are not seen (numpy
into a tensor the tracer follows, a storage copy, a scripted function, BatchNorm's running statistics in
training mode).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture.hooks import maps_order
from ..capture.tensors import first_tensor, tensors_in
from .calls import Args, Kwargs, Operand
from .kinds import Axis, Field, Known, Tokens, TracedField, Whole, fits
from .rules import FACTORIES, SHAPE_OF_OTHER, UNRELATED, field_of, op_name, raw_name, writes_first

__all__ = ["TracedField", "Blind", "LayerFields", "tracing_fields", "trace_fields"]

_SEVERED = frozenset("detach new_tensor tensor".split())  # the values of a followed tensor, without a gradient
_ESCAPES = frozenset(  # values out of torch (raw names), where they may come back unseen
    "numpy tolist item __array__ __float__ __int__ __complex__ __index__ __dlpack__".split()
)


@dataclass(frozen=True)
class Blind:
    """A layer the tracer could not follow to whose values depend on the input along a path autograd does not
    record: the gradient's box would miss it, so its fields are unknown; ``reason`` says how the values went."""

    reason: str


LayerFields = dict[tuple[nn.Module, int], TracedField | Blind | None]  # each (module, call)'s: None, the gradient's


class _State(NamedTuple):
    """What the tracer knows of a tensor: whether it is followed, and its field (followed with None: unknown)."""

    followed: bool
    field: Known | None


class _Followed(NamedTuple):
    """A followed tensor, held weakly (its id may be another's once it is gone), and its field."""

    tensor: weakref.ref[torch.Tensor]
    field: Known | None


class _Reason(NamedTuple):
    """A tensor or a storage, held weakly, and why the gradient cannot see how its values depend on the input."""

    held: weakref.ref[Any]
    reason: str


class _Views(NamedTuple):
    """Followed memory: its storage, held weakly, and the tensors that followed tensors there are views of (or
    are themselves), by id."""

    storage: weakref.ref[Any]
    roots: dict[int, weakref.ref[torch.Tensor]]


def _blind(how: str) -> str:
    """The reason a :class:`Blind` layer gives, for values of the input that went through ``how``."""
    return f"values from the input reach it through {how}, which the gradient cannot see, nor the tracer follow"


class _Tracer(TorchFunctionMode):
    """Follows tensors that depend on the input, by identity (weak references guard against reuse)."""

    def __init__(self, constants: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.known: dict[int, _Followed] = {}
        self.constants = constants  # the model's parameters and buffers by id, held: no other tensor takes one
        self.derived: dict[int, torch.Tensor] = {}  # computed from those and FACTORIES alone (a
        # transposed weight, a relative position bias gathered from its table)
        self.by_memory: dict[int | None, dict[int, weakref.ref[torch.Tensor]]] = {}  # followed, by memory
        self.tainted: dict[int, weakref.ref[Any]] = {}  # memory holding input-dependent values (followed
        # tensors', or written into) → its storage, alive while any tensor uses it (its address is not reused)
        self.blind: dict[int, _Reason] = {}  # tensors holding values of the input that autograd does not trace
        # to it → the tensor, why; and memory written with such values → its storage, why
        self.blind_memory: dict[int, _Reason] = {}
        self.escaped: str | None = None  # why values of the input left torch (numpy...), once they have
        self.roots: dict[int, _Views] = {}  # followed memory's storage and what followed tensors there are views
        # of (or they themselves), by memory: autograd links those

    def set(self, tensor: torch.Tensor, field: Known | None) -> None:
        if field is not None and not fits(field, tensor):
            field = None
        ref = weakref.ref(tensor)
        self.known[id(tensor)] = _Followed(ref, field)
        memory = _memory(tensor)
        self.by_memory.setdefault(memory, {})[id(tensor)] = ref
        if memory is not None:  # what it is a view of, with its storage (the address may be another's later)
            storage, root = tensor.untyped_storage(), _root(tensor)
            views = self.roots.get(memory)
            if views is None or views.storage() is not storage:
                views = self.roots[memory] = _Views(weakref.ref(storage), {})
            views.roots[id(root)] = weakref.ref(root)
        self.taint(tensor)

    def taint(self, tensor: torch.Tensor) -> None:
        """Mark ``tensor``'s memory: any other tensor over it, seen or not, holds what is not known."""
        memory = _memory(tensor)
        if memory is not None:
            self.tainted[memory] = weakref.ref(tensor.untyped_storage())

    def sharing(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Followed tensors other than ``tensor`` that are views of its memory (or it of theirs)."""
        same = (ref() for ref in self.by_memory.get(_memory(tensor), {}).values())
        return [t for t in same if t is not None and t is not tensor and self.state(t).followed]

    def state(self, tensor: torch.Tensor) -> _State:
        """Whether ``tensor`` is followed, and its field."""
        entry = self.known.get(id(tensor))
        if entry is not None and entry.tensor() is tensor:
            return _State(True, entry.field)
        memory = _memory(tensor) if self.tainted else None  # another name for such memory (a view the mode
        storage = self.tainted.get(memory) if memory is not None else None  # did not see, nn.Parameter(y))
        return _State(storage is not None and storage() is not None, None)

    def constant(self, tensor: torch.Tensor) -> bool:
        """A parameter or buffer of the model, or computed from them alone."""
        if self.constants.get(id(tensor)) is tensor:
            return True
        return self.derived.get(id(tensor)) is tensor  # held here, so no other tensor takes its id

    def current(self, tensor: torch.Tensor) -> _State:
        """:meth:`state`, unknown if the tensor was reshaped where the mode did not see (``set_``, ``.data =``).
        Inside the mode's handler only: elsewhere the mode sees every shape asked for, at a cost."""
        state = self.state(tensor)
        return state if state.field is None or fits(state.field, tensor) else _State(state.followed, None)

    def mark(self, tensor: torch.Tensor, reason: str) -> None:
        """Record that ``tensor`` holds values of the input that autograd does not trace to it, and why."""
        self.blind[id(tensor)] = _Reason(weakref.ref(tensor), reason)

    def blindness(self, tensor: torch.Tensor) -> str | None:
        """Why the gradient cannot see how ``tensor``'s values depend on the input; None where it can or they do
        not. Outside the mode's handler, only with torch functions off (it reads a tensor's base)."""
        marked = self.blind.get(id(tensor))
        if marked is not None and marked.held() is tensor:
            return marked.reason
        if not (self.tainted or self.blind_memory) or not tensor.numel():
            return None
        memory = _memory(tensor)
        if memory is None:
            return None
        written = self.blind_memory.get(memory)
        if written is not None and written.held() is not None:
            return written.reason
        return self._unlinked(tensor, memory)

    def _unlinked(self, tensor: torch.Tensor, memory: int) -> str | None:
        """A tensor not followed over followed memory, none of whose followed names is in its family of views
        (``nn.Parameter(y)``, the tensor behind a write through ``detach()``): autograd does not link them."""
        entry = self.known.get(id(tensor))
        storage, views = self.tainted.get(memory), self.roots.get(memory)
        if entry is not None and entry.tensor() is tensor or storage is None or views is None:
            return None
        if storage() is None or views.storage() is not storage():  # none followed in it, or no more (reused)
            return None  # (written only where the mode did not see, a script: autograd may see it)
        root = _root(tensor)
        if any(ref() is root for ref in views.roots.values()):
            return None
        return _blind("another tensor over the same memory, made where neither sees (nn.Parameter(y), .data, detach())")

    def _blind_before(self, func: Any, args: Args, kwargs: Kwargs) -> str | None:
        """Why the gradient cannot see part of what ``func`` reads, which its outputs and what it writes into
        then carry: an input's reason; after values of the input left torch, a tensor neither followed nor a
        constant (made unknown here); or ``func`` handing on a followed tensor's values without a gradient."""
        inputs = tensors_in((args, kwargs))
        if self.escaped is not None:
            for tensor in inputs:
                if tensor.numel() and not self.state(tensor).followed and not self.constant(tensor):
                    self.set(tensor, None)
                    self.mark(tensor, self.escaped)
        reason = next((r for r in map(self.blindness, inputs) if r is not None), None)
        raw, name, descriptor = raw_name(func), op_name(func), _descriptor(func)
        read = inputs[1:] if name == "new_tensor" or (raw, descriptor) == ("__set__", "data") else inputs
        if not any(self.state(t).followed for t in read):
            return reason
        if raw in _ESCAPES:
            self.escaped = self.escaped or _blind(f"{raw.strip('_')}() and back into torch")
        elif reason is None and (name in _SEVERED or descriptor == "data"):
            return _blind(".data" if descriptor == "data" else f"{name}()")
        return reason

    def _blind_after(self, func: Any, args: Args, kwargs: Kwargs, result: Any, reason: str) -> None:
        """``func``'s outputs, and what it wrote into (every name of that memory), carry ``reason``."""
        assigned = _descriptor(func) == "data" and raw_name(func) == "__set__"
        written = assigned or writes_first(func)
        targets = tensors_in(kwargs["out"]) if "out" in kwargs else tensors_in(args[:1]) if written else []
        for tensor in (*tensors_in(result), *targets):
            self.mark(tensor, reason)
        for tensor in targets:
            memory = _memory(tensor)
            if memory is not None:
                self.blind_memory[memory] = _Reason(weakref.ref(tensor.untyped_storage()), reason)
            if assigned:  # y.data = z: y's values are z's, unseen
                self.set(tensor, None)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        with torch._C.DisableTorchFunction():  # the books' own reads are not the model's (the graph's mode)
            self._keep_books(func, args, kwargs, result)
        return result

    def _keep_books(self, func: Any, args: Args, kwargs: Kwargs, result: Any) -> None:
        blind = None
        try:
            blind = self._blind_before(func, args, kwargs)
            self._follow(func, args, kwargs, result)
        except Exception:  # noqa: BLE001 - tensors this bookkeeping cannot read (sparse, ...): the pass goes on
            for output in tensors_in(result):
                self.set(output, None)
        if blind is not None:
            self._blind_after(func, args, kwargs, result, blind)

    def _follow(self, func: Any, args: Args, kwargs: Kwargs, result: Any) -> None:
        """Give ``func``'s outputs their fields by :func:`.rules.field_of` (and forget whatever it wrote into)."""
        inputs = tensors_in((args, kwargs))
        operands = [self._operand(t) for t in inputs]
        if not any(operand.followed for operand in operands):
            self._unfollowed(func, args, kwargs, inputs, result)
            return
        name = op_name(func)
        if name in SHAPE_OF_OTHER:  # x.expand_as(y): y's values are not read
            operands = operands[:1]
            if not operands[0].followed:
                return
        if name == "new_tensor":  # y.new_tensor(g): a copy of g
            operands, name = operands[1:], "clone"
        self._overwritten(_written(func, kwargs, inputs))
        if name == "setitem":  # part of it written: the parts' positions are not followed
            self.set(inputs[0], None)
            return
        outputs = tensors_in(result)
        if outputs and name not in UNRELATED:
            self._give(outputs, field_of(func, name, args, kwargs, operands, outputs[0]))

    def _overwritten(self, targets: list[torch.Tensor]) -> None:
        """``targets`` were written into: their other names (views, base, ...) are not known any more."""
        for target in targets:
            self.taint(target)
            for tensor in self.sharing(target):
                self.set(tensor, None)

    def _give(self, outputs: list[torch.Tensor], field: Known | None) -> None:
        """Each output ``field`` (the first's), where it has as many axes as the first; any, for a box."""
        for output in outputs:
            same = isinstance(field, Whole) or output.ndim == outputs[0].ndim
            self.set(output, field if same else None)

    def _operand(self, tensor: torch.Tensor) -> Operand:
        """``tensor`` as an operation reads it, by :meth:`current`."""
        state = self.current(tensor)
        return Operand(tensor, state.followed, state.field, not state.followed and self._opaque(tensor))

    def _unfollowed(self, func: Any, args: Args, kwargs: Kwargs, inputs: list[torch.Tensor], result: Any) -> None:
        """An operation on nothing followed: its outputs are constants when its inputs are and its other
        arguments are sizes, indices or dtypes (not a float or a list, which may have left a followed tensor),
        and so are a size-only factory's (``arange``), maps excepted (numpy may fill them unseen); what it
        writes into is unknown when an input is a map from where the mode did not see (a scripted
        function's output copied into a buffer)."""
        if "out" in kwargs or writes_first(func):
            if any(self._opaque(t) for t in inputs):
                for target in _written(func, kwargs, inputs):
                    self.taint(target)
            return
        if not all(_plain(v) for v in (*args, *kwargs.values())):
            return  # data given from outside torch (a float, a list) may have left a followed tensor
        if inputs and all(self.constant(t) for t in inputs):
            self.derived.update((id(t), t) for t in tensors_in(result))
        elif not inputs and op_name(func) in FACTORIES:  # not maps: a buffer may be filled where the mode does not see
            self.derived.update((id(t), t) for t in tensors_in(result) if not self._opaque(t))

    def _opaque(self, tensor: torch.Tensor) -> bool:
        """A map neither followed nor a constant: made where the mode did not see, it cannot be vouched for."""
        return not self.constant(tensor) and tensor.ndim >= 2 and tensor.shape[-2:].numel() > 1


_PLAIN = (
    bool,
    int,
    str,
    slice,
    type(None),
    type(Ellipsis),
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
)


def _plain(value: object) -> bool:
    """An argument that says how, not what: a size, an index, a dtype (a tensor is judged apart)."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, (_PLAIN, torch.Tensor))


def _written(func: Any, kwargs: Kwargs, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """What ``func`` writes into: its ``out=``, or its first tensor argument where it writes into that."""
    if "out" in kwargs:
        return tensors_in(kwargs["out"])
    return inputs[:1] if writes_first(func) else []


def _root(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor a view was taken of (autograd links an in-place write to its views), or the tensor itself."""
    return tensor if tensor._base is None else tensor._base


def _descriptor(func: Any) -> str | None:
    """A property's name (``data``) where ``func`` gets or sets one."""
    if raw_name(func) not in ("__get__", "__set__"):
        return None
    return getattr(getattr(func, "__self__", None), "__name__", None)


def _memory(tensor: torch.Tensor) -> int | None:
    """Where a strided tensor's memory starts; None for layouts without storage (sparse)."""
    if tensor.layout != torch.strided:
        return None
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage to ask (a functorch wrapper, ...)
        return None


def _follow_input(tracer: _Tracer, inputs: torch.Tensor) -> None:
    h, w = inputs.shape[-2:]
    with torch._C.DisableTorchFunction():  # not seen by a mode it is entered inside (the graph's)
        tracer.set(inputs, Field(Axis(-2, np.arange(h), np.arange(h)), Axis(-1, np.arange(w), np.arange(w))))


@contextmanager
def _calls(model: nn.Module, tracer: _Tracer, found: LayerFields) -> Iterator[None]:
    counts: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
        call = counts.get(module, 0)
        counts[module] = call + 1
        with torch._C.DisableTorchFunction():  # the books' own reads (a storage, a base) are not the model's
            inputs = tensors_in((args, kwargs))
            if any(tracer.state(t).followed for t in inputs):
                blind = next((r for r in map(tracer.blindness, inputs) if r is not None), None)
                for made in tensors_in(output):  # made where the mode could not see: not vouched for
                    if not tracer.state(made).followed:
                        tracer.set(made, None)
                        if blind is not None:
                            tracer.mark(made, blind)
        found[(module, call)] = _maps_field(tracer, first_tensor(output), module)
        if found[(module, call)] is None:
            found[(module, call)] = _blinded(tracer, first_tensor(output))

    with ExitStack() as stack:
        for module in model.modules():
            stack.callback(module.register_forward_hook(hook, with_kwargs=True).remove)
        yield


def _maps_field(tracer: _Tracer, tensor: torch.Tensor | None, module: nn.Module) -> TracedField | None:
    """A module output's field, when the output is 4-D, its field is known and its spatial axes are among
    those of the maps the report shows (:func:`.capture.maps_order`: N×C×H×W, or channels-last maps)."""
    if tensor is None or tensor.ndim != 4:
        return None
    known = tracer.state(tensor).field
    if known is None or isinstance(known, Tokens) or not fits(known, tensor):
        return None
    order = maps_order(module)
    if isinstance(known, Whole):
        return TracedField(*known.axes((-2, -1), tensor.permute(order).shape))
    shown = {axis - 4: place - 4 for place, axis in enumerate(order)}  # the tensor's axis → the maps' axis
    rows, cols = (dataclasses.replace(axis, dim=shown[axis.dim]) for axis in known)
    return TracedField(rows, cols) if -4 not in (rows.dim, cols.dim) else None


def _blinded(tracer: _Tracer, tensor: torch.Tensor | None) -> Blind | None:
    """A refused module output's verdict: :class:`Blind` where autograd does not see all it holds of the input."""
    if tensor is None:
        return None
    with torch._C.DisableTorchFunction():
        reason = tracer.blindness(tensor)
    return None if reason is None else Blind(reason)


@contextmanager
def tracing_fields(model: nn.Module, inputs: torch.Tensor, found: LayerFields) -> Iterator[None]:
    """While inside, a forward pass of ``model`` on ``inputs`` (N×C×H×W) puts each (module, call)'s field
    in ``found``: None where its output is not maps or not understood, :class:`Blind` where it is not
    understood and the gradient cannot see all it holds of the input either. Enter it inside any other
    ``TorchFunctionMode`` that should see the same pass (the graph's recording)."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        yield  # its insides never reach the mode and it takes no hooks: no field can be vouched for
        return
    tracer = _Tracer({id(t): t for t in (*model.parameters(), *model.buffers())})
    _follow_input(tracer, inputs)
    with _calls(model, tracer, found), tracer:
        yield


def trace_fields(model: nn.Module, inputs: torch.Tensor) -> LayerFields:
    """Run ``model`` once on ``inputs`` (gradients off; the caller sets mode and device) and return each
    (module, call)'s field, as :func:`tracing_fields` finds them."""
    found: LayerFields = {}
    with torch.no_grad(), tracing_fields(model, inputs, found):
        model(inputs)
    return found
