"""Run a reference script of ../shared/bench on featviz's demo model, the script's code unchanged.

The reference scripts only know torchvision names: they build ``getattr(torchvision.models, MODEL)(weights=None)``
and feed it ``torch.randn(N, 3, 224, 224)``. For ``MODEL`` = ``demo`` this shim substitutes just those two
things: ``torchvision.models.demo`` returns featviz's demo model (a DigitsCNN with its bundled weights) and
``torch.randn`` called with shape ``(N, 3, 224, 224)`` returns ``torch.randn(N, 1, 28, 28)`` instead (every
other call is passed through). Then the script runs as ``__main__`` with ``sys.argv`` set, so its seed, hooks,
timers and printed figures are its own. Any other model name runs the script with no substitution.

Run from the repository root: ``.venv/bin/python -m bench.shim SCRIPT MODEL ARGS...``, e.g.
``.venv/bin/python -m bench.shim ../shared/bench/floor.py demo 8 /tmp/floor``. :mod:`bench.featviz_run`
uses :func:`substituted` too, so featviz-report sees the very same model and inputs.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torchvision

DEMO = "demo"
REFERENCE_SHAPE = (3, 224, 224)  # what the scripts ask torch.randn for, after N


def _shape(size: tuple[Any, ...]) -> tuple[int, ...]:
    """The shape a ``torch.randn(*size)`` call asks for (``randn(2, 3)`` or ``randn((2, 3))``)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        return tuple(size[0])
    return tuple(size)


@contextmanager
def substituted(model_name: str) -> Iterator[None]:
    """While inside, the demo model and its input shape stand in for a torchvision model and 224² RGB inputs.

    Does nothing unless ``model_name`` is ``demo``.
    """
    if model_name != DEMO:
        yield
        return
    from featviz_report.models.resolve import load_model

    loaded = load_model(DEMO)
    model, side = loaded.module, loaded.input_size or 28
    channels = next(m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    real_randn = torch.randn

    def randn(*size: Any, **kwargs: Any) -> torch.Tensor:
        shape = _shape(size)
        if len(shape) == 4 and shape[1:] == REFERENCE_SHAPE:
            return real_randn(shape[0], channels, side, side, **kwargs)
        return real_randn(*size, **kwargs)

    setattr(torchvision.models, DEMO, lambda weights=None: model)
    torch.randn = randn  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.randn = real_randn  # type: ignore[assignment]
        delattr(torchvision.models, DEMO)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(f"usage: python -m bench.shim SCRIPT MODEL ARGS...\n\n{__doc__}")
    script, model_name = sys.argv[1], sys.argv[2]
    sys.argv = [script, *sys.argv[2:]]
    with substituted(model_name):
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
