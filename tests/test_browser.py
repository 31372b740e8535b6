"""The report as a reader sees it: real Chromium (Debian's), driven by Playwright, on built reports.

Outside CI the suite skips when Chromium, Playwright or axe-core is missing; with ``CI`` set it fails.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from featviz_report.cli import main
from scripts.screenshot import CHROMIUM, launch

AXE = Path(__file__).parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not AXE.exists():
        return f"{AXE} is missing (npm install --prefix tests/browser)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = launch(playwright)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo and a torchvision model, each as one file and as a folder, the demo comparison and a scan."""
    root = tmp_path_factory.mktemp("reports")
    photos = Path(__file__).resolve().parents[1] / "samples" / "photos"
    model = ["--model", "torchvision:resnet18", "--samples", str(photos), "--layers", "conv1", "layer2.*", "fc"]
    built = {
        "demo": (
            root / "demo.html",
            ["--featviz", "conv3", "--featviz-steps", "16", "--cache-dir", str(root / "cache")],
        ),
        "demo-dir": (root / "demo-site", ["--format", "dir"]),
        "resnet": (root / "resnet.html", model),
        "resnet-dir": (root / "resnet-site", [*model, "--format", "dir"]),
        "compare": (root / "compare.html", ["--demo-compare"]),
        "scan": (root / "scan.html", ["scan", str(photos.parent / "digits"), str(photos), "--top-k", "3"]),
        "scan-dir": (root / "scan-site", ["scan", str(photos.parent / "digits"), str(photos), "--format", "dir"]),
        "site": (root / "training-site", ["--demo-site"]),
        "folded": (
            root / "folded.html",
            ["--model", "torchvision:resnet50", "--samples", str(photos), "--layers", "fc"],
        ),
    }
    for out, argv in built.values():
        assert main([*argv, "-o", str(out), "--quiet"]) == 0
    return {name: out / "index.html" if out.is_dir() else out for name, (out, _) in built.items()}


