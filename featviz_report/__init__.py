"""featviz-report: see what a convolutional network has learned, as one static HTML report.

``build_report(model, samples, out=...)`` and ``compare_checkpoints(before, after, samples, out=...)``
are the Python API; ``featviz-report`` the command line.
Heavy modules (torch) are imported on first use, so ``featviz-report --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["build_report", "compare_checkpoints", "Report", "ReportConfig", "FeatvizError", "__version__"]

if TYPE_CHECKING:
    from .build import build_report
    from .config import ReportConfig
    from .errors import FeatvizError
    from .report import Report
    from .review import compare_checkpoints

_LAZY = {
    "build_report": "build",
    "compare_checkpoints": "review",
    "ReportConfig": "config",
    "FeatvizError": "errors",
    "Report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
