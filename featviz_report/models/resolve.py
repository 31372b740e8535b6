"""Resolve a model spec (``--model``) and an optional state_dict (``--weights``) into an ``nn.Module``.

Specs: nothing or ``demo`` (the embedded digits CNN), ``torchvision:NAME`` or ``timm:NAME`` (random init, said
in :attr:`LoadedModel.random_weights` until ``--weights`` loads a state_dict),
``package.module:callable`` (a factory) or a ``torch.export`` archive (``.pt2``, see
:mod:`featviz_report.models.exported`). Nothing is ever unpickled unless the user opts in for a whole pickled
module: weights load with
``weights_only=True``. TorchScript files are recognised and refused: their layers cannot be hooked.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError, first_few, first_line

__all__ = [
    "weights_digest",
    "LoadedModel",
    "load_model",
    "load_state_dict",
    "copy_with_weights",
    "check_same_architecture",
    "state_dict_differences",
    "DEMO",
]

DEMO = "demo"
_EXTRA_STATE = "_extra_state"  # the suffix of a module's get_extra_state() in its state_dict
_SEED = 0


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for capture, with what its spec says about its inputs and classes."""

    module: nn.Module
    name: str
    input_size: int | None = None
    normalize: str | None = None
    labels: tuple[str, ...] | None = None
    batch_size: int | None = None  # a fixed batch the model only accepts (an exported program's)
    random_weights: bool = False  # a torchvision or timm architecture's random initialisation: nothing trained


def load_model(spec: str | None, weights: str | Path | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Build the model a spec names and, if given, load a state_dict into it (strictly).

    ``trust_pickle`` allows a file spec to be a pickled ``nn.Module`` (``torch.save(model)``); unpickling
    runs whatever code the file names, so it is refused unless the user opts in.
    """
    loaded = _resolve(spec or DEMO, trust_pickle)
    if weights is not None:
        _apply_state_dict(loaded.module, load_state_dict(weights), f"--weights {str(weights)!r}")
        loaded = dataclasses.replace(loaded, random_weights=False)
    return loaded


def _resolve(spec: str, trust_pickle: bool = False) -> LoadedModel:
    if spec == DEMO:
        return _demo()
    if spec.startswith("torchvision:"):
        return _torchvision(spec.partition(":")[2])
    if spec.startswith("timm:"):
        return _timm(spec.partition(":")[2])
    path = Path(spec)
    if path.suffix.lower() == ".pt2":
        return _exported(path)
    if path.is_file():
        if _is_torchscript(path):
            raise ModelError(
                f"--model {spec!r}: a TorchScript file, whose layers cannot be hooked; export the model with "
                "torch.export.save (.pt2) or name a factory (package.module:callable)"
            )
        return _pickled(path) if trust_pickle else _refuse_pickle(path)
    if ":" in spec:
        return _factory(spec)
    raise ModelError(f"--model {spec!r}: {_suggestion(spec)}")


def _suggestion(spec: str) -> str:
    """What a bare name most likely meant: an architecture of torchvision's or timm's (installed or not)."""
    import difflib

    import torchvision

    names = [f"torchvision:{n}" for n in torchvision.models.list_models()]
    try:
        import timm

        names += [f"timm:{n}" for n in timm.list_models()]
    except ImportError:
        pass
    bare: dict[str, list[str]] = {}
    for name in names:  # torchvision's first: the same name in timm is the second suggestion
        bare.setdefault(name.split(":", 1)[1], []).append(name)
    wanted = spec.lower()
    close = bare.get(wanted) or [
        n for b in difflib.get_close_matches(wanted, list(bare), n=2, cutoff=0.8) for n in bare[b]
    ]
    if close:
        return f"did you mean {close[0]}" + (f" (or {close[1]})" if len(close) > 1 else "") + "?"
    return "not a file, not torchvision:NAME or timm:NAME and not package.module:callable"


def _demo() -> LoadedModel:
    from .._resources import demo_weights_path
    from ..demo.model import DIGIT_LABELS, INPUT_SIZE, DigitsCNN

    model = DigitsCNN()
    _apply_state_dict(model, load_state_dict(demo_weights_path()), "the demo weights")
    return LoadedModel(model, "featviz demo: digits CNN", INPUT_SIZE, "none", DIGIT_LABELS)


def _torchvision(name: str) -> LoadedModel:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise ModelError(f"--model torchvision:{name}: no such torchvision classification model{hint}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception: init-scheme notice
            model = torchvision.models.get_model(name, weights=None)
    categories = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
    labels = tuple(categories) if categories else None
    return LoadedModel(model, f"torchvision {name}", 224, "imagenet", labels, random_weights=True)


def _timm(name: str) -> LoadedModel:
    """A timm architecture (random init, seeded) with the input size, normalisation and, for ImageNet
    heads, the class names its pretrained configuration knows."""
    try:
        import timm
    except ImportError:
        raise ModelError(f"--model timm:{name}: timm is not installed (pip install 'featviz-report[timm]')") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelError(f"--model timm:{name}: no such timm model{hint}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = timm.create_model(name, pretrained=False)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    mean, std = cfg.get("mean"), cfg.get("std")
    channels = size[0] if len(size) == 3 else 3
    normalize = None
    if mean and std and len(mean) == len(std) == channels:
        normalize = ",".join(str(float(v)) for v in (*mean, *std))
    side = int(size[-1]) if size[-1] == size[-2] else None
    return LoadedModel(model, f"timm {name}", side, normalize, _timm_labels(model), random_weights=True)


def _timm_labels(model: nn.Module) -> tuple[str, ...] | None:
    """ImageNet class names for a timm model whose head has an ImageNet subset's classes (bundled
    with timm, no download)."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        info = ImageNetInfo(subset)
        return tuple(info.index_to_description(i).split(",")[0] for i in range(info.num_classes()))
    except Exception:  # noqa: BLE001 - labels are a nicety: any failure means numbered classes
        return None


