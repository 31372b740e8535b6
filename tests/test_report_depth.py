"""What the report says about each layer: fc features, attention, dead units, top samples, JSON = HTML."""

from __future__ import annotations

import base64
import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import decode_png, read_page
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.render.html import _fmt_num


class MLP(nn.Module):
    """The classic MNIST MLP: features of fc1 are shown as an image per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 36)
        self.fc2 = nn.Linear(36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_mlp_features_are_images_and_weights_are_heatmaps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP()
    x = torch.rand(3, 1, 8, 8)
    report = build_report(model, x, tmp_path / "mlp.html", ReportConfig(quiet=True, colormap="gray"))
    fc1 = report.layers[0]
    assert (fc1.name, fc1.output_shape) == ("fc1", (36,))
    assert fc1.filters is not None and fc1.filters.grid.image.width == 64 and fc1.filters.grid.image.height == 36
    with torch.no_grad():
        features = model.fc1(x.flatten(1))
    page = read_page(tmp_path / "mlp.html")
    maps = [i for i in page.images if i["_section"] == "layer-fc1" and "36 features as a 6×6 image" in i["alt"]]
    assert len(maps) == 3
    for sample, img in enumerate(maps):
        tile = np.asarray(decode_png(img["src"])).reshape(-1)
        expected = features[sample]
        scaled = ((expected - expected.min()) * (255.0 / (expected.max() - expected.min()))).round()
        np.testing.assert_array_equal(tile, scaled.to(torch.uint8).numpy())


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 16, 4, stride=4)  # 16×16 image → 4×4 = 16 tokens of 16 features
        self.encoder = nn.TransformerEncoderLayer(16, nhead=4, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(1))


def test_attention_weights_per_head_are_captured_without_changing_results(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        plain = torch.softmax(model(x), 1)
        tokens = model.embed(x).flatten(2).transpose(1, 2)
        _, weights = model.encoder.self_attn(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
    report = build_report(model, x, tmp_path / "t.html", ReportConfig(quiet=True, colormap="gray"))
    attention = next(layer for layer in report.layers if layer.type == "MultiheadAttention")
    assert attention.name == "encoder.self_attn" and attention.output_shape == (4, 16, 16)
    assert "4 heads" in attention.description
    for sample in report.samples:
        assert sample.prediction is not None
        assert sample.prediction.probability == pytest.approx(float(plain[sample.index].max()), abs=1e-5)
        assert sample.prediction.index == int(plain[sample.index].argmax())
    assert [layer.name for layer in report.layers][:3] == ["embed", "encoder.self_attn", "encoder.linear1"]
    page = read_page(tmp_path / "t.html")
    img = next(i for i in page.images if i["_section"] == "layer-encoder.self_attn" and "sample 1" in i["alt"])
    atlas = np.asarray(decode_png(img["src"]))
    for head in range(4):
        row, col = divmod(head, 2)
        tile = atlas[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16].astype(int)
        w = weights[1, head]
        expected = ((w - w.min()) * (255.0 / (w.max() - w.min()))).round().numpy()
        assert np.abs(tile - expected).max() <= 1  # the same attention, up to float rounding


class DeadAndKnown(nn.Module):
    """Channel 0 copies the input (its top samples are the brightest images), channel 1 is dead."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.bias[1] = -1.0
            self.conv.weight[2, 0] = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_dead_channels_are_flagged_and_top_samples_found_in_order(tmp_path: Path) -> None:
    brightness = [0.2, 0.9, 0.5, 0.9, 0.7, 0.1, 0.3]
    x = torch.zeros(len(brightness), 1, 6, 6)
    for i, b in enumerate(brightness):
        x[i, 0, i % 6, (2 * i) % 6] = b  # one bright pixel per image, at a known place
    config = ReportConfig(quiet=True, batch_size=2, top_k=3)
    report = build_report(model := DeadAndKnown(), x, tmp_path / "d.html", config, json_out=tmp_path / "d.json")
    (layer,) = report.layers
    assert layer.stats.dead_channels == 1 and layer.stats.saturated_channels == 1
    values = x.numel() * 3  # 7 bright pixels in channels 0 and 2; the rest is 0 there and -1 in channel 1
    assert layer.stats.zero_fraction == pytest.approx((values - 14 - x.numel()) / values)
    assert layer.stats.nonpositive_fraction == pytest.approx((values - 14) / values)  # what a ReLU would zero
    top = layer.channels.top.channel(0)
    assert [p.sample for p in top] == [1, 3, 4]  # 0.9 twice (lower index first), then 0.7 — across batches
    assert [(p.row, p.col) for p in top] == [(1, 2), (3, 0), (4, 2)]
    assert [p.value for p in top] == pytest.approx([0.9, 0.9, 0.7])
    assert [p.sample for p in layer.channels.top.channel(2)] == [1, 3, 4]
    assert layer.channels.top.channel(1)[0].value == pytest.approx(-1.0)  # the dead channel still ranks
    assert "1 dead channel" in (tmp_path / "d.html").read_text()
    histogram = layer.stats.histogram
    assert sum(histogram.counts) == pytest.approx(x.numel() * 3)
    assert histogram.lo == pytest.approx(-1.0) and histogram.hi == pytest.approx(1.8)
    data = json.loads((tmp_path / "d.json").read_text())
    top_entry = data["layers"][0]["channels"]["top"][0][0]
    assert top_entry == {"sample": 1, "value": pytest.approx(0.9), "row": 1, "col": 2, "box": [2, 1, 3, 2]}
    assert model.conv.weight.requires_grad


