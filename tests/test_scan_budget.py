"""scan_budget.py: a scan's pages stay within their crops and bytes, whatever the dataset, and say what is left out."""

from __future__ import annotations

import html as markup
import json
import subprocess
import sys
from pathlib import Path

import pytest

from featviz_report import scan_dataset
from featviz_report.render.html import html_size, inline_size
from featviz_report.scan import budget as scan_budget
from tests.test_scan_sources import TwoConvs, config, noise_folder, sources_and_crops

CHECKER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_report.py"


def _warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("featviz-report: warning:")]


@pytest.mark.parametrize(
    ("crops", "shown", "said"),
    [
        (10, [1, 1], "each channel's top 1 of its 3 top images, to stay within its budget of 10 crops"),
        (14, [2, 1], "each channel's top 1 of its 3 top images, and 2 in the first layer conv1, to stay within"),
    ],
)
def test_a_one_file_page_shows_at_most_its_crops_best_ranks_first_and_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    crops: int,
    shown: list[int],
    said: str,
) -> None:
    monkeypatch.setattr(scan_budget, "PAGE_CROPS", crops)
    monkeypatch.setattr(scan_budget, "CROPS_PER_KB", 0)
    folder = noise_folder(tmp_path / "noise", 12)
    report = scan_dataset(TwoConvs(), [folder], tmp_path / "s.html", config(), json_out=tmp_path / "s.json")
    assert report is not None
    assert [max(len(card.tops) for card in layer.cards) for layer in report.layers] == shown
    assert all(card.left_out == 3 - len(card.tops) for layer in report.layers for card in layer.cards)
    html = markup.unescape((tmp_path / "s.html").read_text(encoding="utf-8"))
    assert html.count("<figure><button") == 4 * sum(shown) <= crops
    assert said in html and html.count(f"+{3 - shown[1]} more not on this page") >= 4
    assert set(sources_and_crops(html)[0]) == {
        top.sample for layer in report.layers for c in layer.cards for top in c.tops
    }
    warnings = _warnings(capsys)
    assert len(warnings) == 1 and said in warnings[0] and "feature maps" not in warnings[0]
    layers = json.loads((tmp_path / "s.json").read_text())["layers"]
    assert all(len(top) == 3 for layer in layers for top in layer["channels"]["top"][:4])  # the JSON keeps all


def test_a_one_file_pages_pictures_count_against_its_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every KB of inline pictures costs Chromium what CROPS_PER_KB crops do: many distinct images, fewer crops."""
    monkeypatch.setattr(scan_budget, "PAGE_CROPS", 2 * 4 * 3)  # every crop of 2 layers × 4 channels × top 3
    monkeypatch.setattr(scan_budget, "CROPS_PER_KB", 1)
    folder = noise_folder(tmp_path / "noise", 12)
    report = scan_dataset(TwoConvs(), [folder], tmp_path / "s.html", config())
    assert report is not None and report.dataset is not None
    shown = sum(len(card.tops) for layer in report.layers for card in layer.cards)
    pictures = sum(inline_size(source.picture) for source in report.dataset.sources.values())
    assert 0 < shown < 24 and shown + pictures / 1000 <= 24
    assert "to stay within its budget of 24 crops (1 a KB of pictures)" in _warnings(capsys)[0]


def test_a_one_file_page_stays_within_max_size_however_many_images_were_scanned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Noise images each a top image once: the pictures grow with the dataset, the page does not."""
    folder = noise_folder(tmp_path / "few", 24)
    report = scan_dataset(TwoConvs(), [folder], tmp_path / "few.html", config(top_k=8, max_size=None))
    assert report is not None and len(report.dataset.sources) >= 16  # type: ignore[union-attr]
    budget = (tmp_path / "few.html").stat().st_size * 0.6
    for count in (24, 96):
        folder = noise_folder(tmp_path / f"noise-{count}", count)
        page = tmp_path / f"s-{count}.html"
        fitted = scan_dataset(TwoConvs(), [folder], page, config(top_k=8, max_size=budget / 1e6))
        assert fitted is not None and page.stat().st_size <= budget and html_size(fitted) == page.stat().st_size
        assert "to stay within --max-size " in page.read_text(encoding="utf-8")
    warnings = _warnings(capsys)
    assert len(warnings) == 2 and all("--max-size" in w and "feature maps" not in w for w in warnings)