def _factory(spec: str) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if (
        not module_name
        or not attr
        or not all(part.isidentifier() for part in (*module_name.split("."), *attr.split(".")))
    ):
        raise ModelError(f"--model {spec!r}: expected package.module:callable, e.g. mypackage.models:build")
    _working_directory_importable()
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"--model {spec!r}: cannot import {module_name!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while being imported
        raise ModelError(f"--model {spec!r}: importing {module_name!r} failed ({_described(err)})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelError(f"--model {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    try:
        model = target() if callable(target) and not isinstance(target, nn.Module) else target
    except Exception as err:  # noqa: BLE001 - the user's factory may raise anything
        raise ModelError(
            f"--model {spec!r}: calling {attr}() failed ({_described(err)}); the factory must build the model "
            "with no arguments"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model, spec)


def _exported(path: Path) -> LoadedModel:
    from .exported import load_exported

    exported = load_exported(path)
    return LoadedModel(exported.module, path.name, exported.size, batch_size=exported.batch)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _refuse_pickle(path: Path) -> LoadedModel:
    raise ModelError(
        f"--model {str(path)!r}: not a torch.export archive; a pickled model is not loaded because unpickling "
        "runs arbitrary code from the file (pass a state_dict with --weights, or --trust-pickled-model if you "
        "made this file yourself)"
    )


def _pickled(path: Path) -> LoadedModel:
    """A whole pickled module, loaded only because the user passed --trust-pickled-model."""
    _working_directory_importable()  # the classes it names resolve like a factory's
    try:
        model = torch.load(str(path), map_location="cpu", weights_only=False)  # explicit opt-in by the user
    except Exception as err:  # noqa: BLE001 - unpickling can fail in any way
        raise ModelError(f"--model {str(path)!r}: cannot unpickle the model ({type(err).__name__}: {err})") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {str(path)!r}: holds a {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model, path.name)


def _working_directory_importable() -> None:
    """Like ``python -m``: modules next to the user resolve (factories, classes of a pickled model)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _described(err: BaseException) -> str:
    """``TypeError: message``, for errors raised by the user's own code."""
    return f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__


def copy_with_weights(model: nn.Module, path: str | Path, names: tuple[str, str] = ("A", "B")) -> nn.Module:
    """A copy of ``model`` holding the state_dict at ``path`` (``--compare``), which must have the same
    keys and shapes as the model's own; ``names`` name the two in the error that says where they differ."""
    state = load_state_dict(path, "--compare")
    check_same_architecture(model.state_dict(), state, names)
    try:
        twin = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 - whatever keeps a module from being copied
        raise ModelError(f"--compare needs a model that can be copied ({type(err).__name__}: {err})") from None
    twin.load_state_dict(state, strict=True)
    return twin


def load_state_dict(path: str | Path, option: str = "--weights") -> Mapping[str, Any]:
    """Read a state_dict (optionally nested under ``state_dict`` or ``model``) without unpickling code:
    a ``.safetensors`` file with safetensors (tensors only, by design), anything else with
    ``torch.load(weights_only=True)``. Its values are tensors, and under ``*._extra_state`` keys whatever
    data a module's ``get_extra_state()`` gave (``weights_only`` lets only plain data through)."""
    if Path(path).suffix.lower() == ".safetensors":
        return _safetensors(Path(path), option)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{option} {str(path)!r}: file not found") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for unreadable or unsafe files
        first = first_line(err)
        raise ModelError(f"{option} {str(path)!r}: not a loadable state_dict ({first})") from None
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(
        isinstance(v, torch.Tensor) or str(k).endswith(_EXTRA_STATE) for k, v in data.items()
    ):
        raise ModelError(f"{option} {str(path)!r}: not a state_dict (a mapping of names to tensors)")
    return data


def _safetensors(path: Path, option: str) -> Mapping[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"{option} {str(path)!r}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        first = first_line(err)
        raise ModelError(f"{option} {str(path)!r}: not a readable safetensors file ({first})") from None


def _apply_state_dict(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    problems = state_dict_differences(model.state_dict(), state, ("the model", "the file"))
    if problems:
        raise ModelError(f"{source}: the state_dict does not fit the model ({'; '.join(problems)})")
    model.load_state_dict(state, strict=True)


def check_same_architecture(
    before: Mapping[str, Any], after: Mapping[str, Any], names: tuple[str, str] = ("A", "B")
) -> None:
    """Fail, naming the first differences, unless both state_dicts have the same keys and shapes."""
    problems = state_dict_differences(before, after, names)
    if problems:
        raise ModelError(f"{names[0]} and {names[1]} are not the same architecture: " + "; ".join(problems))


def weights_digest(model: nn.Module, warn: Callable[[str], None] | None = None) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape and bytes, bfloat16 included), of every
    module's extra state (``get_extra_state()``, as data: tensors, arrays, numbers, strings, bytes, lists,
    tuples, sets and dicts of these) and of every module's class: what identifies a model for the
    feature-visualisation cache and a scan's saved state (a changed ``forward`` is not seen here;
    :mod:`featviz_report.featvis.stage` measures every cached image again). A part of the extra state that is not
    such data (any other object) is left out, in its place a mark, and ``warn`` gets a line naming it."""
    digest = hashlib.sha256()
    digest.update(
        "|".join(f"{name}:{type(m).__module__}.{type(m).__qualname__}" for name, m in model.named_modules()).encode()
    )
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            continue
        plain = _PlainData()
        digest.update(f"{name}|data|".encode() + plain.digest(value, name))
        if plain.left_out and warn is not None:
            what = "; ".join(plain.left_out[:3]) + (
                f" and {len(plain.left_out) - 3} more" if plain.left_out[3:] else ""
            )
            warn(
                f"the extra state of {_owner(model, name)} is not all plain data ({what}): left out of the "
                "weights' hash, so cached feature visualisations and saved scans do not see it change"
            )
    return digest.hexdigest()


def _owner(model: nn.Module, key: str) -> str:
    """The module a state_dict ``key`` belongs to: ``'block.scale' (Scaled)``."""
    path = key.rsplit(".", 1)[0] if "." in key else ""
    try:
        return f"{path or 'the model'!r} ({type(model.get_submodule(path)).__name__})"
    except AttributeError:
        return repr(path)


class _PlainData:
    """The SHA-256 of plain data as tagged, length-prefixed bytes: the same data gives the same bytes (a
    dict's or set's order does not count; a list is not a tuple, 1 is not 1.0 nor True). Anything else is
    a mark in its place, and where it was goes into ``left_out``."""

    def __init__(self) -> None:
        self.left_out: list[str] = []

    def digest(self, value: object, where: str, within: frozenset[int] = frozenset()) -> bytes:
        out = hashlib.sha256()
        try:
            self._feed(out, value, where, within)
        except RecursionError:
            self.left_out.append(f"{where} is nested too deep")
            return hashlib.sha256(b"deep").digest()
        return out.digest()

    def _feed(self, out: Any, value: object, where: str, within: frozenset[int]) -> None:
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            out.update(f"{type(value).__name__}:".encode() + _plain_bytes(value))
        elif isinstance(value, torch.Tensor):
            try:
                data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            except (RuntimeError, TypeError, NotImplementedError):  # sparse, quantised, meta: no plain bytes
                self._leave_out(out, where, f"is a tensor without plain bytes ({value.layout}, {value.device})")
                return
            out.update(f"tensor:{value.dtype}:{tuple(value.shape)}:{len(data)}:".encode() + data)
        elif isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind not in "OV":
            array = np.ascontiguousarray(value)
            out.update(f"array:{array.dtype.str}:{array.shape}:{array.nbytes}:".encode() + array.tobytes())
        elif isinstance(value, (list, tuple, dict, set, frozenset)):
            if id(value) in within:
                self._leave_out(out, where, "holds itself")
                return
            inner = within | {id(value)}
            if isinstance(value, dict):
                parts = [
                    self.digest(k, f"{where} key {k!r:.40}", inner) + self.digest(v, f"{where}[{k!r:.40}]", inner)
                    for k, v in value.items()
                ]
            else:
                parts = [self.digest(v, f"{where}[{i}]", inner) for i, v in enumerate(value)]
            if isinstance(value, (dict, set, frozenset)):
                parts.sort()  # their order is not their content
            out.update(f"{type(value).__name__}:{len(parts)}:".encode() + b"".join(parts))
        else:
            self._leave_out(out, where, f"is of type {type(value).__module__}.{type(value).__qualname__}")

    def _leave_out(self, out: Any, where: str, what: str) -> None:
        self.left_out.append(f"{where} {what}")
        out.update(b"left out;")


def _plain_bytes(value: None | bool | int | float | complex | str | bytes) -> bytes:
    """A scalar's exact value as bytes, length-prefixed (floats by their hex digits, so nothing rounds)."""
    if isinstance(value, float):
        data = value.hex().encode()
    elif isinstance(value, complex):
        data = f"{value.real.hex()},{value.imag.hex()}".encode()
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        data = value
    else:
        data = repr(value).encode()
    return f"{len(data)}:".encode() + data


def state_dict_differences(expected: Mapping[str, Any], given: Mapping[str, Any], names: tuple[str, str]) -> list[str]:
    """What keeps ``given`` from loading where ``expected`` is: missing and unexpected keys, and keys whose
    shapes differ (``names`` say whose shape is whose), a few of each."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k} ({_shape(expected[k])} in {names[0]}, {_shape(given[k])} in {names[1]})"
        for k in expected
        if k in given and _shape(expected[k]) != _shape(given[k])
    ]
    labels = (f"missing in {names[1]}", f"only in {names[1]}", "wrong shape")
    return [f"{label}: {first_few(keys)}" for label, keys in zip(labels, (missing, unexpected, wrong)) if keys]


def _shape(value: object) -> str:
    if not isinstance(value, torch.Tensor):
        return "extra state"  # a module's get_extra_state(): data of its own, not a tensor
    return "×".join(map(str, value.shape)) or "a scalar"