def test_json_sidecar_matches_the_page(tmp_path: Path) -> None:
    torch.manual_seed(0)
    report = build_report(
        Encoder(), torch.rand(3, 1, 16, 16), tmp_path / "p.html", ReportConfig(quiet=True), json_out=tmp_path / "p.json"
    )
    data = json.loads((tmp_path / "p.json").read_text())
    page = read_page(tmp_path / "p.html")
    assert [s["data-layer"] for s in page.sections] == [layer["name"] for layer in data["layers"]]
    assert [s["id"] for s in page.sections] == [layer["id"] for layer in data["layers"]]
    rows = re.findall(r"<tr>\s*<th scope=\"row\"><a href=\"#([^\"]+)\">.*?</tr>", page.text, re.S)
    assert rows == [layer["id"] for layer in data["layers"]]
    body = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    for row, layer in zip(body.split("</tr>"), data["layers"]):
        cells = [unescape(c) for c in re.findall(r'<td class="r mono">([^<]*)</td>', row)]
        stats = layer["stats"]
        assert cells == [
            f"{layer['params']:,}",
            _fmt_num(stats["min"]),
            _fmt_num(stats["mean"]),
            _fmt_num(stats["std"]),
            _fmt_num(stats["max"]),
            f"{100 * stats['zero_fraction']:.1f}%",
            f"{100 * stats['nonpositive_fraction']:.1f}%",
        ]
    assert len(report.layers) == len(data["layers"])
    script = json.loads(unescape(page.text.split('id="fv-data">', 1)[1].split("</script>", 1)[0]))
    for layer in data["layers"]:  # the enlarged view's top samples (typed arrays) are the sidecar's
        top = script["layers"][layer["id"].removeprefix("layer-")]["top"]
        ints = np.frombuffer(base64.b64decode(top["ints"]), f"<i{top['bytes']}").reshape(-1, top["k"], top["n"])
        values = np.frombuffer(base64.b64decode(top["values"]), "<f4").reshape(-1, top["k"])
        for channel, entries in enumerate(layer["channels"]["top"]):
            kept = ints[channel][ints[channel][:, 0] >= 0]
            assert [[e["sample"], e["row"], e["col"], *e.get("box", [])] for e in entries] == kept[:, :7].tolist()
            assert values[channel][: len(entries)] == pytest.approx([e["value"] for e in entries], rel=1e-5, abs=1e-6)


def _atlas(path: Path, section: str, sample: int) -> np.ndarray:
    page = read_page(path)
    maps = [i for i in page.images if i["_section"] == section and f"sample {sample} (" in i["alt"]]
    return np.asarray(decode_png(maps[0]["src"]))


@pytest.mark.parametrize("scale", ["layer", "sigmoid", "percentile"])
def test_scale_modes_map_values_as_documented(tmp_path: Path, scale: str) -> None:
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight[:, 0, 0, 0] = torch.tensor([1.0, 3.0])  # channel 1 = 3 × channel 0
    x = torch.linspace(-2, 2, 100).view(1, 1, 10, 10)
    build_report(nn.Sequential(conv), x, tmp_path / "s.html", ReportConfig(quiet=True, scale=scale, colormap="gray"))
    atlas = _atlas(tmp_path / "s.html", "layer-0", 0).astype(int)
    first, second = atlas[:, :10], atlas[:, 10:]
    values = x[0, 0]
    if scale == "layer":  # one scale for both channels: channel 0 spans only the middle third
        assert second.min() == 0 and second.max() == 255
        assert abs(first.min() - 85) <= 1 and abs(first.max() - 170) <= 1
    elif scale == "sigmoid":
        expected = (torch.sigmoid(values) * 255).round().numpy()
        np.testing.assert_array_equal(first, expected)
    else:  # the lowest and highest 1 % are clipped: the two extreme pixels saturate
        assert (first == 0).sum() == 1 and (first == 255).sum() == 1
        lo, hi = values.flatten().sort().values[[0, 99]]
        assert first[0, 1] == round((float(values[0, 1]) - float(lo)) * 255 / float(hi - lo))


def test_channels_ordered_by_a_statistic_keep_the_top_ones(tmp_path: Path) -> None:
    conv = nn.Conv2d(1, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.5, 3.0, -1.0, 2.0]))  # constant channels: mean = bias
        conv.weight[:, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    config = ReportConfig(quiet=True, order="mean", max_channels=2)
    report = build_report(nn.Sequential(conv), torch.rand(3, 1, 4, 4), tmp_path / "o.html", config)
    (layer,) = report.layers
    assert layer.channel_ids == (1, 3)
    assert "showing 2 of 4 channels, with the highest mean (--max-channels 2)" in layer.notes
    assert len(layer.channels.mean) == 4  # statistics still cover every channel
    atlas = _atlas(tmp_path / "o.html", "layer-0", 0)
    assert atlas.shape == (4, 8) and (atlas[:, :4] == 0).all() and atlas[:, 4:].max() == 255  # 1 is flat, 3 varies
