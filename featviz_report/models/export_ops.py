"""Which operators an exported program may call, and which tensors it may write: an allow-list.

"Every node calls a torch operator" is no boundary: ``aten.from_file`` maps a file of the user's into a
tensor, and an in-place operator on that tensor then writes through to the disk; ATen also holds operators
that build sparse tensors without checking their indices, pack raw pointers (``fbgemm_*``) or hand out
memory nobody wrote. So an archive's graph may call only:

- an operator of the **core ATen opset** (an overload of an operator with ``torch.Tag.core``, read from
  torch's registry: the stable set every export lowers to with ``ExportedProgram.run_decompositions()``);
- one of the **composite operators exports emit for standard layers** (:data:`LAYER_COMPOSITES`, a reviewed
  list by name: ``conv2d``, ``linear``, ``batch_norm``, ``scaled_dot_product_attention``, ``pad``,
  ``flatten``...), each of which torch itself writes in other ATen operators (a ``CompositeImplicitAutograd``
  kernel or a decomposition in ``torch._decomp.decomposition_table``, checked);
- the in-place or ``out=`` variant of either (``relu_``, ``add_.Tensor``, ``hardswish_``), as tagged;
- what ``torch.export`` adds itself: the shape assertions of dynamic shapes and ``lift_fresh_copy``;
- Python's arithmetic and comparisons on sizes (``operator.mul``, ``operator.getitem``...), ``math``'s
  functions and torch's ``sym_*`` functions: what dynamic shapes are computed with;
- two higher-order operators export emits around a block (``wrap_with_set_grad_enabled``,
  ``wrap_with_autocast``), whose blocks are checked like the rest.

Refused even then: an argument of a type that is not data (a ``Storage``, a ``Stream``, a script object,
``Any``), a file name, a ``layout=`` other than strided (sparse tensors), and by name the core operators
that hand out memory nobody wrote (``empty``, ``empty_strided``, ``resize_``) or make one tensor adopt
another's memory (``set_``). Everything else (``from_file``, ``_print``, ``_sparse_coo_tensor_unsafe``,
``fbgemm_pack_gemm_matrix_fp16``, other namespaces such as ``prims`` or custom ops, other higher-order
operators) is refused by name.

Writes: an operator that writes an argument (its schema marks it ``Tensor(a!)``, in-place or ``out=``)
may only write a tensor the graph created, never a parameter, buffer, constant or input of the program.
Its argument is followed back through every output that may share an argument's memory: the outputs
the schema marks as aliases (views), and every unmarked output of an operator that is neither core nor
in :data:`FRESH_COMPOSITES`: composites may return an argument itself (``dropout`` in eval mode,
``type_as``, ``to``), so their outputs are taken to share every tensor argument's memory.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from functools import cache

import torch
from torch import fx

__all__ = ["FRESH_COMPOSITES", "LAYER_COMPOSITES", "node_refusal", "operator_refusal", "target_refusal",
           "write_refusal"]  # fmt: skip

LAYER_COMPOSITES = frozenset(
    # layers
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear bilinear batch_norm "
    "instance_norm layer_norm group_norm rms_norm scaled_dot_product_attention matmul einsum prelu "
    # pools
    "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d max_pool1d max_pool2d "
    "max_pool3d avg_pool1d "
    # activations and dropout
    "softmax log_softmax hardswish hardsigmoid hardtanh relu6 silu mish elu selu celu leaky_relu softplus glu "
    "gelu threshold log_sigmoid hardshrink softshrink dropout alpha_dropout feature_dropout feature_alpha_dropout "
    # shapes
    "pad flatten unflatten reshape reshape_as view_as expand_as broadcast_to contiguous chunk split tensor_split "
    "unbind transpose swapaxes swapdims movedim t roll pixel_shuffle pixel_unshuffle channel_shuffle stack "
    "hstack vstack concat concatenate narrow flip repeat tile repeat_interleave type_as to "
    # resampling
    "upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d upsample_bilinear2d "
    "upsample_bicubic2d upsample_trilinear3d _upsample_nearest_exact1d _upsample_nearest_exact2d "
    "_upsample_nearest_exact3d _upsample_bilinear2d_aa _upsample_bicubic2d_aa grid_sampler grid_sampler_2d "
    "affine_grid_generator im2col col2im _unsafe_view _unsafe_index "
    # reductions
    "norm linalg_vector_norm frobenius_norm cosine_similarity std var std_mean var_mean logsumexp "
    # new tensors and arithmetic
    "zeros ones zeros_like ones_like new_zeros new_ones new_full rand_like randn_like linspace eye rsub "
    "true_divide floor_divide square addcmul addcdiv baddbmm clamp_min clamp_max masked_fill adaptive_max_pool2d "
    "bernoulli".split()
)
"""The composite (not core) operators an archive may call: what ``torch.export`` emits for the layers and
functions of ``torch.nn`` before it lowers them to the core opset."""

FRESH_COMPOSITES = frozenset(
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear bilinear batch_norm "
    "instance_norm layer_norm group_norm rms_norm scaled_dot_product_attention matmul adaptive_avg_pool1d "
    "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d max_pool1d max_pool2d max_pool3d avg_pool1d "
    "softmax log_softmax hardswish hardsigmoid silu mish gelu adaptive_max_pool2d zeros ones zeros_like ones_like "
    "new_zeros new_ones new_full rand_like randn_like linspace eye rsub true_divide floor_divide square addcmul "
    "addcdiv baddbmm clamp_min clamp_max masked_fill".split()
)
"""The composites whose result is always memory of its own (never an argument, nor a view of one)."""

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


def node_refusal(node: fx.Node) -> str | None:
    """Why a graph may not hold ``node`` (its operator, or a ``layout=`` that is not strided), or None."""
    if node.op != "call_function":
        return None
    refusal = operator_refusal(node.target)
    layout = node.kwargs.get("layout")
    if refusal is None and layout is not None and layout != torch.strided:
        refusal = f"a tensor of layout {layout} (only strided tensors are made)"
    return refusal


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
    base = _base(op)
    if base in _EXPORT_OWN:
        return None
    if base in _UNWRITTEN_MEMORY or base.lstrip("_").startswith("resize"):
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
    family = base[:-1] if base.endswith("_") and not base.startswith("__") else base
    if family not in _core_families() and family not in LAYER_COMPOSITES:
        return (
            "neither in the core ATen opset nor a composite exports emit for standard layers"
            " (ExportedProgram.run_decompositions() lowers an export to the core opset)"
        )
    if _computes(op) or (_writes_variant(op) and any(_computes(f) for f in _functional(op))):
        return None
    return "not one of the ATen operators torch expresses as tensor arithmetic"


def _base(op: torch._ops.OpOverload) -> str:
    return op._schema.name.split("::", 1)[1]


@cache
def _core_families() -> frozenset[str]:
    """The names of the operators with an overload in the core ATen opset (``add``, ``convolution``...)."""
    names = set()
    for name in {schema.name[6:] for schema in torch._C._jit_get_all_schemas() if schema.name.startswith("aten::")}:
        packet = getattr(torch.ops.aten, name, None)
        if isinstance(packet, torch._ops.OpOverloadPacket) and any(
            torch.Tag.core in getattr(packet, overload).tags for overload in packet.overloads()
        ):
            names.add(name)
    return frozenset(names)


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
    base, overload = _base(op), op._overloadname
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
    """The nodes whose memory ``value`` may share: followed back through views and every output that may
    be an argument (:func:`_aliased_inputs`); a fresh result is its own root."""
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
            aliased = _aliased_inputs(item, item.target)  # type: ignore[arg-type]
            roots.update([item] if aliased is None else ())
            stack.extend(aliased or ())
    return roots


def _aliased_inputs(node: fx.Node, op: torch._ops.OpOverload) -> list[object] | None:
    """The arguments ``node``'s output may share memory with (None: fresh memory of its own): those the
    schema marks as aliased, or, where it marks none, every argument of a composite that is not known to
    allocate (``dropout`` in eval mode returns its input itself)."""
    schema = op._schema
    sets = {s for ret in schema.returns if ret.alias_info is not None for s in ret.alias_info.before_set}
    if not sets:
        fresh = torch.Tag.core in op.tags or _base(op) in FRESH_COMPOSITES | _EXPORT_OWN
        return None if fresh else [*node.args, *node.kwargs.values()]
    return [
        node.kwargs.get(argument.name, node.args[i] if i < len(node.args) else None)
        for i, argument in enumerate(schema.arguments)
        if argument.alias_info is not None and sets & set(argument.alias_info.before_set)
    ]
