"""featviz-report's side of :mod:`bench.compare`: one report, timed the way ../shared/bench's scripts time theirs.

Builds the model and inputs exactly as the reference scripts do (``torch.manual_seed(0)``, then
``getattr(torchvision.models, MODEL)(weights=None).eval()``, then ``torch.randn(N, 3, 224, 224)``; for ``demo``
the substitution of :mod:`bench.shim`), then times ``build_report`` alone (imports, model and inputs excluded)
with every ``nn.Conv2d`` of the model as the captured layers, as the references hook every Conv2d.
Prints one line of ``name=value`` figures::

    featviz_s=0.091 tiles=224 html_MB=0.1 device=cpu input=1x28x28 inputs_MB=0.01 rss_before_MB=709.7 peak_rss_MB=731.4

``html_MB`` is the size of the page (``dir_MB``, the folder's total, with ``--format dir``); ``rss_before_MB`` is
the resident set just before ``build_report`` (model and inputs ready), ``peak_rss_MB`` the process's peak
resident set at the end; MB are 10⁶ bytes. Run from the repository root:
``.venv/bin/python -m bench.featviz_run resnet18 8 /tmp/r.html [--format dir] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from bench.shim import substituted
from featviz_report import build_report
from featviz_report.config import DEFAULT_MAX_SIZE_MB, ReportConfig
from featviz_report.report_data import Report


def reference_inputs(model_name: str, n: int) -> tuple[nn.Module, torch.Tensor]:
    """The model and inputs of the reference scripts, built by the same lines in the same order."""
    with substituted(model_name):
        torch.manual_seed(0)
        model = getattr(torchvision.models, model_name)(weights=None).eval()
        x = torch.randn(n, 3, 224, 224)
    return model, x


def conv_names(model: nn.Module) -> tuple[str, ...]:
    """Qualified names of every Conv2d, the layers the reference scripts hook."""
    return tuple(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def tiles(report: Report) -> int:
    """Activation-map tiles on the page: per layer, one atlas per sample of ``count`` tiles each (atlases
    left out to keep a single page within --max-size are not counted)."""
    return sum(grid.count for layer in report.layers for grid in layer.maps if grid)


def rss_mb() -> float:
    """The current resident set in MB (Linux's /proc; elsewhere the peak so far)."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """The process's peak resident set in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a torchvision model name, or demo")
    parser.add_argument("samples", type=int, help="number of random inputs")
    parser.add_argument("out", type=Path, help="the report to write (a file, or a folder with --format dir)")
    parser.add_argument("--format", choices=("html", "dir"), default="html")
    parser.add_argument("--device", default="auto", help="featviz's --device (auto, cpu, cuda, mps)")
    parser.add_argument("--max-size", type=float, default=DEFAULT_MAX_SIZE_MB, help="featviz's --max-size (0: none)")
    args = parser.parse_args()
    model, x = reference_inputs(args.model, args.samples)
    config = ReportConfig(
        quiet=True, layers=conv_names(model), format=args.format, device=args.device, max_size=args.max_size or None
    )
    before = rss_mb()
    t0 = time.perf_counter()
    report = build_report(model, x, args.out, config)
    seconds = time.perf_counter() - t0
    unit = "html_MB" if args.format == "html" else "dir_MB"
    print(
        f"featviz_s={seconds:.3f} tiles={tiles(report)} {unit}={size_mb(args.out):.1f} "
        f"device={report.device.split()[0]} input={'x'.join(map(str, x.shape[1:]))} "
        f"inputs_MB={x.numel() * x.element_size() / 1e6:.2f} rss_before_MB={before:.1f} peak_rss_MB={peak_rss_mb():.1f}"
    )


if __name__ == "__main__":
    main()
