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
    """A higher-order operator handed os.system as an argument."""

    def edit(entries: dict[str, bytes]) -> None:
        def change(d: dict) -> None:
            nodes = d["graph_module"]["graph"]["nodes"]
            nodes.insert(0, {"target": "torch.ops.higher_order.wrap", "name": "evil",
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
    "callable argument": (callable_argument, "not a torch operator"),
    "source injection": (source_injection, "hidden line break"),
}
