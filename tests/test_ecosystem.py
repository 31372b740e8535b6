"""Models as people keep them: timm architectures, .safetensors weights, multi-head outputs, notebooks."""

from __future__ import annotations

import html
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TinyCNN
from safetensors.torch import save_file

from featviz_report import ReportConfig, build_report
from featviz_report.cli import main
from featviz_report.models.resolve import load_model, load_state_dict


def test_timm_models_bring_their_input_size_normalisation_and_class_names(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("timm")
    loaded = load_model("timm:mobilenetv3_small_050")  # an architecture no other test uses
    assert loaded.input_size == 224 and loaded.normalize is not None and loaded.normalize.count(",") == 5
    assert loaded.labels is not None and len(loaded.labels) == 1000 and loaded.labels[1] == "goldfish"
    out, sidecar = tmp_path / "r.html", tmp_path / "r.json"
    argv = ["--model", "timm:mobilenetv3_small_050", "--samples", str(image_folder), "--no-graph"]
    assert main([*argv, "--max-channels", "4", "-o", str(out), "--json", str(sidecar), "--quiet"]) == 0
    data = json.loads(sidecar.read_text())
    assert data["input_shape"] == [3, 224, 224] and not data["samples"][0]["prediction"]["label"].startswith("class")
    capsys.readouterr()


def test_a_missing_timm_model_suggests_names() -> None:
    pytest.importorskip("timm")
    from featviz_report.errors import ModelError

    with pytest.raises(ModelError, match="did you mean"):
        load_model("timm:resnet_18")


def test_safetensors_and_torch_weights_give_the_same_report(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    state = {k: v.clone() + 0.5 for k, v in tiny_cnn.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    a, b = load_state_dict(tmp_path / "w.pt"), load_state_dict(tmp_path / "w.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 1, 8, 8)
    reports = []
    for name in ("w.pt", "w.safetensors"):
        model = TinyCNN()
        model.load_state_dict(load_state_dict(tmp_path / name))
        reports.append(build_report(model, x, tmp_path / f"{name}.html", ReportConfig(quiet=True)))
    assert (tmp_path / "w.pt.html").read_bytes() == (tmp_path / "w.safetensors.html").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 12)
    from featviz_report.errors import ModelError

    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_state_dict(tmp_path / "bad.safetensors")


HEADS = """
import torch
from torch import nn

class FaceNet(nn.Module):
    # one trunk, three heads: box (4), identity (5 people), face or not (2)
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Conv2d(3, 8, 3)
        self.box = nn.Linear(8, 4)
        self.who = nn.Linear(8, 5)
        self.face = nn.Linear(8, 2)
    def forward(self, x):
        f = self.trunk(x).mean((2, 3))
        return self.box(f), self.who(f), self.face(f)

def build():
    return FaceNet()
"""


def test_a_multi_head_network_labels_the_head_it_is_told_to_use(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "facenet.py").write_text(textwrap.dedent(HEADS))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "people.txt").write_text("ada\nalan\ngrace\nkatherine\nlinus\n")
    argv = ["--model", "facenet:build", "--samples", str(image_folder), "--input-size", "16", "--quiet"]
    assert main([*argv, "--labels", str(tmp_path / "people.txt"), "--output", "1", "-o", str(tmp_path / "r.html"),
                 "--json", str(tmp_path / "r.json"), "--cam", "gradcam"]) == 0  # fmt: skip
    samples = json.loads((tmp_path / "r.json").read_text())["samples"]
    assert all(s["prediction"]["label"] in {"ada", "alan", "grace", "katherine", "linus"} for s in samples)
    assert main([*argv, "-o", str(tmp_path / "guess.html"), "--json", str(tmp_path / "guess.json")]) == 0
    assert all(s["prediction"] is None for s in json.loads((tmp_path / "guess.json").read_text())["samples"])
    assert "--output" in capsys.readouterr().err


def test_a_report_displays_itself_in_a_notebook(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    out = tmp_path / "r.html"
    report = build_report(tiny_cnn, torch.rand(2, 1, 8, 8), out, ReportConfig(quiet=True, title="<b>t</b>"))
    shown = report._repr_html_()
    assert shown.startswith('<iframe sandbox="allow-scripts" srcdoc="') and "allow-same-origin" not in shown
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', shown).group(1))  # type: ignore[union-attr]
    assert srcdoc == out.read_text(encoding="utf-8"), "the frame holds the very page that was written"
    assert "<b>t</b>" not in shown.split("srcdoc=")[0] and str(out.as_posix()) in shown
    unwritten = build_report(tiny_cnn, torch.rand(2, 1, 8, 8), None, ReportConfig(quiet=True))
    assert "The full report" not in unwritten._repr_html_()


def test_a_big_report_is_cut_to_fit_the_notebook(tiny_cnn: TinyCNN) -> None:
    from featviz_report.render.notebook import notebook_html

    report = build_report(tiny_cnn, torch.rand(64, 1, 8, 8), None, ReportConfig(quiet=True))
    full = notebook_html(report, max_mb=100)
    small = notebook_html(report, max_mb=len(full) / 2e6)
    assert len(small) < len(full) and "Shown in the notebook within" in small


def test_a_notebook_cell_stays_within_its_budget_down_to_the_first_layers_and_show_full_has_everything(
    tmp_path: Path, tiny_cnn: TinyCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featviz_report.render.budget import fit_page
    from featviz_report.render.notebook import notebook_html

    monkeypatch.chdir(tmp_path)
    report = build_report(tiny_cnn, torch.rand(64, 1, 8, 8), tmp_path / "r.html", ReportConfig(quiet=True))
    full = report.show(full=True)._repr_html_()
    assert "Shown in the notebook" not in full and full == report._repr_html_()  # 0.5 MB: within 2 MB, whole
    no_maps = len(notebook_html(fit_page(report, 1)[0], max_mb=100))  # every map left out: the floor of that way
    for budget in (no_maps * 0.7, len(full) / 2):
        cell = notebook_html(report, report.location, max_mb=budget / 1e6)
        assert len(cell) <= budget and "Shown in the notebook within" in cell
    cut = notebook_html(report, max_mb=no_maps * 0.7 / 1e6)
    assert re.search(rf"the first [12] of {len(report.layers)} layers", cut)
    assert 'href="r.html"' in report._repr_html_()  # relative to the notebook's folder, where a server finds it
