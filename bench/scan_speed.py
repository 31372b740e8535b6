"""Dataset scans: images per second with 1 and 2 processes, and peak memory from 1k to 20k images.

Generates image folders of the requested sizes (shifted, flipped and rotated copies of samples/digits,
28×28 grey, cached under build/scan-data/), then runs ``featviz-report scan`` on each, once as one
process and once under ``torchrun --standalone --nproc-per-node 2`` (gloo on the CPU; torchrun gives each
process one thread). Speed is images over the scan's own time (from the JSON sidecar: start-up and
imports excluded); peak RSS is the largest process's (``ru_maxrss`` of the children). A benchmark, not a
test: numbers vary.

Run from the repository root:
``.venv/bin/python -m bench.scan_speed [--counts 1000,20000] [--model demo] [--batch-size 64]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# runs the scan as its child and prints the largest descendant's peak RSS (KiB), this run's alone
MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def make_images(count: int) -> Path:
    """``count`` 28×28 digits under build/scan-data/COUNT (made once, then reused)."""
    folder = ROOT / "build" / "scan-data" / str(count)
    if folder.is_dir() and len(list(folder.rglob("*.png"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    sources = [np.asarray(Image.open(p)) for p in sorted((ROOT / "samples" / "digits").glob("*.png"))]
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = sources[index % len(sources)]
        image = Image.fromarray(np.roll(pixels, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)))
        image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        sub = folder / f"{index // 1000:03d}"  # at most 1000 files per folder
        sub.mkdir(parents=True, exist_ok=True)
        image.save(sub / f"{index:06d}.png")
    return folder


def scan(data: Path, processes: int, args: argparse.Namespace, out: Path) -> tuple[float, float, int]:
    """(images per second, peak RSS MB of the largest process, images) of one scan in fresh processes."""
    if processes == 1:
        launcher = [sys.executable, "-m", "featviz_report"]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        launcher = [torchrun, "--standalone", f"--nproc-per-node={processes}", "-m", "featviz_report"]
    sidecar = out / f"scan-{processes}.json"
    argv = [*launcher, "scan", str(data), "--model", args.model, "--batch-size", str(args.batch_size)]
    argv += ["--loader-workers", str(args.loader_workers), "--device", "cpu", "--quiet"]
    argv += ["-o", str(out / f"scan-{processes}.html"), "--json", str(sidecar)]
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    peak = int(done.stdout.split()[-1]) * 1024 / 1e6
    info = json.loads(sidecar.read_text(encoding="utf-8"))["dataset"]
    return info["images"] / info["seconds"], peak, info["images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,20000", help="dataset sizes, comma-separated")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loader-workers", type=int, default=1, help="DataLoader workers per process")
    args = parser.parse_args()
    rows = [("images", "processes", "images/s", "peak RSS MB (largest process)")]
    with tempfile.TemporaryDirectory(prefix="featviz-scan-") as tmp:
        for count in (int(c) for c in args.counts.split(",")):
            data = make_images(count)
            for processes in (1, 2):
                speed, peak, images = scan(data, processes, args, Path(tmp))
                rows.append((f"{images:,}", str(processes), f"{speed:,.0f}", f"{peak:,.0f}"))
                print(f"{images} images, {processes} process(es): {speed:.0f}/s, {peak:.0f} MB", file=sys.stderr)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"featviz-report scan, model {args.model}, batch {args.batch_size}, {args.loader_workers} loader worker(s)")
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows))


if __name__ == "__main__":
    main()
