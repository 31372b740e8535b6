"""Receptive fields from the model: against the textbook recurrence on a conv/pool stack, and in a scan of
a generated dataset where the answer is known (where the bright square is)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featviz_report import ReportConfig
from featviz_report.crops import context_box
from featviz_report.receptive import ReceptiveFields, gradient_boxes
from featviz_report.scan_pipeline import scan_dataset

# (kernel, stride, padding, dilation) of each layer of Stack, in order
GEOMETRY = [(3, 1, 1, 1), (2, 2, 0, 1), (5, 2, 2, 1), (3, 1, 2, 2)]


class Stack(nn.Module):
    """conv 3×3 → ReLU → max pool 2 → conv 5×5 stride 2 → BatchNorm → conv 3×3 dilation 2, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 5, stride=2, padding=2)
        self.norm = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 3, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.norm(self.conv2(self.pool(self.act(self.conv1(x))))))


def textbook(position: int, layers: list[tuple[int, int, int, int]], size: int) -> tuple[int, int]:
    """[start, end) of a position's field: each layer's window (kernel, stride, padding, dilation) followed
    back from the position as a set of pixels, keeping only real ones (padding reads nothing)."""
    sizes = [size]
    for kernel, stride, padding, dilation in layers:
        sizes.append((sizes[-1] + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)
    reads = {position}
    for (kernel, stride, padding, dilation), below in zip(reversed(layers), reversed(sizes[:-1])):
        reads = {i * stride - padding + dilation * t for i in reads for t in range(kernel)} & set(range(below))
    return min(reads), max(reads) + 1


@pytest.mark.parametrize("method", ["traced", "gradient"])
@pytest.mark.parametrize(("layer", "depth"), [("conv1", 1), ("pool", 2), ("conv2", 3), ("conv3", 4)])
def test_every_positions_field_matches_the_textbook_recurrence(layer: str, depth: int, method: str) -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    size = 40
    with torch.no_grad():
        h = model.conv1(torch.zeros(1, 1, size, size))
        for name in ("act", "pool", "conv2", "norm", "conv3")[: [1, 3, 4, 6][depth - 1] - 1]:
            h = getattr(model, name)(h)
    positions = [(r, c) for r in range(h.shape[2]) for c in range(h.shape[3])]
    if method == "gradient":
        boxes = gradient_boxes(model, getattr(model, layer), 0, (1, size, size), positions)
    else:
        fields = ReceptiveFields.traced_on(model, torch.zeros(1, 1, size, size))
        assert fields.traced[(getattr(model, layer), 0)] is not None
        boxes = fields.boxes(getattr(model, layer), 0, positions)
    for (r, c), (x0, y0, x1, y1) in boxes.items():
        assert (x0, x1) == textbook(c, GEOMETRY[:depth], size), (layer, r, c)
        assert (y0, y1) == textbook(r, GEOMETRY[:depth], size), (layer, r, c)
    assert not any(m.training for m in model.modules())  # the model itself is untouched (a copy is probed)


class BlobFinder(nn.Module):
    """conv1: one 3×3 all-ones filter (a bright 3×3 square excites it most), then a 5×5 one on top."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(1, 1, 5, padding=2, bias=False)
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv2.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)).mean((2, 3))


def test_scan_boxes_are_the_true_field_of_the_peak_and_land_on_the_pattern(tmp_path: Path) -> None:
    """Black images with one bright 3×3 square each: every top image's box is the field of its peak by
    the recurrence, and it covers the square; the crop around it shows at least twice the field."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "squares"
    folder.mkdir()
    squares = {}
    for i in range(12):
        y, x = (int(v) for v in rng.integers(4, 44, 2))
        pixels = np.zeros((48, 48), np.uint8)
        pixels[y : y + 3, x : x + 3] = 255 - 10 * i  # distinct brightness: a strict ranking
        Image.fromarray(pixels).save(folder / f"square-{i:02d}.png")
        squares[f"square-{i:02d}.png"] = (x, y)
    config = ReportConfig(input_size=48, normalize="none", top_k=3, graph=False, loader_workers=0)
    scan_dataset(BlobFinder(), [folder], tmp_path / "s.html", config, json_out=tmp_path / "s.json")
    layers = {layer["name"]: layer for layer in json.loads((tmp_path / "s.json").read_text())["layers"]}
    for name, geometry in (("conv1", [(3, 1, 1, 1)]), ("conv2", [(3, 1, 1, 1), (5, 1, 2, 1)])):
        top = layers[name]["channels"]["top"][0]
        assert [entry["file"] for entry in top] == ["square-00.png", "square-01.png", "square-02.png"]
        for entry in top:
            x0, y0, x1, y1 = entry["box"]
            assert (x0, x1) == textbook(entry["col"], geometry, 48) and (y0, y1) == textbook(entry["row"], geometry, 48)
            x, y = squares[entry["file"]]
            assert x0 <= x + 1 < x1 and y0 <= y + 1 < y1  # the peak's field covers the square's centre
            top_, left, side = context_box(entry["box"], 48, 48)
            assert side >= max(32, 2 * max(x1 - x0, y1 - y0)) or side == 48
            assert left <= x0 and x1 <= left + side and top_ <= y0 and y1 <= top_ + side
    html = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert "receptive field (from the model) outlined" in html
    for name in ("conv1", "conv2"):  # every shown channel has its card, its link and its top files
        card = html.split(f'id="layer-{name}-channel-0"')[1].split("</article>")[0]
        assert f'href="#layer-{name}-channel-0"' in card
        assert all(f">{entry['file']}<" in card for entry in layers[name]["channels"]["top"][0])


class Locked(nn.Module):
    """A model that cannot be deep-copied (it holds a lock) and whose first step the tracer does not know
    (a roll), with an attention layer after a convolution: its fields can come only from the gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.conv(torch.roll(x, 1, dims=-1)).flatten(2).transpose(1, 2)
        return self.attn(seq, seq, seq)[0].mean(1)


def test_a_scan_stands_when_fields_cannot_be_computed_and_user_hooks_never_see_the_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    config = ReportConfig(input_size=16, layers=("conv", "attn"), graph=False, loader_workers=0, quiet=False)
    scan_dataset(Locked(), [folder], tmp_path / "s.html", config, json_out=tmp_path / "s.json")
    layers = {layer["name"]: layer for layer in json.loads((tmp_path / "s.json").read_text())["layers"]}
    assert all("box" not in entry for channel in layers["conv"]["channels"]["top"] for entry in channel)
    assert all("box" not in entry for channel in layers["attn"]["channels"]["top"] for entry in channel)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "receptive fields" in line]
    reason = "TypeError: cannot pickle '_thread.lock' object"
    assert warnings == [
        f"featviz-report: warning: no receptive fields for 'conv' ({reason}); its top images are shown whole"
    ]
    torch.manual_seed(0)
    model, calls = Stack().eval(), []
    model.conv1.register_forward_hook(lambda *args: calls.append(1))
    gradient_boxes(model, model.conv2, 0, (1, 40, 40), [(0, 0), (4, 4)])
    assert calls == [] and len(model.conv1._forward_hooks) == 1


def test_a_scan_over_its_budget_leaves_out_the_whole_images_first_and_keeps_the_crops(tmp_path: Path) -> None:
    folder = tmp_path / "noise"
    folder.mkdir()
    for i in range(6):  # noise compresses badly: the whole images weigh
        noise = np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"{i}.png")
    config = ReportConfig(input_size=48, normalize="none", top_k=3, graph=False, loader_workers=0, max_size=None)
    scan_dataset(BlobFinder(), [folder], tmp_path / "full.html", config)
    full = (tmp_path / "full.html").read_text(encoding="utf-8")
    wholes = full[full.index('<div class="wholes"') :].split("</div>")[0]
    assert wholes.count("<img") >= 3 and full.count('class="whole"') == 6  # 2 layers × 3 top images
    budget = (len(full.encode()) - len(wholes.encode()) // 2) / 1e6
    scan_dataset(BlobFinder(), [folder], tmp_path / "cut.html", dataclasses.replace(config, max_size=budget))
    cut = (tmp_path / "cut.html").read_text(encoding="utf-8")
    assert len(cut.encode()) <= budget * 1e6
    assert 'class="wholes"' not in cut and 'class="whole"' not in cut and "whole images behind the crops" in cut
    assert cut.count('<figure><img src="data:image/png') == full.count('<button type="button" class="whole"')
