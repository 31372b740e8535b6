"""Where the files that ship with the package live: templates and the demo's samples and weights.

In a wheel they sit inside the package (hatchling ``force-include``); in a source checkout or an
editable install they are read from the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["templates_dir", "demo_samples_dir", "demo_weights_path", "demo_history"]

_PACKAGE = Path(__file__).resolve().parent


def _shipped(relative: str) -> Path:
    for base in (_PACKAGE, _PACKAGE.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"featviz-report is installed without {relative!r}; reinstall the package")


def templates_dir() -> Path:
    return _shipped("templates")


def demo_samples_dir() -> Path:
    return _shipped("samples/digits")


def demo_weights_path(early: bool = False) -> Path:
    """The demo's trained weights, or with ``early`` those after 5 of its 40 epochs."""
    return _PACKAGE / "demo" / ("digits_cnn_early.pt" if early else "digits_cnn.pt")


def demo_history() -> list[tuple[int, Path]]:
    """The demo's training run as shipped checkpoints: (epoch, weights), from the untrained start to the end."""
    history = [(int(p.stem.split("-")[1]), p) for p in (_PACKAGE / "demo" / "history").glob("epoch-*.pt")]
    history += [(5, demo_weights_path(early=True)), (40, demo_weights_path())]
    return sorted(history)
