"""Hostile ``torch.export`` archives for the tests: a real export of the demo CNN, rewritten entry by entry.

Each ``EVIL`` case plants what must never run: a payload that ``torch.export.load`` alone runs (it
touches ``marker``), a graph node calling a Python function that is not an operator, or a compiled
library; ``tests/test_exported.py`` checks that featviz-report refuses every one by name and runs none.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from featviz_report.demo.model import DigitsCNN


def export_demo(path: Path, batch: int | None = 1) -> Path:
    """The demo CNN exported for ``batch`` samples of 1×28×28 (``None``: a dynamic batch)."""
    model = DigitsCNN().eval()
    example = (torch.randn(batch or 2, 1, 28, 28),)
    dynamic = None if batch else ({0: torch.export.Dim("batch", min=1, max=1024)},)
    torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), str(path))
    return path


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def torch_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


Edit = Callable[[dict[str, bytes]], "list[tuple[str, bytes]] | None"]


def rewrite(src: Path, dst: Path, edit: Edit) -> Path:
    """``src`` with its entries (named without the root folder) changed by ``edit``, saved as ``dst``;
    entries ``edit`` returns are written first, before the others (a zip may hold a name twice)."""
    with zipfile.ZipFile(src) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        entries = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    first = edit(entries) or []
    with zipfile.ZipFile(dst, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        for name, data in [*first, *entries.items()]:
            archive.writestr(f"{root}/{name}", data)
    return dst


def _json_edit(entries: dict[str, bytes], name: str, change: Callable[[dict], None]) -> None:
    document = json.loads(entries[name])
    change(document)
    entries[name] = json.dumps(document).encode()


def pickled_weight(marker: Path) -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        _json_edit(entries, "data/weights/model_weights_config.json",
                   lambda d: d["config"]["conv1.weight"].update(use_pickle=True))  # fmt: skip
        entries["data/weights/weight_0"] = torch_pickle(Payload(marker))

    return edit


def opaque_constant(marker: Path) -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        _json_edit(entries, "data/constants/model_constants_config.json",
                   lambda d: d["config"].update(c={"path_name": "opaque_obj_0", "is_param": False,
                                                   "use_pickle": True, "tensor_meta": None}))  # fmt: skip
        entries["data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))

    return edit


def pickled_sample_inputs(marker: Path) -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/sample_inputs/model.pt"] = torch_pickle(Payload(marker))

    return edit


def shape_expression(marker: Path) -> Edit:
    code = f"__import__('os').system('touch {marker}')"

    def edit(entries: dict[str, bytes]) -> None:
        def change(d: dict) -> None:
            d["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {"as_expr": {"expr_str": code, "hint": None}}

        _json_edit(entries, "models/model.json", change)

    return edit


def foreign_call(marker: Path) -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        def change(d: dict) -> None:
            d["graph_module"]["graph"]["nodes"][0]["target"] = "torch.hub.load"

        _json_edit(entries, "models/model.json", change)

    return edit


def native_code(marker: Path) -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/aotinductor/model/model.so"] = b"\x7fELF not really"

    return edit


def duplicate_entry(marker: Path) -> Edit:
    """The opaque constant in a first copy of the constants config (torch reads it), a clean one after."""
    planted = opaque_constant(marker)

    def edit(entries: dict[str, bytes]) -> list[tuple[str, bytes]]:
        clean = entries["data/constants/model_constants_config.json"]
        planted(entries)
        first = [("data/constants/model_constants_config.json", entries["data/constants/model_constants_config.json"])]
        entries["data/constants/model_constants_config.json"] = clean
        return first

    return edit


def program_without_json_suffix(marker: Path) -> Edit:
    """torch reads every entry under models/ as a program, whatever its suffix."""
    planted = shape_expression(marker)

    def edit(entries: dict[str, bytes]) -> None:
        planted(entries)
        entries["models/model.JSON"] = entries.pop("models/model.json")

    return edit


def callable_argument(marker: Path) -> Edit:
    """An allowed higher-order operator handed os.system as an argument."""

    def edit(entries: dict[str, bytes]) -> None:
        def change(d: dict) -> None:
            nodes = d["graph_module"]["graph"]["nodes"]
            nodes.insert(0, {"target": "torch.ops.higher_order.wrap_with_set_grad_enabled", "name": "evil",
                             "inputs": [{"name": "", "arg": {"as_operator": "torch.os.system"}, "kind": 1},
                                        {"name": "", "arg": {"as_string": f"touch {marker}"}, "kind": 1}],
                             "outputs": [{"as_none": True}], "metadata": nodes[0]["metadata"],
                             "is_hop_single_tensor_return": None})  # fmt: skip

        _json_edit(entries, "models/model.json", change)

    return edit


def source_injection(marker: Path) -> Edit:
    """A carriage return in a stack trace that torch copies into Python source as a comment."""

    def edit(entries: dict[str, bytes]) -> None:
        def change(d: dict) -> None:
            trace = f'File "m.py", line 1, in forward\nx = f(x)\r__import__("os").system("touch {marker}")\r'
            d["graph_module"]["graph"]["nodes"][3]["metadata"]["stack_trace"] = trace

        _json_edit(entries, "models/model.json", change)

    return edit


EVIL = {
    "pickled weight": (pickled_weight, "conv1.weight"),
    "opaque constant": (opaque_constant, "opaque_obj_0"),
    "pickled sample inputs": (pickled_sample_inputs, "data/sample_inputs/model.pt"),
    "shape expression": (shape_expression, "models/model.json"),
    "call outside torch": (foreign_call, "torch.hub.load"),
    "compiled library": (native_code, "data/aotinductor/model/model.so"),
    "duplicate entry": (duplicate_entry, "appears twice"),
    "program without .json suffix": (program_without_json_suffix, "models/model.JSON"),
    "callable argument": (callable_argument, "torch.os.system"),
    "source injection": (source_injection, "hidden line break"),
}


# Archives whose graph itself is hostile: built as an attacker would, by planting nodes in a real export's
# graph (after the first ReLU, inside relu1's module) and saving it with torch.export.save. No pickle,
# no Python: only operator calls. ``{victim}`` in an argument is the path of the user's file at stake.

Step = tuple[object, tuple[object, ...], dict[str, object], torch.Tensor]  # target, args, kwargs, an example
Plan = Callable[[str], "list[Step]"]


def planted(src: Path, dst: Path, victim: Path, plan: Plan) -> Path:
    """``src`` (an exported archive) with the steps of ``plan(victim)`` planted in its graph. In a step's
    arguments ``"#i"`` is the i-th planted node's output and ``"@name"`` the program's node of that name."""
    program = torch.export.load(str(src))
    graph = program.graph_module.graph
    nodes = {node.name: node for node in graph.nodes}
    anchor = next(node for node in graph.nodes if "relu" in str(node.target))
    fake_mode = torch._guards.detect_fake_mode([n.meta["val"] for n in graph.nodes if "val" in n.meta])
    made: list[torch.fx.Node] = []

    def resolve(value: object) -> object:
        if isinstance(value, str) and value.startswith("#"):
            return made[int(value[1:])]
        if isinstance(value, str) and value.startswith("@"):
            return nodes[value[1:]]
        return value

    with graph.inserting_before(anchor.next):
        for target, args, kwargs, example in plan(str(victim)):
            node = graph.call_function(target, tuple(map(resolve, args)), {k: resolve(v) for k, v in kwargs.items()})  # type: ignore[arg-type]
            node.meta.update({k: anchor.meta[k] for k in ("nn_module_stack", "stack_trace") if k in anchor.meta})
            node.meta["val"] = fake_mode.from_tensor(example)
            made.append(node)
    program.graph_module.recompile()
    torch.export.save(program, str(dst))
    return dst


_aten = torch.ops.aten
_BYTES = torch.zeros(64, dtype=torch.uint8)


def _mapped(victim: str, shared: bool) -> Step:
    return (_aten.from_file.default, (victim,), {"shared": shared, "size": 64, "dtype": torch.uint8}, _BYTES)


def _written_through(op: object, *args: object) -> Plan:
    return lambda victim: [_mapped(victim, True), (op, ("#0", *args), {}, _BYTES)]


GRAPH_EVIL: dict[str, tuple[Plan, str]] = {
    "file read": (lambda victim: [_mapped(victim, False), (_aten.sum.default, ("#0",), {}, torch.tensor(0))],
                  "from_file"),
    "file write by fill_": (_written_through(_aten.fill_.Scalar, 66), "from_file"),
    "file write by add_": (_written_through(_aten.add_.Scalar, 1), "from_file"),
    "file write by copy_": (lambda victim: [_mapped(victim, True), (_aten.zeros_like.default, ("#0",), {}, _BYTES),
                                             (_aten.copy_.default, ("#0", "#1"), {}, _BYTES)], "from_file"),
    "file write by out=": (lambda victim: [_mapped(victim, True),
                                           (_aten.mul.out, ("#0", 0), {"out": "#0"}, _BYTES)], "from_file"),
    "storage adopted by set_": (lambda victim: [(_aten.zeros.default, ([16],), {}, torch.zeros(16)),
                                                (_aten.set_.source_Tensor, ("#0", "@p_conv1_bias"), {},
                                                 torch.zeros(16))], "set_"),
    "parameter written through a view": (lambda victim: [(_aten.alias.default, ("@p_conv1_weight",), {},
                                                           torch.zeros(16, 1, 5, 5)),
                                                          (_aten.mul_.Scalar, ("#0", 0), {}, torch.zeros(16, 1, 5, 5))],
                                         "p_conv1_weight"),
    "input written through a view": (lambda victim: [(_aten.view.default, ("@x", [-1]), {}, torch.zeros(784)),
                                                      (_aten.fill_.Scalar, ("#0", 0), {}, torch.zeros(784))], "x"),
    "uninitialised memory": (lambda victim: [(_aten.empty.memory_format, ([64],), {}, torch.zeros(64))], "empty"),
    "print": (lambda victim: [(_aten._print.default, (victim,), {}, torch.zeros(()))], "_print"),
    "memory nobody wrote by resize_as": (lambda victim: [(_aten.zeros.default, ([1],), {}, torch.zeros(1)),
                                                         (_aten.resize_as.default, ("#0", "@p_fc1_weight"), {},
                                                          torch.zeros(64, 512))], "resize_as"),
    "sparse tensor without index checks": (lambda victim: [
        (_aten._sparse_coo_tensor_unsafe.default, ("@p_conv1_bias", "@p_conv1_bias", [4]), {}, torch.zeros(4)),
    ], "_sparse_coo_tensor_unsafe"),
    "sparse layout": (lambda victim: [(_aten.zeros.default, ([4],), {"layout": torch.sparse_coo}, torch.zeros(4))],
                      "layout"),
    "pointer packing": (lambda victim: [(_aten.fbgemm_pack_gemm_matrix_fp16.default, ("@p_fc1_weight",), {},
                                         torch.zeros(4))], "fbgemm_pack_gemm_matrix_fp16"),
    "parameter returned by dropout, then written": (lambda victim: [
        (_aten.dropout.default, ("@p_conv1_bias", 0.0, False), {}, torch.zeros(16)),
        (_aten.select.int, ("#0", 0, 3), {}, torch.zeros(())),
        (_aten.fill_.Scalar, ("#1", 1000.0), {}, torch.zeros(())),
    ], "p_conv1_bias"),
    "input returned by type_as, then written": (lambda victim: [
        (_aten.type_as.default, ("@x", "@x"), {}, torch.zeros(1, 1, 28, 28)),
        (_aten.mul_.Scalar, ("#0", 0.0), {}, torch.zeros(1, 1, 28, 28)),
    ], "x"),
}  # fmt: skip
