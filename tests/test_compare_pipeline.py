"""Model review: Grad-CAM against a model whose right answer is known, and two checkpoints compared."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyCNN, hooks_left, read_page
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.capture.changes import ranked_layers
from featviz_report.capture.gradcam import class_activation_maps
from featviz_report.cli import main
from featviz_report.errors import ModelError, UsageError
from featviz_report.pipelines.compare import compare_checkpoints

SIZE = 16


class Halves(nn.Module):
    """Class 0 is decided by the left half of the image, class 1 by the right half.

    ``split`` copies the image into two channels, one holding only the left half and one only the
    right; ``conv`` (the Grad-CAM layer) passes each through; the logits are the channels' means.
    """

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 2, SIZE, SIZE)
        mask[:, 0, :, : SIZE // 2] = 1
        mask[:, 1, :, SIZE // 2 :] = 1
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(2, 2, 1, groups=2)
        self.relu = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x * self.mask)).mean((2, 3))


def _two_blobs(left: float, right: float) -> torch.Tensor:
    x = torch.zeros(1, 1, SIZE, SIZE)
    x[..., 5:9, 1:5] = left  # a blob in the left half
    x[..., 9:13, 11:15] = right  # and one in the right half
    return x


def _mass(cam: np.ndarray) -> tuple[float, float]:
    """Fraction of the map in the left blob's box and in the right blob's box."""
    total = float(cam.sum())
    return float(cam[5:9, 1:5].sum()) / total, float(cam[9:13, 11:15].sum()) / total


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_the_map_lights_up_the_region_that_decides_the_class(method: str) -> None:
    model = Halves()
    x = torch.cat([_two_blobs(1.0, 0.5), _two_blobs(0.5, 1.0)])
    top = class_activation_maps(model, "conv", x, method=method)
    assert top.targets == (0, 1)  # the brighter blob wins
    assert _mass(top.maps[0])[0] > 0.9 and _mass(top.maps[1])[1] > 0.9
    asked = class_activation_maps(model, "conv", x, target=1, method=method)
    assert asked.targets == (1, 1)
    assert _mass(asked.maps[0])[1] > 0.9  # class 1 is about the right half, whatever wins
    assert all(m.max() == pytest.approx(1.0) and m.min() >= 0 for m in asked.maps)


def test_any_layer_with_maps_can_be_explained_and_others_are_refused() -> None:
    model = Halves()
    x = _two_blobs(1.0, 0.5)
    after_relu = class_activation_maps(model, "relu", x)  # not a Conv2d, but N×C×H×W
    assert _mass(after_relu.maps[0])[0] > 0.9
    with pytest.raises(UsageError, match="is not a layer"):
        class_activation_maps(model, "nope", x)
    vector = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3))
    with pytest.raises(UsageError, match="1×3 output; class activation maps need N×C×H×W"):
        class_activation_maps(vector, "2", torch.rand(1, 1, SIZE, SIZE))


def test_cam_leaves_the_model_as_it_was_and_needs_no_parameter_gradients() -> None:
    model = Halves().train()
    model.conv.weight.requires_grad_(False)
    with torch.no_grad():
        class_activation_maps(model, "conv", _two_blobs(1.0, 0.2))
        assert not torch.is_grad_enabled()
    assert model.training and model.conv.training
    assert not model.conv.weight.requires_grad and model.conv.bias.requires_grad
    assert model.conv.weight.grad is None and model.conv.bias.grad is None
    assert hooks_left(model) == []


def test_the_page_shows_one_overlay_per_sample_for_the_last_conv(tmp_path: Path) -> None:
    out = tmp_path / "cam.html"
    x = torch.cat([_two_blobs(1.0, 0.5), _two_blobs(0.5, 1.0)])
    report = build_report(Halves(), x, out, ReportConfig(cam="gradcam", labels=("left", "right")))
    (view,) = report.cams
    assert view.layer == "conv" and view.targets == ("left", "right")
    alts = [img["alt"] for img in read_page(out).images if img["alt"].startswith("gradcam")]
    assert alts == ["gradcam of sample 0 (sample 0) for left", "gradcam of sample 1 (sample 1) for right"]
    assert "Where the model looks" in out.read_text(encoding="utf-8")


class MeanScore(nn.Module):
    """A 1×1 conv (weight 1, no bias), class 0 scoring its mean and class 1 always 0: a black input's map
    is zero everywhere (no activation to weigh), a bright one's is not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.conv(x).mean((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_a_map_that_is_zero_everywhere_says_so_on_the_page_and_in_the_json(tmp_path: Path) -> None:
    out, sidecar = tmp_path / "cam.html", tmp_path / "cam.json"
    x = torch.stack([torch.ones(1, 8, 8), torch.zeros(1, 8, 8)])
    report = build_report(MeanScore(), x, out, ReportConfig(cam="gradcam", quiet=True), json_out=sidecar)
    assert report.cams[0].empty == (False, True)
    assert json.loads(sidecar.read_text())["cams"][0]["empty"] == [False, True]
    alts = [img["alt"] for img in read_page(out).images if img["alt"].startswith("gradcam")]
    assert alts == [
        "gradcam of sample 0 (sample 0) for class 0",
        "gradcam of sample 1 (sample 1) for class 0, empty: zero everywhere",
    ]
    html = out.read_text(encoding="utf-8")
    assert html.count('<span class="cam-empty">empty (zero everywhere)</span>') == 1
    assert "A map marked empty is zero everywhere: no positive gradient-weighted evidence" in html


