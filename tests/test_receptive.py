"""Receptive fields from the model: against the textbook recurrence on a conv/pool stack, in a scan of
a generated dataset where the answer is known (where the bright square is), and, where they come from the
gradient, against the real model's autograd support in float64 on random inputs."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from timm.layers import BatchNormAct2d
from timm.layers.activations import Sigmoid as TimmSigmoid
from torch import nn

from featviz_report import ReportConfig
from featviz_report.fields.receptive import FieldUnknown, ReceptiveFields, gradient_boxes
from featviz_report.models.exported import load_exported
from featviz_report.pipelines.scan import scan_dataset
from featviz_report.scan.crops import context_box

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
    assert layers["conv"]["receptive_field_unknown"] == reason and "receptive_field_unknown" not in layers["attn"]
    html = (tmp_path / "s.html").read_text(encoding="utf-8")
    section = html.split('id="layer-conv"')[1].split("</section>")[0]
    assert "Receptive fields unknown: TypeError: cannot pickle &#39;_thread.lock&#39; object." in section
    assert "receptive field (from the model) outlined" not in section  # the cards do not claim one
    torch.manual_seed(0)
    model, calls = Stack().eval(), []
    model.conv1.register_forward_hook(lambda *args: calls.append(1))
    gradient_boxes(model, model.conv2, 0, (1, 40, 40), [(0, 0), (4, 4)])
    assert calls == [] and len(model.conv1._forward_hooks) == 1


# Where the tracer stops (a roll), fields come from the gradient. RULE: a box holds every input pixel the
# position depends on, by autograd on the real model in float64 over random inputs, or there is no box.


class Rolled(nn.Module):
    """conv 3×3 → roll (unknown to the tracer) → conv 3×3 → ``head``, whose fields come from the gradient."""

    def __init__(self, head: nn.Module, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.roll(self.conv1(x), 1, dims=-1)))


class ChannelsFirstNorm(nn.Module):
    """ConvNeXt's layer norm over channels, written out: its channels sum to a constant."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]


class LocalContrast(nn.Module):
    """Flat where the input is flat: an all-ones probe gives it no gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x - F.avg_pool2d(x, 3, 1, 1))


class DeepGate(nn.Module):
    """30 residual adds (a copy that averages with positive weights grows 2^30), then a squeeze-excitation
    gate with timm's Sigmoid (tresnet's): saturated, its float32 gradient is 0 and the gate's path is lost."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(30))
        self.fc, self.gate = nn.Conv2d(channels, channels, 1), TimmSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(x)
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class SpatialTransformer(nn.Module):
    """affine_grid + grid_sample with the transform computed from the maps: where it reads depends on the data."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.loc = nn.Linear(channels, 6)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.loc(x.mean((2, 3))).view(-1, 2, 3), list(x.shape), align_corners=False)
        return self.out(F.grid_sample(x, grid, align_corners=False))


class Deformable(nn.Module):
    """A deformable convolution (torchvision.ops.deform_conv2d) with offsets computed from the maps."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.offset = nn.Conv2d(channels, 18, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torchvision.ops.deform_conv2d(x, self.offset(x) * 3, self.weight, padding=1)


