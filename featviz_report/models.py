"""Resolve a model spec (``--model``) and an optional state_dict (``--weights``) into an ``nn.Module``.

Specs: nothing or ``demo`` (the embedded digits CNN), ``torchvision:NAME`` (random init),
``package.module:callable`` (a factory), a ``torch.export`` archive (``.pt2``) or a TorchScript file.
Nothing is ever unpickled: weights load with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import logging
import os
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError

__all__ = ["LoadedModel", "load_model", "load_state_dict", "copy_with_weights", "DEMO"]

DEMO = "demo"
_SEED = 0


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for capture, with what its spec says about its inputs and classes."""

    module: nn.Module
    name: str
    input_size: int | None = None
    normalize: str | None = None
    labels: tuple[str, ...] | None = None


def load_model(spec: str | None, weights: str | Path | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Build the model a spec names and, if given, load a state_dict into it (strictly).

    ``trust_pickle`` allows a file spec to be a pickled ``nn.Module`` (``torch.save(model)``); unpickling
    runs whatever code the file names, so it is refused unless the user opts in.
    """
    loaded = _resolve(spec or DEMO, trust_pickle)
    if weights is not None:
        _apply_state_dict(loaded.module, load_state_dict(weights), f"--weights {str(weights)!r}")
    return loaded


def _resolve(spec: str, trust_pickle: bool = False) -> LoadedModel:
    if spec == DEMO:
        return _demo()
    if spec.startswith("torchvision:"):
        return _torchvision(spec.partition(":")[2])
    path = Path(spec)
    if path.suffix == ".pt2":
        return _exported(path)
    if path.is_file():
        return _pickled(path) if trust_pickle and not _is_torchscript(path) else _torchscript(path)
    if ":" in spec:
        return _factory(spec)
    raise ModelError(f"--model {spec!r}: not a file, not torchvision:NAME and not package.module:callable")


def _demo() -> LoadedModel:
    from .demo.model import DIGIT_LABELS, INPUT_SIZE, DigitsCNN
    from .resources import demo_weights_path

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
    return LoadedModel(model, f"torchvision {name}", 224, "imagenet", labels)


def _factory(spec: str) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: factories next to the user resolve
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"--model {spec!r}: cannot import {module_name!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelError(f"--model {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    model = target() if callable(target) and not isinstance(target, nn.Module) else target
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model, spec)


def _exported(path: Path) -> LoadedModel:
    if not path.is_file():
        raise ModelError(f"--model {str(path)!r}: file not found")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"--model {str(path)!r}: not a torch.export archive (not a zip file)")
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)  # torch logs a traceback before raising; our message says it all
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001 - any failure here is an unreadable archive
        raise ModelError(f"--model {str(path)!r}: not a readable torch.export archive ({err})") from None
    finally:
        export_log.setLevel(level)
    return LoadedModel(torch.export.unflatten(program), path.name)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _torchscript(path: Path) -> LoadedModel:
    if not _is_torchscript(path):
        raise ModelError(
            f"--model {str(path)!r}: not a TorchScript or torch.export archive; a pickled model is not loaded "
            "because unpickling runs arbitrary code from the file (pass a state_dict with --weights, or "
            "--trust-pickled-model if you made this file yourself)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still widely used
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any failure here is an unreadable archive
        raise ModelError(f"--model {str(path)!r}: not a readable TorchScript archive ({err})") from None
    return LoadedModel(model, path.name)


def _pickled(path: Path) -> LoadedModel:
    """A whole pickled module, loaded only because the user passed --trust-pickled-model."""
    try:
        model = torch.load(str(path), map_location="cpu", weights_only=False)  # explicit opt-in by the user
    except Exception as err:  # noqa: BLE001 - unpickling can fail in any way
        raise ModelError(f"--model {str(path)!r}: cannot unpickle the model ({type(err).__name__}: {err})") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {str(path)!r}: holds a {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model, path.name)


def copy_with_weights(model: nn.Module, path: str | Path, names: tuple[str, str] = ("A", "B")) -> nn.Module:
    """A copy of ``model`` holding the state_dict at ``path`` (``--compare``), which must have the same
    keys and shapes as the model's own; ``names`` name the two in the error that says where they differ."""
    from .compare import check_same_architecture

    state = load_state_dict(path, "--compare")
    check_same_architecture(model.state_dict(), state, names)
    try:
        twin = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 - whatever keeps a module from being copied
        raise ModelError(f"--compare needs a model that can be copied ({type(err).__name__}: {err})") from None
    twin.load_state_dict(state, strict=True)
    return twin


def load_state_dict(path: str | Path, option: str = "--weights") -> Mapping[str, torch.Tensor]:
    """Read a state_dict (optionally nested under ``state_dict`` or ``model``) without unpickling code."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{option} {str(path)!r}: file not found") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for unreadable or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{option} {str(path)!r}: not a loadable state_dict ({first})") from None
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{option} {str(path)!r}: not a state_dict (a mapping of names to tensors)")
    return data


def _apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise ModelError(f"{source}: the state_dict does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
