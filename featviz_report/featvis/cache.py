"""The disk cache of feature visualisations: one file per channel image, so a rebuilt report reuses them.

An entry's key is the SHA-256 of the model's weights (every state_dict tensor, with its name, dtype and shape,
and every module's extra state as data) and classes (the model's and every module's), the layer's name and
call, the channel, the input shape and normalisation, the precision the steps ran in and every optimisation
setting. An entry is written to a temporary name and renamed, so an interrupted run leaves whole entries or
none; an entry that cannot be read back as what it claims is ignored (and recomputed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from .optimise import VisSettings

__all__ = ["default_cache_dir", "entry_key", "VisCache"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/featviz-report`` (``~/.cache/featviz-report`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "featviz-report"


def entry_key(
    weights: str, layer: str, call: int, channel: int, context: Mapping[str, object], settings: VisSettings
) -> str:
    """The name of one channel's entry: a hash of everything its image depends on."""
    described = {"weights": weights, "layer": layer, "call": call, "channel": channel, **context, **asdict(settings)}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


class VisCache:
    """Entries under ``root``, one JSON file per key (``{"png": base64, "activation": a, "key": key}``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, object] | None:
        """The entry stored under ``key``, or ``None`` (absent, unreadable or not for this key)."""
        try:
            entry = json.loads(self._path(key).read_text("utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: str, entry: dict[str, object]) -> None:
        """Store ``entry`` under ``key`` through a temporary file and a rename. A cache that cannot be
        written is skipped (the report does not depend on it); an interrupt removes the temporary file."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                json.dump({**entry, "key": key}, f)
            os.replace(temp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if not isinstance(err, OSError):
                raise