class Reader:
    """A page opened from file:// that records every request, console error and CSP violation."""

    def __init__(self, browser: object, path: Path, *, javascript: bool = True, width: int = 1280) -> None:
        self.path = path
        self.context = browser.new_context(java_script_enabled=javascript, viewport={"width": width, "height": 800})  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )

    def _route(self, route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        parsed = urlparse(url)
        own = parsed.scheme == "file" and Path(unquote(parsed.path)).is_relative_to(self.path.parent)
        if own and (self.path.name == "index.html" or Path(unquote(parsed.path)) == self.path):
            route.continue_()  # type: ignore[attr-defined]
        else:
            self.requests.append(url)
            route.abort()  # type: ignore[attr-defined]

    def open(self, fragment: str = "") -> object:
        self.page.goto(self.path.as_uri() + fragment)
        self.page.wait_for_load_state("load")
        return self.page

    def load_all_images(self) -> list[dict[str, object]]:
        return self.page.evaluate(
            """async () => {
                const imgs = Array.from(document.images);
                imgs.forEach(i => { i.loading = 'eager'; });
                await Promise.all(imgs.map(i => i.decode().catch(() => null)));
                return imgs.map(i => ({alt: i.alt, w: i.naturalWidth, shown: i.getBoundingClientRect().width,
                                      attr: i.width, visible: i.offsetParent !== null}));
            }"""
        )

    def clean(self) -> None:
        csp = self.page.evaluate("window.__csp") if self.page.evaluate("typeof window.__csp") != "undefined" else []
        assert self.requests == [], f"network requests: {self.requests[:5]}"
        assert self.errors == [], f"console errors: {self.errors[:5]}"
        assert csp == [], f"CSP violations: {csp[:5]}"
        self.context.close()


@pytest.mark.parametrize("name", ["demo", "demo-dir", "resnet", "resnet-dir", "compare", "scan"])
def test_opens_offline_with_no_requests_errors_or_csp_violations(
    browser: object, reports: dict[str, Path], name: str
) -> None:
    reader = Reader(browser, reports[name])
    reader.open()
    images = reader.load_all_images()
    assert images and all(i["w"] > 0 for i in images), [i["alt"] for i in images if not i["w"]][:5]
    assert all(str(i["alt"]).strip() for i in images)
    layers = reader.page.eval_on_selector_all("section.layer", "s => s.map(x => x.dataset.layer)")
    if name == "scan":  # no samples: per layer, a card per channel with its top images, windows on their images
        crops = reader.page.eval_on_selector_all(
            ".card-tops .whole", "bs => bs.map(b => [b.closest('section').dataset.layer, b.getAttribute('aria-label')])"
        )
        assert {layer for layer, _ in crops} == set(layers) and all(": show it whole" in label for _, label in crops)
        uses = reader.page.eval_on_selector_all(".card-tops use", "us => us.map(u => u.getAttribute('href'))")
        assert all(reader.page.query_selector(f"image{href}") for href in set(uses))  # each image stored once
    else:
        maps = [str(i["alt"]) for i in images if ", sample " in str(i["alt"])]
        assert {alt.split(", sample ")[0] for alt in maps} == set(layers)  # every map names its layer and sample
        assert all(("channel" in alt or "features" in alt) for alt in maps)
    reader.clean()


@pytest.mark.parametrize("name", ["demo", "resnet-dir", "compare"])
def test_navigation_links_keys_search_picker_and_zoom(browser: object, reports: dict[str, Path], name: str) -> None:
    reader = Reader(browser, reports[name])
    page = reader.open()
    sections = page.eval_on_selector_all("section.layer", "s => s.map(x => x.id)")
    target = sections[2]
    at = f'[id="{target}"]'  # a readable id (layer2.0.conv1) is no CSS #id selector without escaping
    page.click(f'.tree a[href="#{target}"]')
    page.wait_for_function(f"() => location.hash === '#{target}'")
    top = page.eval_on_selector(at, "s => s.getBoundingClientRect().top")
    assert -2 <= top <= 40
    page.keyboard.press("j")
    page.wait_for_function(f"() => location.hash === '#{sections[3]}'")
    page.keyboard.press("k")
    page.wait_for_function(f"() => location.hash === '#{target}'")
    page.wait_for_function(f"() => document.querySelector('.tree a[href=\"#{target}\"]').classList.contains('current')")
    page.fill("#find-layer", sections[-1].removeprefix("layer-").split("-")[-1])
    hidden = page.eval_on_selector_all(".tree li", "ls => ls.filter(l => l.hidden).length")
    assert hidden > 0
    page.fill("#find-layer", "")
    on = page.eval_on_selector(f"{at} .map.on", "m => m.dataset.sample")
    page.click(f"{at} .picker .next")
    assert page.eval_on_selector(f"{at} .map.on", "m => m.dataset.sample") == str(int(on) + 1)
    assert page.eval_on_selector_all(".map.on", "ms => new Set(ms.map(m => m.dataset.sample)).size") == 1
    page.click(f"{at} .map.on .grid", position={"x": 5, "y": 5})
    assert page.eval_on_selector("#zoom", "d => d.open")
    assert "channel" in page.inner_text("#zoom h3") or "features" in page.inner_text("#zoom h3")
    if name == "demo":  # --featviz conv3: channel 0's optimised image comes first, then its top samples
        shown = page.eval_on_selector_all("#zoom .tops figure", "fs => fs.map(f => f.className)")
        assert shown[0] == "fv" and len(shown) > 1
        assert "channel 0:" in page.get_attribute("#zoom .tops .fv img", "alt")
        # one measure each, labelled: the image's mean, the samples' peaks; ranks before the samples' names
        assert page.inner_text("#zoom .tops .fv figcaption").startswith("optimised image · mean ")
        assert "scored by the channel's mean over positions" in page.inner_text("#zoom .tops p")
        ranks = page.eval_on_selector_all("#zoom .tops figure:not(.fv) figcaption", "fs => fs.map(f => f.textContent)")
        assert [c.split(".")[0] for c in ranks] == [str(r + 1) for r in range(len(ranks))]
        assert all(" · peak " in c for c in ranks)
        assert page.is_visible("#zoom .stat-help") and "Selectivity:" in page.inner_text("#zoom .stat-help")
    page.keyboard.press("Escape")
    reader.clean()


def test_deep_link_lands_on_its_section(browser: object, reports: dict[str, Path]) -> None:
    for javascript in (True, False):
        reader = Reader(browser, reports["resnet"], javascript=javascript)
        page = reader.open("#layer-fc")
        top = page.eval_on_selector("#layer-fc", "s => s.getBoundingClientRect().top")
        assert -2 <= top <= 40, (javascript, top)
        if javascript:  # the sidebar shows the layer it landed on
            shown = page.eval_on_selector(
                ".sidebar a.current",
                "a => { const b = a.getBoundingClientRect(), f = a.closest('.sidebar').getBoundingClientRect();"
                " return b.top >= f.top && b.bottom <= f.bottom; }",
            )
            assert shown
        reader.clean()


def test_without_javascript_every_section_and_image_is_there(browser: object, reports: dict[str, Path]) -> None:
    reader = Reader(browser, reports["demo"], javascript=False)
    page = reader.open()
    assert page.eval_on_selector_all("section.layer", "s => s.length") == 5
    images = reader.load_all_images()
    maps = [
        i for i in images if "sample" in str(i["alt"]) and ("channels" in str(i["alt"]) or "features" in str(i["alt"]))
    ]
    assert len(maps) == 5 * 10 and all(i["visible"] and i["w"] > 0 for i in maps)
    reader.clean()


@pytest.mark.parametrize("width", [1280, 390])
def test_no_horizontal_scrolling_and_tiles_at_their_size(browser: object, reports: dict[str, Path], width: int) -> None:
    for name in ("demo", "resnet", "compare", "scan"):
        reader = Reader(browser, reports[name], width=width)
        page = reader.open()
        images = reader.load_all_images()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (name, width, overflow)
        if width == 1280 and name == "demo":
            conv1 = [i for i in images if str(i["alt"]).startswith("conv1, sample 0")][0]
            assert conv1["shown"] == conv1["attr"] == 336  # 4 tiles of 28 px at 3×, pixel-exact
        reader.clean()


@pytest.mark.parametrize("name", ["demo", "resnet", "compare", "scan", "folded", "site"])
def test_axe_finds_no_serious_or_critical_violations(browser: object, reports: dict[str, Path], name: str) -> None:
    reader = Reader(browser, reports[name])
    page = reader.open()
    page.evaluate(AXE.read_text(encoding="utf-8"))
    violations = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => v.id + ': ' + v.nodes.slice(0, 2).map(n => n.target.join(' ')).join(' | '))"""
    )
    assert violations == []
    reader.clean()


def test_a_folded_block_opens_its_drawing_and_layers_light_up_in_the_graph(
    browser: object, reports: dict[str, Path]
) -> None:
    reader = Reader(browser, reports["folded"])
    page = reader.open("#graph")
    assert page.eval_on_selector("#module-layer1-0", "d => d.open") is False
    page.click('svg.graph a[href="#module-layer1-0"]')
    page.wait_for_function("() => document.getElementById('module-layer1-0').open")
    top = page.eval_on_selector("#module-layer1-0", "d => d.getBoundingClientRect().top")
    assert -2 <= top <= 40, top
    reader.clean()
    reader = Reader(browser, reports["resnet"])
    page = reader.open("#layer-conv1")
    page.wait_for_function(
        "() => document.querySelector('svg.graph a[data-node=\"conv1\"]').classList.contains('current')"
    )
    reader.clean()


def test_screenshot_of_the_demo(browser: object, reports: dict[str, Path]) -> None:
    reader = Reader(browser, reports["demo"])
    page = reader.open("#layer-conv1")
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / "demo-1280x800.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    shutil.copy(shot, SHOTS / "latest.png")
    reader.clean()


@pytest.mark.parametrize("width", [1280, 390])
def test_training_site_index_works_offline_without_script_and_every_link_resolves(
    browser: object, reports: dict[str, Path], width: int
) -> None:
    for javascript in (True, False):
        reader = Reader(browser, reports["site"], javascript=javascript, width=width)
        page = reader.open()
        assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
        hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.getAttribute('href'))")
        assert len([h for h in hrefs if h.endswith("/index.html")]) == 7 + 6  # 7 epochs, 6 comparisons
        assert all((reports["site"].parent / h).is_file() for h in hrefs)
        assert page.eval_on_selector_all("svg[role=img]", "s => s.length") == 5 * 4
        page.click("text=compare 10 → 20")
        page.wait_for_load_state("load")
        assert page.url.endswith("step-000020/compare/index.html")
        assert page.eval_on_selector_all("section.layer", "s => s.length") == 5
        reader.clean()


def test_channel_links_open_the_card_or_the_enlarged_view_with_and_without_javascript(
    browser: object, reports: dict[str, Path]
) -> None:
    for javascript in (True, False):
        reader = Reader(browser, reports["scan"], javascript=javascript)
        page = reader.open("#layer-conv2-channel-3")
        top = page.eval_on_selector("#layer-conv2-channel-3", "c => c.getBoundingClientRect().top")
        assert -2 <= top <= 40, (javascript, top)
        files = page.eval_on_selector_all("#layer-conv2-channel-3 figcaption .file", "fs => fs.map(f => f.textContent)")
        assert len(files) == 3 and all(f.endswith(".png") or f.endswith(".jpg") for f in files)
        if javascript:
            page.select_option("#layer-conv2 .card-order", "max")
            maxima = page.eval_on_selector_all("#layer-conv2 .card", "cs => cs.map(c => Number(c.dataset.max))")
            assert maxima == sorted(maxima, reverse=True)
            page.fill("#layer-conv2 .card-find", "7")
            assert page.eval_on_selector_all("#layer-conv2 .card:not([hidden])", "cs => cs.map(c => c.id)") == [
                "layer-conv2-channel-7"
            ]
        reader.clean()
        reader = Reader(browser, reports["demo"], javascript=javascript)
        page = reader.open("#layer-conv2-channel-5")
        if javascript:
            assert page.eval_on_selector("#zoom", "d => d.open")
            assert "conv2 · channel 5 ·" in page.inner_text("#zoom h3")
            assert page.get_attribute("#zoom .channel-link", "href") == "#layer-conv2-channel-5"
        else:
            top = page.eval_on_selector("#layer-conv2-channel-5", "a => a.getBoundingClientRect().top")
            assert -2 <= top <= 800, top  # the layer's maps are in view
        reader.clean()


def test_a_walk_down_the_built_from_links_to_the_first_layer_and_back(
    browser: object, reports: dict[str, Path]
) -> None:
    """From the last layer down to the first, one click per step, then Back: without JavaScript each link
    lands on the input channel's row; with it, on that channel's enlarged view and its own 'built from' row."""
    reader = Reader(browser, reports["demo"], javascript=False)
    page = reader.open("#layer-fc2-channel-3")
    walked = []
    for _ in range(4):  # fc2 → fc1 → conv3 → conv2 → conv1
        here = page.evaluate("location.hash").lstrip("#")
        top = page.eval_on_selector(f"#{here}", "row => row.getBoundingClientRect().top")
        assert -2 <= top <= 800, (here, top)
        page.click(f"#{here} > a")
        walked.append(page.evaluate("location.hash").split("-channel-")[0])
    assert walked == ["#layer-fc1", "#layer-conv3", "#layer-conv2", "#layer-conv1"]
    reader.clean()
    reader = Reader(browser, reports["demo"])
    page = reader.open("#layer-conv3-channel-5")
    first = page.get_attribute("#zoom .built-view a", "href")
    page.click("#zoom .built-view a")
    page.wait_for_function(f"document.getElementById('zoom').dataset.at === {first!r}")
    assert page.inner_text("#zoom h3").startswith("conv2 · channel " + first.split("-channel-")[1] + " ·")
    assert page.eval_on_selector_all("#zoom .built-view a", "links => links.length") > 0
    page.click("#zoom .built-view a")  # down to conv1, which reads the image: no inputs, and why
    page.wait_for_function("location.hash.startsWith('#layer-conv1-channel-')")
    assert "reads the model's input" in page.inner_text("#zoom .built-view")
    assert page.eval_on_selector_all("#zoom .built-view a", "links => links.length") == 0
    page.go_back()
    page.go_back()
    page.wait_for_function("document.getElementById('zoom').dataset.at === '#layer-conv3-channel-5'")
    assert page.inner_text("#zoom h3").startswith("conv3 · channel 5 ·")
    reader.clean()


def test_a_scan_folder_index_sends_a_channels_address_to_its_layer_page(
    browser: object, reports: dict[str, Path]
) -> None:
    for javascript in (True, False):
        reader = Reader(browser, reports["scan-dir"], javascript=javascript)
        page = reader.open("#layer-conv2-channel-3")
        if javascript:  # the card, on its layer's page
            page.wait_for_function("() => location.pathname.endsWith('/layer-conv2.html')")
            page.wait_for_load_state("load")
            top = page.eval_on_selector("#layer-conv2-channel-3", "c => c.getBoundingClientRect().top")
            assert -2 <= top <= 40, top
            assert page.eval_on_selector_all(".card-tops .whole", "bs => bs.length") > 0
            page.keyboard.press("j")  # the next layer's page
            page.wait_for_function("() => location.pathname.endsWith('/layer-conv3.html')")
            page.wait_for_load_state("load")
            assert page.eval_on_selector_all("section.layer", "s => s.map(x => x.dataset.layer)") == ["conv3"]
        else:  # the layer's section on the index, with the link to its page
            top = page.eval_on_selector("#layer-conv2-channel-3", "a => a.getBoundingClientRect().top")
            assert -2 <= top <= 800, top
            assert page.get_attribute('.card-page a[data-slug="conv2"]', "href") == "layer-conv2.html"
        reader.clean()


def test_an_old_address_lands_on_its_layer_and_channel_and_becomes_the_new_one(
    browser: object, reports: dict[str, Path]
) -> None:
    section = "document.getElementById('layer-layer2.0.conv1').getBoundingClientRect().top"
    for javascript in (True, False):
        reader = Reader(browser, reports["resnet"], javascript=javascript)
        page = reader.open("#layer-layer2-0-conv1")  # as reports named it before the readable ids
        assert -4 <= page.evaluate(section) <= 40, javascript  # without script: the old id inside its border
        assert page.evaluate("location.hash") == ("#layer-layer2.0.conv1" if javascript else "#layer-layer2-0-conv1")
        reader.clean()
    reader = Reader(browser, reports["resnet"])
    page = reader.open("#layer-layer2-0-conv1-channel-5")
    page.wait_for_function("() => document.getElementById('zoom').open")
    assert "layer2.0.conv1 · channel 5 ·" in page.inner_text("#zoom h3")
    assert page.evaluate("location.hash") == "#layer-layer2.0.conv1-channel-5"
    page.keyboard.press("Escape")
    page.evaluate("location.hash = '#layer-layer2-0-conv2'")  # a link followed on the page
    page.wait_for_function("() => location.hash === '#layer-layer2.0.conv2'")
    page.evaluate("location.hash = '#constructor'")  # no old id, though every object has one
    page.wait_for_timeout(100)
    assert page.evaluate("location.hash") == "#constructor"
    reader.clean()


def test_a_scan_folder_sends_an_old_layer_page_to_its_new_name(browser: object, tmp_path: Path) -> None:
    from torch import nn

    from featviz_report import ReportConfig, scan_dataset

    photos = Path(__file__).resolve().parents[1] / "samples" / "digits"
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 3)))
    scan_dataset(model, [photos], tmp_path / "site", ReportConfig(quiet=True, format="dir", graph=False, top_k=2))
    for javascript in (True, False):
        reader = Reader(browser, tmp_path / "site" / "index.html", javascript=javascript)
        page = reader.page
        page.goto((tmp_path / "site" / "layer-1-0.html").as_uri() + "#layer-1-0-channel-2")
        page.wait_for_function("() => location.pathname.endsWith('/layer-1.0.html')")
        page.wait_for_load_state("load")
        if javascript:  # the channel's address comes along, in its new form
            page.wait_for_function("() => location.hash === '#layer-1.0-channel-2'")
        assert page.eval_on_selector_all("section.layer", "s => s.map(x => x.dataset.layer)") == ["1.0"]
        reader.clean()


RED_BOX = """c => {  // the bounding box of the outline's red pixels on a canvas, in canvas pixels
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let x0 = c.width, y0 = c.height, x1 = -1, y1 = -1;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] === 255 && d[i + 1] === 59 && d[i + 2] === 48) {
      const x = (i / 4) % c.width, y = Math.floor(i / 4 / c.width);
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
  }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1, c.width];
}"""


def _outlined(page: object, box: list[int], size: int) -> None:
    """The large canvas shows the whole image with exactly ``box`` (input pixels of a ``size`` input) outlined."""
    found = page.eval_on_selector("#zoom canvas", RED_BOX)  # type: ignore[attr-defined]
    assert found is not None
    scale = found[4] / size
    assert all(abs(f - b * scale) <= 2 for f, b in zip(found[:4], box)), (found, box)


def _red_box(shot: bytes) -> list[int]:
    """The bounding box of the outline's red pixels in a screenshot, in screen pixels."""
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 110) & (pixels[..., 2] < 110)
    rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def test_top_images_show_their_exact_receptive_field_whole_on_click(browser: object, reports: dict[str, Path]) -> None:
    reader = Reader(browser, reports["scan"])
    page = reader.open("#layer-conv2-channel-3")
    first = page.query_selector("#layer-conv2-channel-3 .whole")
    x, y, w, h = (
        int(v) for v in first.eval_on_selector("rect", "r => ['x', 'y', 'width', 'height'].map(k => r.getAttribute(k))")
    )
    crop = _red_box(first.screenshot())  # on the card, in its 64 px window
    left, top, side = (int(v) for v in first.eval_on_selector("svg", "s => s.getAttribute('viewBox')").split()[:3])
    expected = [(x - left) * 64 / side, (y - top) * 64 / side, (x + w - left) * 64 / side, (y + h - top) * 64 / side]
    assert all(abs(f - min(64, max(0, b))) <= 2 for f, b in zip(crop, expected)), (crop, expected)
    first.click()  # then whole
    assert page.eval_on_selector("#zoom", "d => d.open")
    name = page.inner_text("#layer-conv2-channel-3 figcaption .file")
    assert f"conv2 · channel 3 · {name}, whole" in page.inner_text("#zoom h3")
    size = page.evaluate("JSON.parse(document.getElementById('fv-data').textContent).input[1]")
    scale = 256 / size  # the demo's grey 28² inputs: the only red is the outline, drawn on the field's edges
    found = _red_box(page.locator("#zoom .whole-view").screenshot())
    assert all(abs(f - b * scale) <= 2 for f, b in zip(found, [x, y, x + w, y + h])), (found, [x, y, x + w, y + h])
    reader.clean()
    reader = Reader(browser, reports["demo"])
    page = reader.open("#layer-conv2-channel-5")
    data = page.evaluate("JSON.parse(document.getElementById('fv-data').textContent)")
    top = data["layers"]["conv2"]["top"]
    ints = np.frombuffer(base64.b64decode(top["ints"]), f"<i{top['bytes']}").reshape(-1, top["k"], top["n"])[5]
    peaks = [[p[0], None, *p[1:]] for p in ints.tolist() if p[0] >= 0]  # sample, (value), row, col, box, square
    captions = page.eval_on_selector_all("#zoom .tops figcaption .file", "fs => fs.map(f => f.textContent)")
    assert captions == [data["samples"][p[0]] for p in peaks]
    crops = page.eval_on_selector_all("#zoom .tops canvas", f"cs => cs.map({RED_BOX})")
    assert len(crops) == len(peaks) and all(c is not None for c in crops)  # each crop outlines its field
    page.click("#zoom .tops .whole")
    assert "whole" in page.inner_text("#zoom h3")
    _outlined(page, peaks[0][4:8], data["input"][1])
    reader.clean()
