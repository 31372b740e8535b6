"""Load a ``torch.export`` archive (``.pt2``) without running code from the file, as a hookable model.

``torch.export.load`` trusts its input: it unpickles weights flagged ``use_pickle`` (and falls back to
``weights_only=False``), unpickles custom and opaque constants, loads compiled AOTInductor libraries and
parses shape expressions with ``sympy.sympify`` (which evaluates Python). So the archive is read here
first, as data: every entry torch would unpickle must load with ``weights_only=True``, entries that can
only be loaded by running code are refused by name, every shape expression must be plain arithmetic on
shape symbols and every graph node must call an operator of :mod:`featviz_report.models.export_ops`'s allow-list.
Then torch loads it with ``weights_only`` forced for every ``torch.load`` inside, the program's guard code
(``exec``'d by ``ExportedProgram.module()``) is dropped (it is never run), and the graph torch built is checked
again: allowed operators only, and writes only into tensors the graph itself created.

The unflattened program's submodules are ``InterpreterModule``s; those that were a ``Conv2d`` or a
``Linear`` (and are one operator with its weights) become the real layer again, holding the same
parameters, so the report captures and draws them like any other model's.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, first_line
from .export_ops import node_refusal, operator_refusal, target_refusal, write_refusal

__all__ = ["ExportedModel", "load_exported"]

_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SYMBOL = re.compile(r"[a-z]+\d+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPRESSION_CHARS = re.compile(r"[\w\s+\-*/%(),.<>=!&|~^]*", re.ASCII)
_QUOTED_NAME = re.compile(r"'[A-Za-z_][A-Za-z0-9_]*'|\"[A-Za-z_][A-Za-z0-9_]*\"")  # Symbol('s0', integer=True)
_SYMPY_NAMES = frozenset(
    "Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan StrictGreaterThan LessThan GreaterThan And Or Not Xor "
    "True False true false oo zoo nan floor ceiling sqrt Piecewise ITE Integer Rational Float Symbol Pow "
    "positive negative nonnegative nonpositive integer real finite zero nonzero even odd rational".split()
)


@dataclass(frozen=True)
class ExportedModel:
    """An exported program as a module, with the input it was exported for (``None``: dynamic)."""

    module: nn.Module
    batch: int | None
    channels: int | None
    size: int | None


def load_exported(path: Path) -> ExportedModel:
    """The archive at ``path`` as a hookable module, or a one-line :class:`ModelError`."""
    label = f"--model {str(path)!r}"
    if not path.is_file():
        raise ModelError(f"{label}: file not found")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{label}: not a torch.export archive (not a zip file)")
    _check_archive(path, label)
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)  # torch logs a traceback before raising; our message says it all
    try:
        with _weights_only_everywhere(), _sinks_guarded(label):
            program = torch.export.load(str(path))
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here is an unreadable archive
        first = first_line(err)
        raise ModelError(f"{label}: not a readable torch.export archive ({first})") from None
    finally:
        export_log.setLevel(level)
    program._guards_code = []  # Python source from the file: never executed
    _check_graph(program, label)
    batch, channels, size = _input_hints(program)
    try:
        module = torch.export.unflatten(program)
    except Exception as err:  # noqa: BLE001 - a program torch cannot turn back into modules
        raise ModelError(f"{label}: cannot rebuild the modules of this program ({type(err).__name__}: {err})") from None
    _restore_layers(module)
    return ExportedModel(module, batch, channels, size)


def _members(path: Path, label: str) -> dict[str, bytes]:
    """The archive's files by their name inside its one root folder (``data/weights/...``). Two entries
    of one name (torch reads the first, a checker could read the other) or a second root are refused."""
    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or any("/" not in name for name in names):
            raise ModelError(f"{label}: not a torch.export archive (its files are not in one root folder)")
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ModelError(f"{label}: entry {twice!r} appears twice in the archive; it is refused")
        return {name.split("/", 1)[1]: archive.read(name) for name in names}


def _check_archive(path: Path, label: str) -> None:
    """Refuse what only runs code to load; check that every pickled entry loads as plain data."""
    try:
        members = _members(path, label)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as err:
        raise ModelError(f"{label}: not a readable torch.export archive ({err})") from None
    for name, data in members.items():
        lower = name.lower()
        if lower.startswith("data/aotinductor/") or lower.endswith((".so", ".dll", ".dylib")):
            raise ModelError(f"{label}: entry {name!r} is compiled native code, which featviz-report never loads")
        if lower.startswith(("data/weights/", "data/constants/")) and "config" in lower:
            _check_payloads(members, name, data, label)
        elif lower.startswith("models/") or lower.endswith(".json"):
            _check_program_json(name, data, label)
        elif lower.endswith((".pt", ".pkl", ".pth")) or lower.startswith(("data/sample_inputs/", "serialized_")):
            _check_pickle(name, data, label)


def _check_payloads(members: dict[str, bytes], name: str, data: bytes, label: str) -> None:
    folder = name.rsplit("/", 1)[0] + "/"
    try:
        config = json.loads(data).get("config", {})
    except (ValueError, AttributeError):
        raise ModelError(f"{label}: entry {name!r} is not valid JSON") from None
    for fqn, meta in config.items():
        entry = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if entry.startswith(("custom_obj_", "opaque_obj_")):
            raise ModelError(
                f"{label}: constant {fqn!r} ({folder}{entry}) is a pickled Python object; loading it would run "
                "code from the file, so the archive is refused"
            )
        if isinstance(meta, dict) and meta.get("use_pickle"):
            _check_pickle(f"{folder}{entry}", members.get(f"{folder}{entry}", b""), label, fqn)


def _check_pickle(name: str, data: bytes, label: str, fqn: str | None = None) -> None:
    """An entry torch unpickles must hold tensors and plain containers only."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any refusal by the safe unpickler
        what = f"{fqn!r} ({name})" if fqn else repr(name)
        first = first_line(err)[:160]
        raise ModelError(
            f"{label}: entry {what} is a pickle that does not load as plain tensors ({first}); it is not "
            "unpickled because that could run code from the file"
        ) from None


