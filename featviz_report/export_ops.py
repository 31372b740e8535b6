"""Which operators an exported program may call, and which tensors it may write: an allow-list.

"Every node calls a torch operator" is no boundary: ``aten.from_file`` maps a file of the user's into a
tensor, and an in-place operator on that tensor then writes through to the disk. So an archive's graph
may call only the operators below, each derived from torch's own registry rather than listed by hand:

- an ATen operator torch itself expresses as tensor arithmetic: in the core ATen opset
  (``torch.Tag.core``), or with a ``CompositeImplicitAutograd`` kernel (it is written in other ATen
  operators: ``conv2d``, ``linear``, ``batch_norm``, ``scaled_dot_product_attention``), or with a
  decomposition in ``torch._decomp.decomposition_table`` (``hardswish``, ``roll``, ``transpose``);
  or the in-place or ``out=`` variant of such an operator (``relu_``, ``add_.Tensor``), as tagged;
- what ``torch.export`` adds itself: the shape assertions of dynamic shapes, which only check sizes, and
  ``lift_fresh_copy`` (a constant made in ``forward``, copied);
- Python's arithmetic and comparisons on sizes (``operator.mul``, ``operator.getitem``...), ``math``'s
  functions and torch's ``sym_*`` functions: what dynamic shapes are computed with;
- two higher-order operators export emits around a block (``wrap_with_set_grad_enabled``,
  ``wrap_with_autocast``), whose blocks are checked like the rest.

Refused even then, by what the schema says: an argument of a type that is not data (a ``Storage``, a
``Stream``, a script object, ``Any``); and by name, what the registry cannot tell apart: operators that
hand out memory nobody wrote (``empty``, ``resize_``: it holds whatever the process freed there) or make
one tensor adopt another's memory (``set_``, ``set_data``). Every other operator, ATen's included
(``from_file``, ``_print``, ``record_stream``), other namespaces (``prims``, ``torchvision``, custom ops)
and higher-order operators are refused by name.

Writes: an operator that writes an argument (its schema marks it ``Tensor(a!)``, in-place or ``out=``)
may only write a tensor the graph created, followed back through every view (an alias in the schema):
never a parameter, buffer, constant or input of the program.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from functools import cache

import torch
from torch import fx

__all__ = ["operator_refusal", "target_refusal", "write_refusal"]

_ARITHMETIC = frozenset(
    "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor not_ invert "
    "lshift rshift truth".split()
)
_EXPORT_OWN = frozenset(  # what torch.export adds itself: shape assertions, constants lifted out of forward
    "_assert_scalar _assert_async sym_constrain_range sym_constrain_range_for_size _assert_tensor_metadata "
    "lift_fresh_copy".split()
)
_UNWRITTEN_MEMORY = frozenset("empty empty_like empty_strided empty_permuted new_empty new_empty_strided".split())
_REBINDS_MEMORY = frozenset({"set_", "set_data"})
_NOT_DATA = ("Storage", "Stream", "Event", "Any", "Capsule", "Future", "RRef", "__torch__")
_HIGHER_ORDER = frozenset({"wrap_with_set_grad_enabled", "wrap_with_autocast"})


def operator_refusal(target: object) -> str | None:
    """Why a graph may not call ``target`` (one phrase), or None where it may."""
    if isinstance(target, torch._ops.HigherOrderOperator):
        return None if target.name() in _HIGHER_ORDER else "a higher-order operator featviz-report does not run"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return "an operator without its overload"
    if isinstance(target, torch._ops.OpOverload):
        return _aten_refusal(target)
    module, name = getattr(target, "__module__", None), getattr(target, "__name__", "")
    if module == "_operator" and name in _ARITHMETIC and getattr(operator, name, None) is target:
        return None
    if module == "math" and getattr(math, name, None) is target:
        return None
    if module == "torch" and name.startswith(("sym_", "_sym_")) and getattr(torch, name, None) is target:
        return None
    return "not an operator on tensors or sizes"


@cache
def _aten_refusal(op: torch._ops.OpOverload) -> str | None:
    if op.namespace != "aten":
        return f"an operator of the {op.namespace!r} namespace, not ATen"
    base = op._schema.name.split("::", 1)[1]
    if base in _EXPORT_OWN:
        return None
    if base in _UNWRITTEN_MEMORY or (base.startswith("resize") and base.endswith("_")):
        return "an operator that hands out memory nobody wrote"
    if base in _REBINDS_MEMORY:
        return "an operator that makes a tensor adopt another's memory"
    for argument in op._schema.arguments:
        if any(kind in str(argument.type) for kind in _NOT_DATA):
            return f"an operator taking a {argument.type} ({argument.name!r}), which is not data"
        if str(argument.type).startswith(("str", "Optional[str]")) and any(
            word in argument.name.lower() for word in ("file", "path", "dir")
        ):
            return f"an operator taking a file name ({argument.name!r})"
    if _computes(op) or (_writes_variant(op) and any(_computes(f) for f in _functional(op))):
        return None
    return "not one of the ATen operators torch expresses as tensor arithmetic"


def _computes(op: torch._ops.OpOverload) -> bool:
    if torch.Tag.core in op.tags or op in torch._decomp.decomposition_table:
        return True
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
    except RuntimeError:
        return False


def _writes_variant(op: torch._ops.OpOverload) -> bool:
    return torch.Tag.inplace in op.tags or torch.Tag.out in op.tags


def _functional(op: torch._ops.OpOverload) -> Iterator[torch._ops.OpOverload]:
    """The functional operator an in-place (``relu_``) or ``out=`` (``add.out``) variant writes for."""
    base, overload = op._schema.name.split("::", 1)[1], op._overloadname
    name = base[:-1] if base.endswith("_") and not base.startswith("__") else base
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return
    for candidate in (overload, "default", "Tensor"):
        if candidate in packet.overloads() and (name, candidate) != (base, overload):
            yield getattr(packet, candidate)


def target_refusal(target: str) -> str | None:
    """The check of :func:`operator_refusal` on a target as an archive names it (``torch.ops.aten.relu.default``,
    ``_operator.getitem``), before torch builds anything from it."""
    parts = target.split(".")
    if target.startswith("torch.ops.") and len(parts) >= 4:
        try:
            resolved: object = getattr(torch.ops, parts[2])
            for part in parts[3:]:
                resolved = getattr(resolved, part)
        except (AttributeError, RuntimeError):
            return "not an operator torch knows"
        return operator_refusal(resolved)
    owner = {"_operator": operator, "math": math, "torch": torch}.get(".".join(parts[:-1]))
    if owner is None or not parts[-1].isidentifier():
        return "not an operator on tensors or sizes"
    return operator_refusal(getattr(owner, parts[-1], None))


def write_refusal(graph: fx.Graph) -> str | None:
    """Why ``graph`` writes a tensor it did not create (the node and the tensor), or None where it does not."""
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for index, argument in enumerate(schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = node.kwargs.get(argument.name, node.args[index] if index < len(node.args) else None)
            for root in _roots(value):
                if root.op != "call_function":
                    return f"{node.name} ({node.target}) writes into {root.name}, which the program did not create"
    return None


def _roots(value: object) -> set[fx.Node]:
    """The nodes whose memory ``value`` may share: followed back through views and the outputs that the
    schema says alias an argument; a fresh result is its own root."""
    roots: set[fx.Node] = set()
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
            continue
        if not isinstance(item, fx.Node) or id(item) in seen:
            continue
        seen.add(id(item))
        if item.op != "call_function":
            roots.add(item)
        elif item.target is operator.getitem:
            stack.append(item.args[0])
        elif getattr(item.target, "_schema", None) is None:  # a higher-order operator: fresh, or any input
            roots.add(item)
            stack.extend([*item.args, *item.kwargs.values()])
        else:
            aliased = _aliased_inputs(item, item.target._schema)  # type: ignore[union-attr]
            roots.update([item] if aliased is None else ())
            stack.extend(aliased or ())
    return roots


def _aliased_inputs(node: fx.Node, schema: torch._C.FunctionSchema) -> list[object] | None:
    """The arguments ``node``'s output may be a view of, by its schema (None: fresh memory of its own)."""
    sets = {s for ret in schema.returns if ret.alias_info is not None for s in ret.alias_info.before_set}
    if not sets:
        return None
    return [
        node.kwargs.get(argument.name, node.args[i] if i < len(node.args) else None)
        for i, argument in enumerate(schema.arguments)
        if argument.alias_info is not None and sets & set(argument.alias_info.before_set)
    ]
