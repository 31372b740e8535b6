"""How fast a report feels in Chromium: first paint, first layer's images, switching layers.

Builds the demo report and a torchvision model's report over N generated 224×224 photos (crops and
flips of samples/photos), each as one file and as a folder, then opens each from file:// in Debian's
Chromium (Playwright) and prints, per report: size, first contentful paint, time until the first
layer's maps are decoded (scrolled to it right after load), and the median time of a layer switch
(key ``j`` until the next section's visible map is decoded). A benchmark, not a test: numbers vary.

Run from the repository root:
``.venv/bin/python -m bench.reader_speed [--model resnet50] [--samples 16] [--formats html,dir]``
(a resnet50 × 16 single file is over 200 MB today and takes Chromium minutes to open).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from PIL import Image, ImageOps
from playwright.sync_api import Page, sync_playwright

from featviz_report.cli import main as featviz
from scripts.screenshot import launch

ROOT = Path(__file__).resolve().parent.parent

FIRST_LAYER_JS = """async () => {
    const first = document.querySelector('section.layer');
    first.scrollIntoView();  // as a reader following the first nav link; lazy images load once near view
    const imgs = Array.from(first.querySelectorAll('.map.on img, .filters img'));
    await Promise.all(imgs.map(i => i.decode().catch(() => null)));
    return performance.now();
}"""

SWITCH_JS = """async () => {
    const t0 = performance.now();
    document.dispatchEvent(new KeyboardEvent('keydown', {key: 'j', bubbles: true}));
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const section = document.querySelector(location.hash);
    const img = section && section.querySelector('.map.on img, .map img');
    if (img) { img.loading = 'eager'; await img.decode().catch(() => null); }
    return performance.now() - t0;
}"""


def photos(folder: Path, count: int) -> Path:
    sources = sorted(p for p in (ROOT / "samples" / "photos").iterdir() if p.suffix in {".png", ".jpg"})
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.open(sources[i % len(sources)]).convert("RGB")
        side = min(image.size) - 8 * (i // len(sources))
        image = ImageOps.fit(image, (side, side), centering=((i * 0.37) % 1, 0.5))
        if (i // len(sources)) % 2:
            image = ImageOps.mirror(image)
        image.resize((224, 224)).save(folder / f"photo-{i:03d}.png")
    return folder


def measure(page: Page, url: str, switches: int) -> tuple[float, float, float]:
    page.goto(url)
    page.wait_for_load_state("load")
    paint = page.evaluate(
        """() => new Promise(resolve => new PerformanceObserver((list, observer) => {
            const entry = list.getEntriesByName('first-contentful-paint')[0];
            if (entry) { observer.disconnect(); resolve(entry.startTime); }
        }).observe({type: 'paint', buffered: true}))"""
    )
    first_layer = page.evaluate(FIRST_LAYER_JS)
    times = [page.evaluate(SWITCH_JS) for _ in range(switches)]
    return paint, first_layer, statistics.median(times)


def size(path: Path) -> str:
    total = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    index = f", index.html {(path / 'index.html').stat().st_size / 1e6:.1f} MB" if path.is_dir() else ""
    return f"{total / 1e6:.1f} MB{index}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--formats", default="html,dir", help="which of html (one file) and dir (folder) to measure")
    args = parser.parse_args()
    formats = set(args.formats.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = photos(root / "photos", args.samples)
        model = ["--model", f"torchvision:{args.model}", "--samples", str(images)]
        builds = {}
        if "html" in formats:
            builds["demo, one file"] = (root / "demo.html", [])
            builds[f"{args.model} × {args.samples}, one file"] = (root / "model.html", model)
        if "dir" in formats:
            builds["demo, folder"] = (root / "demo", ["--format", "dir"])
            builds[f"{args.model} × {args.samples}, folder"] = (root / "model", [*model, "--format", "dir"])
        for out, argv in builds.values():
            assert featviz([*argv, "-o", str(out), "--quiet"]) == 0
        print(f"{'report':<32} {'size':>28} {'first paint':>12} {'first layer':>12} {'layer switch':>13}")
        with sync_playwright() as playwright:
            browser = launch(playwright)
            for label, (out, _) in builds.items():
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                url = (out / "index.html" if out.is_dir() else out).as_uri()
                paint, first, switch = measure(page, url, args.switches)
                print(f"{label:<32} {size(out):>28} {paint:>9.0f} ms {first:>9.0f} ms {switch:>10.1f} ms")
                page.close()
            browser.close()


if __name__ == "__main__":
    main()
