"""featviz-report: see what a convolutional network has learned, as one static HTML report.

``build_report(model, samples, out=...)``, ``compare_checkpoints(before, after, samples, out=...)`` and
``scan_dataset(model, folders, out=...)`` and ``Recorder(site_dir, samples).record(model, step)`` (a static site
of reports over a training run) are the Python API; ``featviz-report`` the command line.
Heavy modules (torch) are imported on first use, so ``featviz-report --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "build_report",
    "compare_checkpoints",
    "scan_dataset",
    "Recorder",
    "Report",
    "ReportConfig",
    "FeatvizError",
    "__version__",
]

if TYPE_CHECKING:
    from .compare_pipeline import compare_checkpoints
    from .config import ReportConfig
    from .errors import FeatvizError
    from .recorder import Recorder
    from .report_data import Report
    from .report_pipeline import build_report
    from .scan_pipeline import scan_dataset

_LAZY = {
    "build_report": "report_pipeline",
    "compare_checkpoints": "compare_pipeline",
    "scan_dataset": "scan_pipeline",
    "Recorder": "recorder",
    "ReportConfig": "config",
    "FeatvizError": "errors",
    "Report": "report_data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
