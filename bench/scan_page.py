"""How big a scan's page is and how fast Chromium opens it: the README's resnet50 scan and resnet18's.

Scans 4 photos (samples/photos), 8 (those and four of scikit-image's) or more (random squares of those
eight) with torchvision's resnet18 and resnet50 (random weights: nothing is downloaded), ``--top-k 8``,
as one file and as a folder; then opens each page from file:// in Debian's Chromium (Playwright),
``--runs`` times, and prints per page its size (a folder: all its files and its largest) and the medians of
first contentful paint, DOMContentLoaded and load. ``--before DIR`` opens the pages another version wrote
into DIR (``--keep DIR --runs 0`` with that version on the path writes them) in the same browser,
interleaved, and prints their numbers and the ratios.

Run from the repository root: ``.venv/bin/python -m bench.scan_page [--models resnet18,resnet50]
[--images 4,8] [--runs 3] [--before DIR] [--keep DIR]``. A benchmark, not a test: numbers vary with load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Browser, sync_playwright

from featviz_report.cli import main as featviz
from scripts.screenshot import launch

ROOT = Path(__file__).resolve().parent.parent
MORE_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "cat")  # scikit-image's
TIMING_JS = """() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const paint = performance.getEntriesByName('first-contentful-paint')[0];
    return [paint ? paint.startTime : NaN, nav.domContentLoadedEventEnd, nav.loadEventEnd];
}"""


def photos(folder: Path, count: int) -> Path:
    """``count`` photos: the shipped four, then scikit-image's, then random square crops of those eight."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    shipped = sorted((ROOT / "samples" / "photos").iterdir())
    pictures = [np.asarray(Image.open(path).convert("RGB")) for path in shipped]
    pictures += [np.asarray(getattr(data, name)())[..., :3] for name in MORE_PHOTOS]
    names = [path.stem for path in shipped] + list(MORE_PHOTOS)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = pictures[i % len(pictures)]
        if i >= len(pictures):  # a random square of it, a third of its side or more
            h, w = pixels.shape[:2]
            side = int(rng.integers(min(h, w) // 3, min(h, w)))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            pixels = pixels[y : y + side, x : x + side]
        Image.fromarray(pixels).save(folder / f"{names[i % len(names)]}-{i:03d}.jpg", quality=92)
    return folder


def size(path: Path) -> tuple[int, int]:
    """(all bytes, the largest file's) of a page or a folder."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    sizes = [f.stat().st_size for f in files]
    return sum(sizes), max(sizes)


def timings(browser: Browser, page: Path) -> tuple[float, float, float]:
    """First contentful paint, DOMContentLoaded and load, in ms, of one fresh opening of ``page``."""
    view = browser.new_page(viewport={"width": 1280, "height": 900})
    view.goto(page.as_uri(), timeout=600_000)
    view.wait_for_load_state("load", timeout=600_000)
    view.wait_for_timeout(100)
    paint, loaded, load = view.evaluate(TIMING_JS)
    view.close()
    return paint, loaded, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--images", default="4,8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", type=Path, help="pages another version wrote, to open side by side")
    parser.add_argument("--keep", type=Path, help="write the pages here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        pages = []
        for count in (int(n) for n in args.images.split(",")):
            folder = photos(Path(tmp) / f"photos-{count}", count)
            for model in args.models.split(","):
                for fmt, name in (("html", f"{model}-{count}.html"), ("dir", f"{model}-{count}")):
                    argv = ["scan", str(folder), "--model", f"torchvision:{model}", "--normalize", "imagenet"]
                    assert featviz([*argv, "--top-k", "8", "--format", fmt, "-o", str(out / name), "--quiet"]) == 0
                    pages.append(out / name)
        if not args.runs:
            return
        with sync_playwright() as playwright:
            browser = launch(playwright)
            print(f"{'page':<20} {'MB':>7} {'largest':>8} {'paint ms':>9} {'DCL ms':>8} {'load ms':>8}")
            for page in pages:
                before = args.before / page.name if args.before else None
                opened = [page, before] if before is not None and before.exists() else [page]
                runs: dict[Path, list[tuple[float, float, float]]] = {p: [] for p in opened}
                for _ in range(args.runs):  # interleaved: the same load for both versions
                    for p in opened:
                        runs[p].append(timings(browser, p / "index.html" if p.is_dir() else p))
                for p, label in zip(opened, ("", " (before)")):
                    total, largest = size(p)
                    paint, loaded, load = (statistics.median(r[i] for r in runs[p]) for i in range(3))
                    print(
                        f"{page.name + label:<20} {total / 1e6:7.1f} {largest / 1e6:8.1f} "
                        f"{paint:9.0f} {loaded:8.0f} {load:8.0f}"
                    )
                if len(opened) == 2:
                    now, then = (statistics.median(r[1] for r in runs[p]) for p in opened)
                    print(f"{'':<20} size ×{size(page)[0] / size(before)[0]:.3f}, DOMContentLoaded ×{now / then:.3f}")
            browser.close()


if __name__ == "__main__":
    main()
