"""budget.py and --max-size: single-file pages within their budget, saying what they left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import read_page
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.cli import main
from featviz_report.render import outputs
from featviz_report.render.html import html_size, inline_size
from featviz_report.render.sidecar import json_text


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))


def _inputs() -> torch.Tensor:
    x = torch.rand(6, 1, 48, 48)  # noise: maps that do not compress away
    x[3] *= 10  # sample 3 peaks in every channel, so it is the most informative
    return x


def _map_samples(page_text: str, layer: str) -> tuple[list[int], list[int]]:
    """(samples with a map image, samples with a left-out note) in one layer's section."""
    section = page_text.split(f'data-layer="{layer}"', 1)[1].split("</section>", 1)[0]
    shown, left_out = [], []
    for part in section.split('<figure class="map')[1:]:
        sample = int(part.split('data-sample="', 1)[1].split('"', 1)[0])
        (left_out if part.startswith(" left-out") else shown).append(sample)
    return shown, left_out


def test_the_size_estimate_is_the_written_size(tmp_path: Path) -> None:
    out = tmp_path / "full.html"
    report = build_report(_model(), _inputs(), out, ReportConfig(max_size=None))
    assert html_size(report) == out.stat().st_size


def test_over_budget_keeps_the_most_informative_samples_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = tmp_path / "full.html"
    report = build_report(_model(), _inputs(), full, ReportConfig(max_size=None))
    maps = sum(inline_size(grid.image) for layer in report.layers for grid in layer.maps if grid)
    fixed = full.stat().st_size - maps
    budget = fixed + 2.5 * maps / len(report.samples)  # room for the maps of two samples, not three
    capsys.readouterr()

    out = tmp_path / "fitted.html"
    fitted = build_report(_model(), _inputs(), out, ReportConfig(max_size=budget / 1e6))
    assert out.stat().st_size <= budget
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "over --max-size" in warning and "--format dir" in warning
    assert "shown for 2 of 6 samples" in warning and "#3" in warning
    text = out.read_text(encoding="utf-8")
    for layer in ("0", "2"):
        shown, left_out = _map_samples(text, layer)
        assert 3 in shown and len(shown) == 2
        assert sorted(shown + left_out) == list(range(6))
    assert any("--max-size" in note for note in fitted.notes) and "over --max-size" in text
    assert len(read_page(out).images) == len(read_page(full).images) - 2 * 4  # 4 samples × 2 layers fewer
    assert fitted.layers[0].stats == report.layers[0].stats  # statistics cover every sample still


def test_a_page_over_budget_makes_its_json_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The abandoned first write stops before the sidecar is made: a large report's JSON takes seconds."""
    made = []
    monkeypatch.setattr(outputs, "json_text", lambda report: made.append(report) or json_text(report))
    out, json_out = tmp_path / "fitted.html", tmp_path / "fitted.json"
    fitted = build_report(_model(), _inputs(), out, ReportConfig(max_size=0.05), json_out=json_out)
    assert len(made) == 1 and made[0].notes == fitted.notes
    assert any("--max-size" in note for note in json.loads(json_out.read_text())["notes"])


def test_folders_and_a_zero_budget_keep_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "site"
    build_report(_model(), _inputs(), folder, ReportConfig(format="dir", max_size=0.001))
    assert "left-out" not in (folder / "index.html").read_text(encoding="utf-8")
    assert main(["--max-size", "0", "-o", str(tmp_path / "demo.html"), "--quiet"]) == 0
    assert "over --max-size" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "lots", "nan"])
def test_a_bad_budget_is_a_one_line_usage_error(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-size", value, "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "--max-size" in err and "Traceback" not in err
