"""Make the README's dataset-card screenshots: a scan of resnet18 (random weights: nothing can be
downloaded here) over 300 square crops of scikit-image's photographs.

Run: ``.venv/bin/python scripts/cards_example.py`` (about 20 s on 2 CPU cores). Writes docs/cards.png
(the cards of one layer, each top image cut around its peak with the receptive field outlined) and
docs/card-whole.png (one of them clicked: the whole image with the field).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featviz_report.cli import main as featviz  # noqa: E402
from scripts.screenshot import launch  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat")
LAYER = "layer1.1.conv2"


def crops(folder: Path, count: int = 300) -> None:
    """``count`` random square crops of the photographs, 256 px each."""
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [np.asarray(getattr(data, name)())[..., :3] for name in PHOTOS]
    for i in range(count):
        pixels = photos[i % len(photos)]
        h, w = pixels.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(pixels[y : y + side, x : x + side]).resize((256, 256), Image.Resampling.BICUBIC)
        crop.save(folder / f"{PHOTOS[i % len(PHOTOS)]}-{i:03d}.png")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        crops(folder)
        page = Path(tmp) / "scan.html"
        model = ["--model", "torchvision:resnet18", "--layers", LAYER, "--no-graph"]
        assert featviz(["scan", str(folder), *model, "-o", str(page)]) == 0
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = launch(playwright)
            view = browser.new_page(viewport={"width": 1280, "height": 900})
            anchor = f"layer-{LAYER.replace('.', '-')}-channel-8"
            view.goto(f"{page.as_uri()}#{anchor}")
            view.wait_for_load_state("load")
            view.screenshot(path=str(ROOT / "docs" / "cards.png"))
            view.click(f"#{anchor} .whole")
            view.locator("#zoom").screenshot(path=str(ROOT / "docs" / "card-whole.png"))
            browser.close()


if __name__ == "__main__":
    main()
