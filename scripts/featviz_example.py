"""Make the README's feature-visualisation screenshots: a face detector nobody here trained (MTCNN's ONet,
weights from the facenet-pytorch wheel, see tests/trained_nets.py) over scikit-image's photographs.

Run: ``.venv/bin/python scripts/featviz_example.py`` (about two minutes on 2 CPU cores; the images are
cached, so a second run takes seconds). Writes docs/featviz.png (the atlas of conv4's 128 channels) and
docs/featviz-zoom.png (one channel enlarged: its optimised image beside its top samples).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featviz_report import ReportConfig, build_report  # noqa: E402
from scripts.screenshot import launch  # noqa: E402
from tests.trained_nets import ONET_NORMALIZE, ONET_SIZE, natural_images, onet  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        natural_images(photos, ONET_SIZE)
        page = Path(tmp) / "onet.html"
        config = ReportConfig(
            title="MTCNN ONet (facenet-pytorch weights)",
            featviz=("conv4",),
            input_size=ONET_SIZE,
            normalize=ONET_NORMALIZE,
            output="2",
            quiet=False,
        )
        build_report(onet(), photos, page, config)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = launch(playwright)
            view = browser.new_page(viewport={"width": 1280, "height": 880})
            view.goto(page.as_uri() + "#featviz-conv4")
            view.wait_for_load_state("load")
            view.screenshot(path=str(ROOT / "docs" / "featviz.png"))
            grid = view.locator("#layer-conv4 .map.on .grid")
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            assert box is not None
            view.mouse.click(box["x"] + box["width"] * 0.3 / 16, box["y"] + box["height"] * 0.5 / 8)
            view.locator("#zoom").screenshot(path=str(ROOT / "docs" / "featviz-zoom.png"))
            browser.close()


if __name__ == "__main__":
    main()
