"""Random weights are said: a torchvision or timm spec without --weights warns once on stderr, marks the
page's header and the JSON, and marks every prediction meaningless (reports, comparisons, scans, the API);
with --weights none of this appears."""

from __future__ import annotations

import contextlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import torchvision

from featviz_report import ReportConfig, build_report
from featviz_report.cli import main
from featviz_report.models.resolve import load_model

PHOTOS = Path(__file__).resolve().parents[1] / "samples" / "photos"
SMALL = ["--model", "torchvision:squeezenet1_1", "--input-size", "64", "--no-graph", "--quiet"]
LAYERS = ["--layers", "features.0", "classifier.1"]
MARK = "random weights: predictions are meaningless"


class _Marks(HTMLParser):
    """The texts a reader sees where a page names classes: the header, every sample's button, the captions
    of the Grad-CAM images (``cams``) and of the feature maps (``maps``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.header = ""
        self.buttons: list[str] = []
        self.cams: list[str] = []
        self.maps: list[str] = []
        self._section = ""  # the aria-labelledby of the block being read
        self._open: list[tuple[str, list[str]]] = []  # (tag, text pieces) of the elements being read

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = a.get("aria-labelledby", "")
        if (
            (tag == "header" and a.get("class") == "top")
            or (tag == "button" and "sample" in a.get("class", "").split())
            or tag == "figcaption"
        ):
            self._open.append((tag, []))

    def handle_data(self, data: str) -> None:
        for _, pieces in self._open:
            pieces.append(data)

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            return
        _, pieces = self._open.pop()
        text = " ".join(" ".join(pieces).split())
        if tag == "header":
            self.header = text
        elif tag == "button":
            self.buttons.append(text)
        elif self._section == "cam-title":
            self.cams.append(text)
        elif text.startswith("Sample "):
            self.maps.append(text)


def _marks(page: Path) -> _Marks:
    reader = _Marks()
    reader.feed(page.read_text(encoding="utf-8"))
    return reader


def _run(argv: list[str]) -> str:
    """``main(argv)``, which must succeed; its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 0
    return err.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """A small torchvision model's report without and with --weights, its comparison with a checkpoint, its
    scan: each page (its JSON beside it) with what the run printed on stderr."""
    root = tmp_path_factory.mktemp("random")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        torch.save(torchvision.models.squeezenet1_1().state_dict(), root / "b.pth")
    runs = {
        "random": [*SMALL, *LAYERS, "--samples", str(PHOTOS), "--cam", "gradcam"],
        "weights": [*SMALL, *LAYERS, "--samples", str(PHOTOS), "--cam", "gradcam", "--weights", str(root / "b.pth")],
        "compare": [*SMALL, *LAYERS, "--samples", str(PHOTOS), "--compare", str(root / "b.pth")],
        "scan": ["scan", str(PHOTOS), *SMALL, "--layers", "features.0", "--top-k", "2"],
    }
    out = {}
    for name, argv in runs.items():
        page = root / f"{name}.html"
        out[name] = (page, _run([*argv, "-o", str(page), "--json", str(page.with_suffix(".json"))]))
    return out


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "random weights" in line]


def test_a_spec_without_weights_warns_once_marks_the_header_and_the_json(built: dict[str, tuple[Path, str]]) -> None:
    page, stderr = built["random"]
    assert _warnings(stderr) == [
        "featviz-report: warning: random weights: torchvision squeezenet1_1 runs on an untrained random "
        "initialisation (no --weights), so its predictions are meaningless"
    ]
    header = _marks(page).header
    assert "Weights random" in header
    assert "Random weights: torchvision squeezenet1_1 runs on an untrained random initialisation" in header
    assert json.loads(page.with_suffix(".json").read_text())["weights"] == "random"