class Detached(nn.Module):
    """Depends on no input pixel: a constant the size of the maps."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + self.bias


SIZE = 24
LOCAL = {  # layers whose every field is a window: the box must be the support's bounding box, exactly
    "softmax over channels": lambda: (Rolled(nn.Softmax(dim=1)), "head"),
    "Softmax2d": lambda: (Rolled(nn.Softmax2d()), "head"),
    "channels-first layer norm": lambda: (Rolled(ChannelsFirstNorm(4)), "head"),
    "local contrast": lambda: (Rolled(LocalContrast()), "head"),
    "dilated max pool": lambda: (Rolled(nn.MaxPool2d(3, 1, 1, dilation=2)), "head"),
    "dilated max pool, ceil mode": lambda: (Rolled(nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True)), "head"),
    "timm BatchNormAct2d's act": lambda: (Rolled(BatchNormAct2d(4)), "head.act"),
}  # fmt: skip
WHOLE = {  # every position reads (or may read) the whole image
    "saturated SE gate (timm Sigmoid)": lambda: (Rolled(DeepGate()), "head"),
    "grid_sample (spatial transformer)": lambda: (Rolled(SpatialTransformer()), "head"),
    "deform_conv2d": lambda: (Rolled(Deformable()), "head"),
}


def autograd_support(
    model: nn.Module, layer: str, inputs: torch.Tensor, positions: list[tuple[int, int]]
) -> dict[tuple[int, int], tuple[int, int, int, int] | None]:
    """Each position's bounding box of the input pixels where d(any channel at the position)/d(input) is not
    zero for any of ``inputs``, on the real model in float64 (None: no pixel)."""
    model = copy.deepcopy(model).double().eval()
    x = inputs.double().requires_grad_(True)
    outputs: list[torch.Tensor] = []
    dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, out: outputs.append(out))
    model(x)
    found = {}
    for r, c in positions:
        reached = torch.zeros(x.shape[-2:], dtype=torch.bool)
        for channel in range(outputs[0].shape[1]):  # every input has its own slot: one backward for all
            (grad,) = torch.autograd.grad(outputs[0][:, channel, r, c].sum(), x, retain_graph=True, allow_unused=True)
            if grad is not None:
                reached |= grad.ne(0).any(1).any(0)
        ys, xs = torch.nonzero(reached, as_tuple=True)
        found[(r, c)] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(ys) else None
    return found


def _gradient_fields(model: nn.Module, layer: str) -> tuple[dict, dict, list[tuple[int, int]]]:
    """The fields of ``layer`` given by the gradient for every position, and the real support of some."""
    torch.manual_seed(0)
    model.eval()
    module = dict(model.named_modules())[layer]
    sample = torch.rand(1, 3, SIZE, SIZE)
    fields = ReceptiveFields.traced_on(model, sample)
    assert fields.traced.get((module, 0)) is None  # the gradient's case, not the tracer's
    maps: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: maps.append(out))
    with torch.no_grad():
        model(sample)
    handle.remove()
    h, w = maps[0].shape[-2:]
    boxes = fields.boxes(module, 0, [(r, c) for r in range(h) for c in range(w)])
    checked = sorted({(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2), (1, w // 3), (h - 2, 2)})
    inputs = torch.cat([sample, torch.randn(3, 3, SIZE, SIZE), 20 * torch.randn(1, 3, SIZE, SIZE)])
    return boxes, autograd_support(model, layer, inputs, checked), checked


@pytest.mark.parametrize("case", sorted(LOCAL))
def test_gradient_fields_hold_every_pixel_autograd_finds_and_no_more(case: str) -> None:
    boxes, support, checked = _gradient_fields(*LOCAL[case]())
    for p in checked:
        assert support[p] is not None
        assert boxes[p] == support[p], p
    assert all(x1 > x0 and y1 > y0 for x0, y0, x1, y1 in boxes.values())  # an empty support is never a box


@pytest.mark.parametrize("case", sorted(WHOLE))
def test_data_dependent_and_global_fields_are_the_whole_image(case: str) -> None:
    boxes, support, checked = _gradient_fields(*WHOLE[case]())
    assert set(boxes.values()) == {(0, 0, SIZE, SIZE)}
    for p in checked:  # what autograd finds lies inside, trivially; it is not always the whole image
        assert support[p] is not None


def test_a_position_that_reads_no_pixel_has_no_box_and_says_why() -> None:
    model = Rolled(Detached()).eval()
    fields = ReceptiveFields.traced_on(model, torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(FieldUnknown, match=r"^the gradient at row 3, column 4 reaches no input pixel$"):
        fields.boxes(model.head, 0, [(3, 4), (5, 5)])
    assert autograd_support(model, "head", torch.randn(2, 3, SIZE, SIZE), [(3, 4)]) == {(3, 4): None}


def test_a_fixed_batch_export_is_probed_in_its_batch(tmp_path: Path) -> None:
    """An export for batches of exactly 1 refuses the probe's usual 16 slots: it gets boxes all the same,
    the eager model's."""
    torch.manual_seed(0)
    model = Rolled(nn.MaxPool2d(3, 2, 1, dilation=2)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 32, 32),)), tmp_path / "m.pt2")
    exported = load_exported(tmp_path / "m.pt2")
    assert exported.batch == 1
    with pytest.raises(RuntimeError, match="to be equal to 1"):
        exported.module(torch.randn(2, 3, 32, 32))
    sample = torch.rand(1, 3, 32, 32)
    head = dict(exported.module.named_modules())["head"]
    positions = [(r, c) for r in range(15) for c in range(15)]
    boxes = ReceptiveFields.traced_on(exported.module, sample).boxes(head, 0, positions)
    assert boxes == ReceptiveFields.traced_on(model, sample).boxes(model.head, 0, positions)
    support = autograd_support(model, "head", torch.randn(2, 3, 32, 32), [(0, 0), (7, 9), (14, 14)])
    assert {p: boxes[p] for p in support} == support
