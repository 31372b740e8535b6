"""Strict JSON: NaN and ±Inf (a diverged model's numbers) written as ``null``, for the sidecar, the data the
page's script reads, and the training site's index."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["strict_json", "json_safe", "finite_list"]


def json_safe(value: object) -> object:
    """``value`` with every non-finite float, at any depth, replaced by ``None`` (tuples become lists)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value: object, **options: Any) -> str:
    """``json.dumps`` that writes NaN and ±Inf as ``null``. The tree is walked only when it holds one: a
    finite report (the usual case) costs one plain dump."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        return json.dumps(json_safe(value), allow_nan=False, **options)


def finite_list(values: tuple[float, ...]) -> list[float | None]:
    """Per-channel numbers rounded for the page and the sidecar, ``None`` where not finite."""
    return [round(v, 6) if math.isfinite(v) else None for v in values]