def test_every_prediction_of_random_weights_is_marked_meaningless(built: dict[str, tuple[Path, str]]) -> None:
    page, _ = built["random"]
    marks = _marks(page)
    photos = len(list(PHOTOS.iterdir()))
    assert len(marks.buttons) == photos and all(f"% {MARK}" in text for text in marks.buttons)
    assert len(marks.cams) == photos and all(c.endswith(MARK) for c in marks.cams)  # the class Grad-CAM explains
    assert len(marks.maps) == 2 * photos and all(c.endswith(f"%) {MARK}") for c in marks.maps)  # two layers
    assert f'title="{MARK}\n' in page.read_text(encoding="utf-8")  # the top classes' tooltip


def test_with_weights_nothing_says_random(built: dict[str, tuple[Path, str]]) -> None:
    page, stderr = built["weights"]
    assert _warnings(stderr) == []
    text = page.read_text(encoding="utf-8")
    assert MARK not in text and 'id="random-weights"' not in text
    marks = _marks(page)
    assert "Weights" not in marks.header and "andom" not in marks.header
    assert len(marks.buttons) == len(list(PHOTOS.iterdir())) and all("%" in b for b in marks.buttons)
    assert json.loads(page.with_suffix(".json").read_text())["weights"] is None


def test_a_comparison_marks_a_random_a_and_not_b(built: dict[str, tuple[Path, str]]) -> None:
    page, stderr = built["compare"]
    assert _warnings(stderr) == [
        "featviz-report: warning: random weights: A (the model's own weights, torchvision squeezenet1_1) runs on "
        "an untrained random initialisation (no --weights), so A's predictions are meaningless"
    ]
    marks = _marks(page)
    assert "Weights A: random" in marks.header and "A's predictions are meaningless" in marks.header
    for button in marks.buttons:  # B's prediction first, unmarked; then A's, marked
        b_part, a_part = button.split(" A: ")
        assert MARK not in b_part and a_part.endswith(MARK)
    cams_a = [c for c in marks.cams if c.startswith("A ")]
    cams_b = [c for c in marks.cams if c.startswith("B ")]
    assert len(cams_a) == len(cams_b) == len(marks.buttons)
    assert cams_a and all(c.endswith(MARK) for c in cams_a)
    assert cams_b and not any(MARK in c for c in cams_b)
    assert json.loads(page.with_suffix(".json").read_text())["weights"] == "random"


def test_a_scan_says_so_too(built: dict[str, tuple[Path, str]]) -> None:
    page, stderr = built["scan"]
    assert _warnings(stderr) == [
        "featviz-report: warning: random weights: torchvision squeezenet1_1 runs on an untrained random "
        "initialisation (no --weights), so its channels respond as no trained model's would"
    ]
    header = _marks(page).header
    assert "Weights random" in header and "show an untrained network." in header and "predictions" not in header
    assert json.loads(page.with_suffix(".json").read_text())["weights"] == "random"


def test_the_api_marks_what_its_config_says_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = torchvision.models.squeezenet1_1()
    name = "<img src=x onerror=alert(1)>"
    config = ReportConfig(model_name=name, random_weights=True, layers=("classifier.1",), graph=False)
    report = build_report(model, torch.rand(2, 3, 64, 64), tmp_path / "r.html", config)
    assert report.random_weights
    assert f"random weights: {name} runs on an untrained" in capsys.readouterr().err
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert name not in text and "Random weights:</b> &lt;img src=x onerror=alert(1)&gt; runs" in text
    plain = build_report(model, torch.rand(2, 3, 64, 64), None, ReportConfig(layers=("classifier.1",), graph=False))
    assert not plain.random_weights and "random weights" not in capsys.readouterr().err


def test_specs_know_whether_their_weights_are_random(tmp_path: Path) -> None:
    assert load_model("torchvision:squeezenet1_1").random_weights
    torch.save(torchvision.models.squeezenet1_1().state_dict(), tmp_path / "w.pth")
    assert not load_model("torchvision:squeezenet1_1", tmp_path / "w.pth").random_weights
    assert not load_model(None).random_weights  # the demo ships trained weights
    pytest.importorskip("timm")
    assert load_model("timm:resnet10t").random_weights
