"""featviz-report: see what a convolutional network has learned, as one static HTML report.

``build_report(model, samples, out=...)``, ``compare_checkpoints(before, after, samples, out=...)`` and
``scan_dataset(model, folders, out=...)`` and ``Recorder(site_dir, samples).record(model, step)`` (a static site
of reports over a training run; ``FeatvizCallback`` for Lightning) are the Python API; ``featviz-report`` the
command line. Heavy modules (torch) are imported on first use, so ``featviz-report --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "build_report",
    "compare_checkpoints",
    "scan_dataset",
    "Recorder",
    "FeatvizCallback",
    "Report",
    "ReportConfig",
    "FeatvizError",
    "__version__",
]

if TYPE_CHECKING:
    from .config import ReportConfig
    from .errors import FeatvizError
    from .pipelines.compare import compare_checkpoints
    from .pipelines.report import build_report
    from .pipelines.scan import scan_dataset
    from .report_data import Report
    from .training.lightning import FeatvizCallback
    from .training.recorder import Recorder

_LAZY = {
    "build_report": "pipelines.report",
    "compare_checkpoints": "pipelines.compare",
    "scan_dataset": "pipelines.scan",
    "Recorder": "training.recorder",
    "FeatvizCallback": "training.lightning",
    "ReportConfig": "config",
    "FeatvizError": "errors",
    "Report": "report_data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
