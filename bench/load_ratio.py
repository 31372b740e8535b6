"""Speed under load: each pipeline's time with other processes keeping every core busy, over its quiet time.

Runs each workload as a whole process, alternating quiet and loaded runs (``--busy`` processes spinning
``while True: pass`` during the loaded ones) so that both see the same machine, and prints the median of
each and their ratio. One thread's fair share of ``cores`` cores next to ``busy`` spinning processes is
``(busy + 1) / cores`` of a core's time; a pipeline that keeps to it (``threads.ThreadPolicy``) lands near
that ratio times its quiet one-thread to all-threads speed-up. A benchmark, not a test: numbers vary.

Workloads: ``featviz`` (the demo model's ``--featviz conv3``, no cache), ``scan`` (a resnet18 scan of the
four shipped photos) and ``report`` (the demo report).

Run from the repository root: ``.venv/bin/python -m bench.load_ratio [--busy 3] [--repeat 3]
[--workloads featviz,scan,report]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "samples" / "photos"
BUSY = "while True: pass"
CLI = [sys.executable, "-m", "featviz_report"]


def workloads(out: Path) -> dict[str, list[str]]:
    """Each workload's command line, writing under ``out``."""
    return {
        "featviz": [*CLI, "--featviz", "conv3", "--cache-dir", str(out / "no-cache"), "-o", str(out / "f.html")],
        "scan": [*CLI, "scan", str(PHOTOS), "--model", "torchvision:resnet18", "-o", str(out / "s.html")],
        "report": [*CLI, "-o", str(out / "r.html")],
    }


def timed(command: list[str], out: Path) -> float:
    """Seconds ``command`` took; its cache folder emptied first so every run does the same work."""
    subprocess.run(["rm", "-rf", str(out / "no-cache")], check=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=3, help="spinning processes during the loaded runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind")
    parser.add_argument("--workloads", default="featviz,scan,report")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        commands = workloads(out)
        print(f"{os.cpu_count()} cores; loaded runs next to {args.busy} spinning processes")
        for name in args.workloads.split(","):
            quiet, loaded = [], []
            for _ in range(args.repeat):
                quiet.append(timed(commands[name], out))
                spinners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
                try:
                    time.sleep(1.0)
                    loaded.append(timed(commands[name], out))
                finally:
                    for spinner in spinners:
                        spinner.kill()
                        spinner.wait()
            q, b = statistics.median(quiet), statistics.median(loaded)
            print(f"{name:8s} quiet {q:6.1f} s  loaded {b:6.1f} s  ratio {b / q:4.2f}", flush=True)


if __name__ == "__main__":
    main()