def test_a_one_file_page_stays_within_its_own_budget_whatever_max_size_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = noise_folder(tmp_path / "noise", 48)
    scan_dataset(TwoConvs(), [folder], tmp_path / "full.html", config(top_k=8, max_size=None))
    budget = int((tmp_path / "full.html").stat().st_size * 0.6)
    monkeypatch.setattr(scan_budget, "PAGE_BYTES", budget)
    for max_size in (None, 64.0):
        scan_dataset(TwoConvs(), [folder], tmp_path / "s.html", config(top_k=8, max_size=max_size))
        assert (tmp_path / "s.html").stat().st_size <= budget
        assert f"to stay within its budget of {budget / 1e6:g} MB" in _warnings(capsys)[0]


def test_a_page_over_max_size_with_no_top_images_left_says_so_in_a_scans_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = noise_folder(tmp_path / "noise", 6)
    scan_dataset(TwoConvs(), [folder], tmp_path / "s.html", config(max_size=0.001))
    html = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert "<figure><button" not in html and "Its 3 top images not on this page" in html
    said = " ".join(_warnings(capsys))
    assert "its channel cards alone take that" in said and "feature maps" not in said and "feature maps" not in html


def test_a_folder_is_an_index_and_a_page_per_layer_none_over_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = noise_folder(tmp_path / "noise", 12)
    scan_dataset(TwoConvs(), [folder], tmp_path / "full", config(format="dir"))
    largest = max(p.stat().st_size for p in (tmp_path / "full").glob("layer-*.html"))
    assert _warnings(capsys) == []
    monkeypatch.setattr(scan_budget, "LAYER_PAGE_BYTES", largest - 1)
    report = scan_dataset(TwoConvs(), [folder], tmp_path / "site", config(format="dir"))
    assert report is not None
    site = tmp_path / "site"
    files = [p for p in site.rglob("*") if p.is_file()]
    assert all(p.stat().st_size <= largest - 1 for p in files), [(p.name, p.stat().st_size) for p in files]
    cut = [layer.name for layer in report.layers if any(card.left_out for card in layer.cards)]
    assert cut and all(len(card.tops) >= 1 for layer in report.layers for card in layer.cards)
    assert (
        f"to stay within a layer page's budget of {scan_budget.PAGE_CROPS:,} crops and {(largest - 1) / 1e6:g} MB"
        in _warnings(capsys)[0]
    )
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="layer-conv1.html"' in index and 'id="layer-conv1-channel-3"' in index  # addresses still land
    if CHECKER.exists():  # the shared structure checker, where it is beside this checkout
        checked = subprocess.run([sys.executable, str(CHECKER), str(site / "index.html"), "--csp"], capture_output=True)
        assert checked.returncode == 0, checked.stdout
    for layer in report.layers:
        page = (site / f"layer-{layer.slug}.html").read_text(encoding="utf-8")
        assert page.count('<section id="layer-') == 1 and f'id="layer-{layer.slug}-channel-0"' in page


def test_a_report_without_a_page_keeps_every_top_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_budget, "PAGE_CROPS", 1)  # the budget is a page's: no page, nothing left out
    folder = noise_folder(tmp_path / "noise", 6)
    report = scan_dataset(TwoConvs(), [folder], None, config(), json_out=tmp_path / "s.json")
    assert report is not None
    assert all(len(card.tops) == 3 and card.left_out == 0 for layer in report.layers for card in layer.cards)
