"""scan_sources.py: each top image stored once, no larger than its most enlarged crop is shown, WebP for photos."""

from __future__ import annotations

import base64
import io
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featviz_report import ReportConfig, scan_dataset
from featviz_report.render.encode import photo
from featviz_report.scan.crops import CROP_PX
from featviz_report.scan.sources import Region, source_regions

ROOT = Path(__file__).resolve().parents[1]
SOURCE = re.compile(
    r'<image id="src-(\d+)" x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)" '
    r'preserveAspectRatio="none" href="([^"]+)"/>'
)
CROP = re.compile(r'<svg viewBox="(\d+) (\d+) (\d+) \3" aria-hidden="true"><use href="#src-(\d+)"/>')


class TwoConvs(nn.Module):
    """conv1 (3×3) then conv2 (3×3, stride 2): small fields, so crops are small windows of 48² inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x))).mean((2, 3))


def noise_folder(folder: Path, count: int, side: int = 48) -> Path:
    """``count`` RGB noise images (they compress badly: every picture weighs)."""
    folder.mkdir()
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"noise-{i:03d}.png")
    return folder


def config(**changes: object) -> ReportConfig:
    settings: dict[str, object] = dict(input_size=48, normalize="none", top_k=3, graph=False, loader_workers=0)
    return ReportConfig(**{**settings, **changes})  # type: ignore[arg-type]


def sources_and_crops(html: str) -> tuple[dict[int, tuple[int, ...]], dict[int, str], dict[int, list[tuple[int, ...]]]]:
    """The page's pictures (sample → x, y, width, height; sample → href) and every crop's viewBox, by sample."""
    boxes, hrefs, crops = {}, {}, defaultdict(list)
    for sample, x, y, w, h, href in SOURCE.findall(html):
        assert int(sample) not in boxes, f"source {sample} stored twice"
        boxes[int(sample)] = (int(x), int(y), int(w), int(h))
        hrefs[int(sample)] = href
    for x, y, side, sample in CROP.findall(html):
        crops[int(sample)].append((int(x), int(y), int(side)))
    return boxes, hrefs, crops


def test_each_top_image_is_stored_once_no_larger_than_its_most_enlarged_crop(tmp_path: Path) -> None:
    folder = noise_folder(tmp_path / "noise", 12)
    scan_dataset(TwoConvs(), [folder], tmp_path / "s.html", config())
    html = (tmp_path / "s.html").read_text(encoding="utf-8")
    boxes, hrefs, crops = sources_and_crops(html)
    assert boxes and set(boxes) == set(crops)  # every crop's image is there, and no image without a crop
    assert len(set(hrefs.values())) == len(hrefs)  # no picture twice
    assert sum(map(len, crops.values())) == html.count("<figure><button") == 2 * 4 * 3  # layers × channels × k
    for sample, (x, y, w, h) in boxes.items():
        for left, top, side in crops[sample]:  # each crop lies inside what is stored of its image
            assert x <= left and y <= top and left + side <= x + w and top + side <= y + h
        scale = min(1.0, CROP_PX / min(side for _, _, side in crops[sample]))
        data = base64.b64decode(hrefs[sample].split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == "WEBP" and hrefs[sample].startswith("data:image/webp;base64,")
            assert picture.size == (math.ceil(w * scale), math.ceil(h * scale))
            assert picture.size[0] <= w and picture.size[1] <= h  # never more pixels than the input has


def test_a_folder_stores_each_top_image_once_for_every_layer_page(tmp_path: Path) -> None:
    folder = noise_folder(tmp_path / "noise", 12)
    scan_dataset(TwoConvs(), [folder], tmp_path / "site", config(format="dir"))
    site = tmp_path / "site"
    assert sorted(p.name for p in site.glob("*.html")) == ["index.html", "layer-conv1.html", "layer-conv2.html"]
    hrefs: dict[int, set[str]] = defaultdict(set)
    for page in ("layer-conv1.html", "layer-conv2.html"):
        for sample, href in sources_and_crops((site / page).read_text(encoding="utf-8"))[1].items():
            hrefs[sample].add(href)
    assert all(len(links) == 1 for links in hrefs.values())  # one picture per image, whichever page shows it
    pictures = sorted(p.name for p in (site / "img").glob("*.webp"))
    assert len(pictures) == len(hrefs) and {next(iter(h)) for h in hrefs.values()} == {f"img/{p}" for p in pictures}
    assert "<figure><button" not in (site / "index.html").read_text(encoding="utf-8")  # cards live on layer pages


def test_photographs_are_webp_and_flat_images_stay_png() -> None:
    astronaut = np.asarray(Image.open(ROOT / "samples" / "photos" / "astronaut.png").convert("RGB"))
    data, mime = photo(astronaut, 224, 224)
    assert mime == "image/webp" and Image.open(io.BytesIO(data)).size == (224, 224)
    digit = np.asarray(Image.open(ROOT / "samples" / "digits" / "digit-3.png").convert("L"))
    data, mime = photo(digit, 28, 28)
    assert mime == "image/png" and np.array_equal(np.asarray(Image.open(io.BytesIO(data))), digit)  # lossless


@pytest.mark.parametrize(
    ("crops", "region"),
    [
        ([(0, 0, 224)], Region(0, 0, 224, 224, 64, 64)),  # shown at 64 px: stored at 64 px
        ([(10, 20, 32)], Region(20, 10, 32, 32, 32, 32)),  # enlarged 2×: never stored above the input's pixels
        ([(0, 0, 32), (40, 60, 64)], Region(0, 0, 124, 104, 124, 104)),  # a box around both, at 1:1
        ([(0, 0, 32), (100, 150, 64)], Region(0, 0, 224, 224, 224, 224)),  # over half the image: all of it
        ([(0, 0, 224), (40, 40, 128)], Region(0, 0, 224, 224, 112, 112)),  # the smaller crop sets the scale
    ],
)
def test_what_is_stored_of_an_image_covers_its_crops_at_the_finest_scale_shown(
    crops: list[tuple[int, int, int]], region: Region
) -> None:
    assert source_regions(((7, crop) for crop in crops), 224, 224) == {7: region}


def test_an_image_stored_whole_leaves_the_next_images_regions_alone() -> None:
    regions = source_regions([(1, (0, 0, 224)), (2, (16, 8, 32))], 224, 224)
    assert regions == {1: Region(0, 0, 224, 224, 64, 64), 2: Region(8, 16, 32, 32, 32, 32)}
