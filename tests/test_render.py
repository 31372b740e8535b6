"""render.py and the page: structure, self-containment, CSP, escaping, folder mode, JSON, atomicity."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyCNN, decode_png, read_page
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.errors import ModelError, OutputError
from featviz_report.render.html import _top_data, script_json
from featviz_report.report_data import ChannelStats, Peaks

CHECKER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_report.py"


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.fixture
def tiny_page(tmp_path: Path, tiny_cnn: TinyCNN) -> Path:
    out = tmp_path / "tiny.html"
    build_report(tiny_cnn, torch.rand(3, 1, 8, 8), out, ReportConfig(quiet=True))
    return out


def test_one_section_and_one_nav_link_per_layer_in_model_order(tiny_page: Path) -> None:
    page = read_page(tiny_page)
    assert [s["data-layer"] for s in page.sections] == ["conv1", "conv2", "head"]
    assert page.nav == [s["id"] for s in page.sections]
    assert all(re.fullmatch(r"layer-[A-Za-z0-9._~@-]+", s["id"]) for s in page.sections)


def test_every_image_is_an_inline_png_with_alt_text(tiny_page: Path) -> None:
    page = read_page(tiny_page)
    assert len(page.images) >= 3 + 3 * 3  # thumbnails + a map per layer and sample
    for img in page.images:
        assert decode_png(img["src"]).size[0] > 0
        assert img["alt"].strip()


def test_csp_forbids_everything_but_hashed_inline_blocks(tiny_page: Path) -> None:
    page = read_page(tiny_page)
    (csp,) = [m["content"] for m in page.metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "img-src data:;" in csp
    (style,) = page.styles
    code = [text for attrs, text in page.scripts if attrs.get("type") != "application/json"]
    assert len(code) == 1
    assert f"style-src {_sha(style)}" in csp and f"script-src {_sha(code[0])}" in csp
    assert " style=" not in page.text  # style attributes would need 'unsafe-inline'
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)


def test_structure_passes_the_shared_checker(tiny_page: Path) -> None:
    if not CHECKER.exists():
        pytest.skip(f"{CHECKER} is not beside this checkout")
    result = subprocess.run(
        [sys.executable, str(CHECKER), str(tiny_page), "--csp", "--expect-layers", "conv1,conv2,head"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class Hostile(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.add_module("<img src=x onerror=alert(1)>", nn.Conv2d(1, 2, 3))
        self.add_module('"><script>alert(2)</script>', nn.Conv2d(2, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def test_names_and_titles_from_the_model_are_escaped_everywhere(tmp_path: Path) -> None:
    out = tmp_path / "x.html"
    config = ReportConfig(quiet=True, title="</title><script>alert(3)</script>", labels=("</script>",))
    build_report(Hostile(), torch.rand(2, 1, 8, 8), out, config)
    page = read_page(out)
    assert "<img src=x" not in page.text and "<script>alert" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert [s["data-layer"] for s in page.sections] == ["<img src=x onerror=alert(1)>", '"><script>alert(2)</script>']
    assert len({s["id"] for s in page.sections}) == 2
    data = [text for attrs, text in page.scripts if attrs.get("type") == "application/json"]
    assert "<" not in data[0] and json.loads(data[0])["layers"]


def test_script_json_cannot_close_its_script_element() -> None:
    text = script_json({"a": "</script><!-- \u2028 & >"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- \u2028 & >"}


def test_folder_mode_writes_content_addressed_images_and_relative_links(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    out = tmp_path / "site"
    build_report(tiny_cnn, torch.rand(2, 1, 8, 8), out, ReportConfig(quiet=True, format="dir"))
    page = read_page(out / "index.html")
    sources = {img["src"] for img in page.images}
    assert sources and all(re.fullmatch(r"img/[0-9a-f]{20}\.png", s) for s in sources)
    for src in sources:
        data = (out / src).read_bytes()
        assert hashlib.sha256(data).hexdigest()[:20] == Path(src).stem
    (csp,) = [m["content"] for m in page.metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert "img-src 'self';" in csp
    assert all(
        img.get("loading") == "lazy" for img in page.images if "sample" in img["alt"] and "channels" in img["alt"]
    )
    build_report(tiny_cnn, torch.rand(2, 1, 8, 8), out, ReportConfig(quiet=True, format="dir"))  # replaces itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_json_sidecar_has_the_same_layers_and_numbers(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    report = build_report(
        tiny_cnn, torch.rand(3, 1, 8, 8), None, ReportConfig(quiet=True), json_out=tmp_path / "r.json"
    )
    data = json.loads((tmp_path / "r.json").read_text())
    assert [layer["name"] for layer in data["layers"]] == [layer.name for layer in report.layers]
    first = data["layers"][0]
    assert set(first) >= {"name", "type", "output_shape", "params", "stats"}
    assert first["output_shape"] == [4, 8, 8] and first["params"] == 4 * 9 + 4
    assert first["stats"]["mean"] == report.layers[0].stats.mean
    assert len(data["samples"]) == 3


def test_refuses_a_folder_whose_index_html_it_did_not_write(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keep.txt").write_text("mine")
    (tmp_path / "docs" / "index.html").write_text("<p>my site</p>")
    with pytest.raises(OutputError, match="holds an index.html that featviz-report did not write"):
        build_report(tiny_cnn, torch.rand(1, 1, 8, 8), tmp_path / "docs", ReportConfig(quiet=True, format="dir"))
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["index.html", "keep.txt"]
    assert (tmp_path / "docs" / "index.html").read_text() == "<p>my site</p>"


def test_a_failing_run_leaves_the_existing_report_untouched(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    out = tmp_path / "r.html"
    out.write_text("previous report")
    with pytest.raises(ModelError, match=r"layer conv1 \(Conv2d\) expects 1 input channels but gets 3"):
        build_report(tiny_cnn, torch.rand(1, 3, 8, 8), out, ReportConfig(quiet=True))  # wrong channel count
    assert out.read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_an_unusable_template_cache_only_means_compiling_again(
    tmp_path: Path, tiny_cnn: TinyCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featviz_report.render import html as render

    (tmp_path / f"_jinja2-cache-{os.getuid()}").write_text("not a folder")  # Jinja2 refuses such a cache
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    render.environment.cache_clear()
    try:
        build_report(tiny_cnn, torch.rand(2, 1, 8, 8), tmp_path / "r.html", ReportConfig())
    finally:
        render.environment.cache_clear()
    assert read_page(tmp_path / "r.html").sections


@pytest.mark.parametrize(("sample", "size"), [(7, 2), (40_000, 4)])
def test_the_enlarged_views_top_samples_travel_as_typed_arrays_wide_enough_for_them(sample: int, size: int) -> None:
    box = np.array([[[3, 4, 9, 12]], [[-1, -1, -1, -1]]])  # rank × channel × 4: one peak, one empty slot
    peaks = Peaks(np.array([[sample], [-1]]), np.array([[2.5], [0.0]]), np.array([[1], [0]]), np.array([[2], [0]]), box)
    stats = ChannelStats((0.0,), (2.5,), (1.0,), (0.5,), (0.0,), peaks)
    top = _top_data(stats, 32, 48)
    assert (top["k"], top["n"], top["bytes"]) == (2, 10, size)
    ints = np.frombuffer(base64.b64decode(top["ints"]), f"<i{size}").reshape(1, 2, 10)  # type: ignore[arg-type]
    assert ints[0, 0].tolist() == [sample, 1, 2, 3, 4, 9, 12, 0, 0, 32] and ints[0, 1, 0] == -1
    assert np.frombuffer(base64.b64decode(top["values"]), "<f4").tolist() == [2.5, 0.0]  # type: ignore[arg-type]