def _check_program_json(name: str, data: bytes, label: str) -> None:
    try:
        document = json.loads(data)
    except ValueError:
        raise ModelError(f"{label}: entry {name!r} is not valid JSON") from None
    for key, value in _walk(document):
        if isinstance(value, str) and _LINE_BREAKS.search(value):
            # torch copies names and stack traces into Python source it compiles: no line may end early
            raise ModelError(f"{label}: entry {name!r} holds a {key!r} with a hidden line break; it is refused")
        if key == "expr_str" and isinstance(value, str) and not _plain_expression(value):
            raise ModelError(f"{label}: entry {name!r} holds a shape expression that is not arithmetic: {value[:80]!r}")
        calls = key == "as_operator" or (key == "target" and isinstance(value, str) and "." in value)
        refusal = target_refusal(value) if calls and isinstance(value, str) else None
        if refusal is not None:
            raise ModelError(f"{label}: entry {name!r} calls {str(value)[:80]!r}: {refusal}; the archive is refused")


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _plain_expression(text: str) -> bool:
    """Arithmetic and comparisons of numbers, shape symbols (``s0``, ``Symbol('s0', integer=True)``) and
    sympy's functions, nothing else: no attribute access (a dot only inside a number), strings other than
    a quoted name, indexing or dunder names."""
    text = _QUOTED_NAME.sub(" s0 ", text)
    if not text.isascii() or not _EXPRESSION_CHARS.fullmatch(text) or "__" in text:
        return False
    if re.search(r"(?<![0-9])\.|\.(?![0-9])", text):
        return False
    from torch.utils._sympy import functions

    for name in _IDENTIFIER.findall(re.sub(r"(?<![A-Za-z_0-9])\d+\.?\d*(e[+-]?\d+)?", " ", text)):
        if not (_SYMBOL.fullmatch(name) or name in _SYMPY_NAMES or isinstance(getattr(functions, name, None), type)):
            return False
    return True


@contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    """Every ``torch.load`` in the block reads with ``weights_only=True``, whatever its caller asked."""
    saved = {key: os.environ.get(key) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_graph(program: torch.export.ExportedProgram, label: str) -> None:
    """Every node calls an allowed operator (:mod:`featviz_report.models.export_ops`), passes no other callable and
    writes only tensors its graph created (what the JSON check promised, checked on what torch built)."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            refusal = node_refusal(node)
            if refusal is not None:
                raise ModelError(f"{label}: the program calls {_name(node.target)}: {refusal}; the archive is refused")
            values: list[object] = []
            torch.fx.node.map_aggregate((node.args, node.kwargs), values.append)  # type: ignore[arg-type]
            for value in values:
                if callable(value) and not isinstance(value, (torch.fx.Node, nn.Module)):
                    refusal = operator_refusal(value)
                    if refusal is not None:
                        raise ModelError(f"{label}: the program passes {_name(value)}: {refusal}; it is refused")
        refusal = write_refusal(module.graph)
        if refusal is not None:
            raise ModelError(f"{label}: the program's node {refusal}; the archive is refused")


def _name(target: object) -> str:
    text = str(target) if isinstance(target, torch._ops.OperatorBase) else repr(target)
    return repr(text[:80])


@contextmanager
def _sinks_guarded(label: str) -> Iterator[None]:
    """While torch reads the archive, the calls that would run code from it refuse instead: plain
    unpickling, TorchScript object unpickling, AOTInductor libraries, and ``sympify`` of anything but
    arithmetic. The checks above name the entry; this holds whatever layout trick slips past them."""
    import pickle

    import sympy

    def refuse(what: str) -> Any:
        def refused(*args: object, **kwargs: object) -> None:
            raise ModelError(f"{label}: the archive holds {what}, which would run code from the file; refused")

        return refused

    real_sympify = sympy.sympify

    def sympify(value: object, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and not _plain_expression(value):
            raise ModelError(f"{label}: the archive holds a shape expression that is not arithmetic: {value[:80]!r}")
        return real_sympify(value, *args, **kwargs)

    patches: list[tuple[object, str, object]] = [
        (pickle, "loads", refuse("a pickled Python object")),
        (torch._C, "_pickle_load_obj", refuse("a pickled TorchScript object")),
        (sympy, "sympify", sympify),
    ]
    aoti = getattr(torch._C, "_aoti", None)
    if aoti is not None and hasattr(aoti, "AOTIModelPackageLoader"):
        patches.append((aoti, "AOTIModelPackageLoader", refuse("compiled AOTInductor code")))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _input_hints(program: torch.export.ExportedProgram) -> tuple[int | None, int | None, int | None]:
    """Batch, channels and square size of the first user input where the export fixed them."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            value = node.meta.get("val")
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
            if len(shape) != 4:
                return None, None, None
            fixed = [s if isinstance(s, int) else None for s in shape]
            size = fixed[2] if fixed[2] is not None and fixed[2] == fixed[3] else None
            return fixed[0], fixed[1], size
    return None, None, None


def _restore_layers(root: nn.Module) -> None:
    """Put a real ``Conv2d``/``Linear`` where the export recorded one as a single operator."""
    for name, module in list(root.named_modules()):
        if not name or type(module).__name__ != "InterpreterModule":
            continue
        layer = _as_layer(module)
        if layer is not None:
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, layer)


def _as_layer(module: nn.Module) -> nn.Module | None:
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    calls = [node for node in graph.nodes if node.op == "call_function"]
    if len(calls) != 1 or list(module.children()):
        return None
    node = calls[0]
    params = dict(module.named_parameters(recurse=False))
    weight, bias = params.get("weight"), params.get("bias")
    if weight is None or set(params) - {"weight", "bias"}:
        return None
    args = list(node.args) + [None] * 7
    if node.target is torch.ops.aten.linear.default and weight.ndim == 2:
        layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    elif node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.conv2d.padding) and weight.ndim == 4:
        stride, padding, dilation, groups = (
            node.kwargs.get(key, args[i] if args[i] is not None else default)
            for i, key, default in ((3, "stride", [1]), (4, "padding", [0]), (5, "dilation", [1]), (6, "groups", 1))
        )
        layer = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            (int(weight.shape[2]), int(weight.shape[3])),
            stride=_pair(stride),
            padding=padding if isinstance(padding, str) else _pair(padding),  # "same"/"valid": the .padding overload
            dilation=_pair(dilation),
            groups=groups,
            bias=bias is not None,
        )
    else:
        return None
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer.train(module.training)


def _pair(value: Any) -> tuple[int, int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(values[0]), int(values[-1]))