def _checkpoints(tiny_cnn: TinyCNN) -> tuple[TinyCNN, TinyCNN]:
    with torch.no_grad():
        tiny_cnn.conv2.bias[2] = 2.0  # channel 2 of conv2 is positive under A
    after = copy.deepcopy(tiny_cnn)
    with torch.no_grad():
        after.conv2.weight[2] = 0
        after.conv2.bias[2] = -1.0  # channel 2 of conv2 is never positive under B: it died
        after.head.bias += torch.tensor([0.0, 50.0, 0.0])  # B always says class 1
    return tiny_cnn, after


def test_compare_reports_weight_changes_dead_channels_and_flipped_samples(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    torch.manual_seed(3)
    x = torch.rand(6, 1, 8, 8)
    before, after = _checkpoints(tiny_cnn)
    states = [copy.deepcopy(m.state_dict()) for m in (before, after)]
    with torch.no_grad():
        predicted_before = before.eval()(x).argmax(1).tolist()
    out, sidecar = tmp_path / "diff.html", tmp_path / "diff.json"
    report = compare_checkpoints(before, after, x, out, ReportConfig(cam="gradcam"), json_out=sidecar)

    layers = {layer.name: layer for layer in report.layers}
    conv1, conv2, head = (layers[n].change for n in ("conv1", "conv2", "head"))
    assert conv1 is not None and conv1.weight_change == 0 and conv1.mean_cosine == pytest.approx(1.0)
    assert conv2 is not None and conv2.died == (2,) and conv2.channels[0].channel == 2
    assert conv2.channels[0].state == "died" and conv2.weight_change > 0
    assert head is not None and head.weight_change > 0
    assert [layer.name for _, layer in ranked_layers(report.layers)][-1] == "conv1"  # unchanged: last
    assert report.comparison is not None and report.layers[report.comparison.ranked[-1]].name == "conv1"
    assert report.comparison is not None
    assert report.comparison.flipped == tuple(i for i, p in enumerate(predicted_before) if p != 1)
    assert all(s.prediction is not None and s.prediction.index == 1 for s in report.samples)
    assert [v.label for v in report.cams] == ["A", "B"]
    assert layers["conv2"].channel_ids[0] == 2  # B's maps show the most changed channel first, A's too

    page = read_page(out)
    before_maps = [img["alt"] for img in page.images if " under A " in img["alt"] and "Weights" not in img["alt"]]
    assert len(before_maps) == 6 * 3  # A's maps beside B's in every layer, for every sample
    assert sum("the 6 most changed channels (2," in alt for alt in before_maps) == 6  # conv2's: died first
    text = out.read_text(encoding="utf-8")
    assert "What changed from A (A) to B (B)" in text and "1 died" in text
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    assert [f["sample"] for f in data["comparison"]["flipped"]] == list(report.comparison.flipped)
    conv2_json = next(layer for layer in data["layers"] if layer["name"] == "conv2")
    assert conv2_json["change"]["died"] == [2] and conv2_json["change"]["most_changed"][0]["channel"] == 2
    for model, state in zip((before, after), states):  # both left as they were
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert hooks_left(model) == []


def test_a_comparison_places_each_model_on_the_device_once(tiny_cnn: TinyCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    """One way through (issue #28): the capture passes, Grad-CAM, B's fields and graph all run with both models on
    the device, each moved there and back once."""
    before, after = copy.deepcopy(tiny_cnn), tiny_cnn
    moves: list[str] = []
    for name, model in (("A", before), ("B", after)):
        monkeypatch.setattr(model, "to", _counted(model.to, moves, name))
    report = compare_checkpoints(before, after, torch.rand(2, 1, 8, 8), config=ReportConfig(cam="gradcam", quiet=True))
    assert sorted(moves) == ["A", "A", "B", "B"]
    assert report.graph is not None and report.graph.overview is not None and len(report.cams) == 2


def _counted(to: Callable[..., nn.Module], moves: list[str], name: str) -> Callable[..., nn.Module]:
    """``to``, each call noted in ``moves`` as ``name``."""

    def counted(*args: object, **kwargs: object) -> nn.Module:
        moves.append(name)
        return to(*args, **kwargs)

    return counted


def test_different_architectures_are_refused_naming_the_difference(tiny_cnn: TinyCNN) -> None:
    other = TinyCNN()
    other.conv2 = nn.Conv2d(4, 5, 3, padding=1)
    with pytest.raises(ModelError, match=r"wrong shape: conv2\.weight \(6×4×3×3 in A, 5×4×3×3 in B\)"):
        compare_checkpoints(tiny_cnn, other, torch.rand(2, 1, 8, 8))


def test_cli_compare_demo_and_errors(tmp_path: Path, tiny_cnn: TinyCNN, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo-diff.html"
    assert main(["--demo-compare", "-o", str(out), "--quiet"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "What changed from epoch 5 (A) to trained (B)" in text and "Where the model looks" in text
    assert "samples changed class" in text  # the early checkpoint misreads some digits

    smaller = {k: v[:3] if k.startswith("conv1.") else v for k, v in tiny_cnn.state_dict().items()}
    torch.save(smaller, tmp_path / "other.pt")
    assert main(["--compare", str(tmp_path / "other.pt"), "-o", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not the same architecture" in err and "conv1.weight" in err
    assert main(["--demo-compare", "--order", "mean", "-o", str(tmp_path / "y.html")]) == 2
    assert "--order" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()
