"""Circuits: each channel's strongest inputs, checked on models whose wiring is set by hand, so the answer is
known: a conv → BatchNorm → ReLU → max pool → conv (attribution), linear paths (expanded weights, and both
methods agreeing on them), a residual block, a grouped convolution, a depthwise-separable block and a 1×1
projection nobody captures; then the page's links, a comparison and a scan carrying it."""

from __future__ import annotations

import json
import re
import time
from html import unescape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from featviz_report import ReportConfig, build_report, compare_checkpoints, scan_dataset
from featviz_report.capture.hooks import select_layers
from featviz_report.circuits.norms import held_norm
from featviz_report.circuits.stage import IN_PLACE_SAVED, circuit_inputs, first_samples
from featviz_report.circuits.strength import ATTRIBUTION, EXPANDED, attributed_gains, strongest_inputs
from featviz_report.circuits.trace import trace_circuits
from featviz_report.fields.budget import Deadline

QUIET = ReportConfig(quiet=True, graph=False)


def _inputs(model: nn.Module, samples: torch.Tensor, tmp_path: Path, **options: object) -> dict[str, dict]:
    """Each layer's ``channels`` from the JSON sidecar, by name."""
    config = ReportConfig(quiet=True, graph=False, **options)  # type: ignore[arg-type]
    build_report(model, samples, json_out=tmp_path / "r.json", config=config)
    return {layer["name"]: layer["channels"] for layer in json.loads((tmp_path / "r.json").read_text())["layers"]}


def _wired(first: nn.Conv2d, second: nn.Conv2d, plus: list[int], minus: list[int]) -> None:
    """``second``'s output channel ``o`` reads ``first``'s channel ``plus[o]`` with +3 per tap and ``minus[o]``
    with −2 per tap; every other input with at most ±0.01."""
    with torch.no_grad():
        second.weight.uniform_(-0.01, 0.01)
        for o, (p, m) in enumerate(zip(plus, minus)):
            second.weight[o, p] = 3.0
            second.weight[o, m] = -2.0


class KnownWiring(nn.Module):
    """conv → BatchNorm → ReLU → max pool → conv; channel 2 of the first convolution has a negative raw
    output that its BatchNorm lifts above zero (a gradient × activation would give it the wrong sign)."""

    PLUS = [3, 0, 5, 2]
    MINUS = [1, 4, 2, 0]

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight.uniform_(0.0, 0.3)  # every channel on about as often: the wiring decides the order
            self.conv1.bias.fill_(0.5)
            self.conv1.bias[2] = -5.0
            self.bn.running_mean.fill_(0.5)
            self.bn.running_mean[2] = -5.0  # its raw output is 5.5 below the others, its normalised one is not
            self.bn.running_var.fill_(0.25)
            self.bn.weight.fill_(1.0)
            self.bn.bias.fill_(0.2)
        _wired(self.conv1, self.conv2, self.PLUS, self.MINUS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(nn.functional.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2))


def test_the_known_wiring_is_named_in_order_with_its_signs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    channels = _inputs(KnownWiring().eval(), torch.rand(4, 3, 16, 16), tmp_path)
    assert "inputs" not in channels["conv1"] and "reads the model's input" in channels["conv1"]["inputs_unknown"]
    second = channels["conv2"]
    assert second["inputs_method"] == ATTRIBUTION and second["inputs_from"] == ["layer-conv1"]
    assert second["inputs_samples"] == 2
    for o, (plus, minus) in enumerate(zip(KnownWiring.PLUS, KnownWiring.MINUS)):
        first, then = second["inputs"][o][:2]
        assert (first["layer"], first["channel"]) == ("layer-conv1", plus) and first["weight"] > 0
        assert (then["layer"], then["channel"]) == ("layer-conv1", minus) and then["weight"] < 0
        assert abs(then["weight"]) > 10 * max(abs(e["weight"]) for e in second["inputs"][o][2:])
    assert len(second["inputs"][0]) == 6  # every input channel reaches it: 6 of the 8 slots filled


def test_an_input_that_never_fires_is_no_input(tmp_path: Path) -> None:
    """The attribution is the expanded weight where the data lets the path through: a channel the ReLU
    never lets through contributes nothing, whatever its weight."""
    model = KnownWiring().eval()
    with torch.no_grad():
        model.bn.bias[3] = -100.0  # channel 3, the strongest input of output 0, is never positive
    entries = _inputs(model, torch.rand(2, 3, 16, 16), tmp_path)["conv2"]["inputs"][0]
    assert 3 not in [e["channel"] for e in entries] and entries[0]["channel"] == 1 and entries[0]["weight"] < 0


def test_circuit_inputs_sets_how_many_and_zero_turns_them_off(tmp_path: Path) -> None:
    samples = torch.rand(2, 3, 16, 16)
    two = _inputs(KnownWiring().eval(), samples, tmp_path, circuit_inputs=2)
    assert [len(entries) for entries in two["conv2"]["inputs"]] == [2, 2, 2, 2]
    off = _inputs(KnownWiring().eval(), samples, tmp_path, circuit_inputs=0)
    assert not any(key.startswith("inputs") for key in off["conv2"])


class LinearPath(nn.Module):
    """conv → BatchNorm → average pool → zero padding → conv: affine all the way."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 3, 3)
        with torch.no_grad():
            self.bn.running_var.copy_(torch.tensor([0.25, 4.0, 1.0, 0.04, 9.0]))
            self.bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 1.0, 3.0]))
            self.bn.running_mean.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(nn.functional.pad(nn.functional.avg_pool2d(self.bn(self.conv1(x)), 2), (1, 1, 1, 1)))


def _expanded(model: LinearPath) -> np.ndarray:
    """The expanded weights by hand: the kernel summed over space times BatchNorm's scale."""
    scale = model.bn.weight / torch.sqrt(model.bn.running_var + model.bn.eps)
    return (model.conv2.weight.sum((2, 3)) * scale).detach().double().numpy()


def test_a_linear_path_gives_the_expanded_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = LinearPath().eval()
    second = _inputs(model, torch.rand(2, 3, 12, 12), tmp_path)["conv2"]
    assert second["inputs_method"] == EXPANDED and "inputs_samples" not in second
    expected = _expanded(model)
    for o, entries in enumerate(second["inputs"]):
        order = np.argsort(-np.abs(expected[o]), kind="stable")
        assert [e["channel"] for e in entries] == order.tolist()
        np.testing.assert_allclose([e["weight"] for e in entries], expected[o][order], rtol=1e-5)


def _both_methods(model: nn.Module, samples: torch.Tensor, target: str) -> tuple[np.ndarray, np.ndarray]:
    """The strengths of ``target``'s channels by expanded weights and by attribution, side by side."""
    layers = select_layers(model)
    traced = trace_circuits(model, layers, samples)
    found = next(t for t in traced.targets if t.key == (target, 0))
    outputs = range(found.module.weight.shape[0])
    channels = found.inputs.shape[1]
    expanded = strongest_inputs(
        found.module, found.module.weight.detach(), dict(found.routes), outputs, 64, EXPANDED, channels
    )
    gains = attributed_gains(found, traced.probes, Deadline(60))
    attributed = strongest_inputs(found.module, found.module.weight.detach(), gains, outputs, 64, ATTRIBUTION, channels)
    return expanded.table, attributed.table


@pytest.mark.parametrize("seed", range(6))
def test_on_a_linear_path_both_methods_agree(seed: int) -> None:
    """A property of the two methods: where both apply they give the same inputs, in the same order, with
    the same signs (the attribution measures the expanded weights; only the padding's border differs)."""
    torch.manual_seed(seed)
    model = LinearPath().eval()
    with torch.no_grad():
        model.bn.weight.uniform_(-2, 2)
        model.bn.running_var.uniform_(0.1, 4)
    expanded, attributed = _both_methods(model, torch.randn(3, 3, 12, 12), "conv2")
    for row_e, row_a in zip(expanded, attributed):
        assert np.argsort(-np.abs(row_e)).tolist() == np.argsort(-np.abs(row_a)).tolist()
        assert (np.sign(row_e) == np.sign(row_a)).all()
    # the padding adds a border of zeros to the 6×6 map the second convolution reads: a uniform raise
    # reaches 36 of its 64 positions, and the attribution, a mean over them, sees that share of it
    np.testing.assert_allclose(attributed, expanded * 36 / 64, rtol=1e-4)


class Residual(nn.Module):
    """A stem and a residual block whose sum is read by a third convolution: conv3 reads conv2 (through
    BatchNorm, scale 2) and the stem (through the identity), linearly."""

    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.stem.bias.fill_(1.0)
            self.bn2.weight.fill_(2.0)
            self.bn2.bias.fill_(1.0)
            self.conv3.weight.zero_()
            self.conv3.weight[0, 1] = 1.0
            self.conv3.weight[1, 3] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.conv1(h)))) + h
        return self.conv3(torch.relu(y) if self.relu else y)


def test_a_residual_block_names_both_layers_it_reads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    channels = _inputs(Residual(relu=False).eval(), torch.rand(2, 3, 8, 8), tmp_path)
    third = channels["conv3"]
    assert third["inputs_method"] == EXPANDED and set(third["inputs_from"]) == {"layer-conv2", "layer-stem"}
    scale = 2.0 / np.sqrt(1 + 1e-5)
    first = [(e["layer"], e["channel"], round(e["weight"], 4)) for e in third["inputs"][0]]
    assert first == [("layer-conv2", 1, round(scale, 4)), ("layer-stem", 1, 1.0)]
    second = [(e["layer"], e["channel"], round(e["weight"], 4)) for e in third["inputs"][1]]
    assert second == [("layer-conv2", 3, round(-scale, 4)), ("layer-stem", 3, -1.0)]
    assert channels["conv1"]["inputs_from"] == ["layer-stem"] and channels["conv2"]["inputs_from"] == ["layer-conv1"]


def test_a_residual_block_with_a_relu_after_the_sum_keeps_the_signs(tmp_path: Path) -> None:
    torch.manual_seed(2)
    third = _inputs(Residual(relu=True).eval(), torch.rand(2, 3, 8, 8), tmp_path)["conv3"]
    assert third["inputs_method"] == ATTRIBUTION
    assert [(e["layer"], e["channel"], e["weight"] > 0) for e in third["inputs"][0]] == [
        ("layer-conv2", 1, True),
        ("layer-stem", 1, True),
    ]
    assert [(e["layer"], e["channel"], e["weight"] < 0) for e in third["inputs"][1]] == [
        ("layer-conv2", 3, True),
        ("layer-stem", 3, True),
    ]


class Grouped(nn.Module):
    """conv (6 channels) → grouped conv (2 groups of 3 → 2 outputs each): an output only reads its group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1, groups=2)
        with torch.no_grad():
            self.conv2.weight.uniform_(-0.01, 0.01)
            self.conv2.weight[0, 2] = 1.0  # output 0 (group 0): its channel 2, the model's 2
            self.conv2.weight[1, 0] = -1.0
            self.conv2.weight[2, 1] = 1.0  # output 2 (group 1): its channel 1, the model's 4
            self.conv2.weight[3, 2] = -1.0  # the model's 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def test_a_grouped_convolution_reads_only_its_group(tmp_path: Path) -> None:
    second = _inputs(Grouped().eval(), torch.rand(2, 3, 8, 8), tmp_path)["conv2"]
    assert second["inputs_method"] == EXPANDED
    groups = [{e["channel"] for e in entries} for entries in second["inputs"]]
    assert groups == [{0, 1, 2}, {0, 1, 2}, {3, 4, 5}, {3, 4, 5}]
    assert [(e["channel"], e["weight"] > 0) for e in (entries[0] for entries in second["inputs"])] == [
        (2, True),
        (0, False),
        (4, True),
        (5, False),
    ]


class Separable(nn.Module):
    """conv → BN → ReLU → depthwise 3×3 → BN → ReLU6 → pointwise 1×1, MobileNet's block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(4)
        self.pointwise = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.conv.bias.fill_(0.5)
            self.depthwise.weight.abs_()
            self.depthwise.weight[1].neg_()
            self.bn2.bias.fill_(0.5)
            self.pointwise.weight.copy_(torch.tensor([[0.1, 2.0, -1.0, 0.2], [-3.0, 0.1, 0.2, 1.0]])[..., None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv(x)))
        return self.pointwise(nn.functional.relu6(self.bn2(self.depthwise(h))))


def test_a_depthwise_separable_block(tmp_path: Path) -> None:
    torch.manual_seed(3)
    channels = _inputs(Separable().eval(), torch.rand(3, 3, 8, 8), tmp_path)
    depthwise = channels["depthwise"]["inputs"]
    assert [[(e["channel"], e["weight"] > 0) for e in entries] for entries in depthwise] == [
        [(0, True)],
        [(1, False)],
        [(2, True)],
        [(3, True)],
    ]
    pointwise = channels["pointwise"]["inputs"]
    assert [(e["layer"], e["channel"]) for e in pointwise[0]][:2] == [("layer-depthwise", 1), ("layer-depthwise", 2)]
    assert pointwise[0][0]["weight"] > 0 > pointwise[0][1]["weight"]
    assert [(e["channel"], e["weight"] > 0) for e in pointwise[1][:2]] == [(0, False), (3, True)]


class Projection(nn.Module):
    """conv → BN → 1×1 conv → conv, the 1×1 projection not captured: conv3 is built from conv1's channels
    through it (``W̄3 · W2 · BN scale``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.project = nn.Conv2d(4, 3, 1, bias=False)
        self.conv3 = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.0, -1.0, 2.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.project(self.bn(self.conv1(x))))


def test_a_projection_between_captured_layers_is_composed(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = Projection().eval()
    third = _inputs(model, torch.rand(2, 3, 8, 8), tmp_path, layers=("conv1", "conv3"))["conv3"]
    assert third["inputs_method"] == EXPANDED and third["inputs_from"] == ["layer-conv1"]
    scale = model.bn.weight / torch.sqrt(model.bn.running_var + model.bn.eps)
    edge = torch.tensor([7 / 8, 1.0, 7 / 8])  # on 8×8 maps, padding 1: an edge tap reads padding at 1 of 8 positions
    summed = (model.conv3.weight * edge[:, None] * edge[None, :]).sum((2, 3))
    expected = (summed @ model.project.weight[:, :, 0, 0] * scale).detach().double().numpy()
    for o, entries in enumerate(third["inputs"]):
        got = {e["channel"]: e["weight"] for e in entries}
        np.testing.assert_allclose([got[c] for c in range(4)], expected[o], rtol=1e-5)


def test_the_first_samples_are_what_the_attribution_averages_over() -> None:
    from featviz_report.capture.samples import open_samples, preprocess

    samples = open_samples(torch.rand(5, 3, 8, 8), preprocess(Grouped(), QUIET))
    first = next(first_samples(samples, 4))
    assert first.shape[0] == 2
    assert len(samples.skipped) == 0


def test_the_model_is_left_as_it_was_found() -> None:
    model = KnownWiring().train()
    flags = [p.requires_grad for p in model.parameters()]
    traced = trace_circuits(model, select_layers(model), torch.rand(2, 3, 8, 8))
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert not model.conv1._forward_hooks and not model.conv1._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters()) and traced.samples == 2


def _links(page: str) -> dict[str, list[str]]:
    """Per 'built from' row (its id), the channel addresses it links to, in order."""
    rows = {}
    for row in re.finditer(r'<li id="(layer-[^"]+-channel-\d+)"[^>]*>(.*?)</li>', page, re.S):
        rows[row.group(1)] = [unescape(h) for h in re.findall(r'<a href="#(layer-[^"]+-channel-\d+)"', row.group(2))]
    return rows


def _page(model: nn.Module, samples: torch.Tensor, tmp_path: Path, **options: object) -> str:
    config = ReportConfig(quiet=True, graph=False, **options)  # type: ignore[arg-type]
    build_report(model, samples, tmp_path / "r.html", config, json_out=tmp_path / "r.json")
    return (tmp_path / "r.html").read_text(encoding="utf-8")


def test_the_page_links_each_channel_to_its_inputs_and_works_without_javascript(tmp_path: Path) -> None:
    page = _page(KnownWiring().eval(), torch.rand(2, 3, 16, 16), tmp_path)
    rows = _links(page)
    for o, (plus, minus) in enumerate(zip(KnownWiring.PLUS, KnownWiring.MINUS)):
        assert rows[f"layer-conv2-channel-{o}"][:2] == [f"layer-conv1-channel-{plus}", f"layer-conv1-channel-{minus}"]
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # each channel's address once: its row, not also an empty anchor in the maps
    targets = {link for links in rows.values() for link in links}
    assert targets <= set(ids) and {f"layer-conv1-channel-{c}" for c in range(6)} <= set(ids)
    first = re.search(r'<li id="layer-conv2-channel-0">(.*?)</li>', page).group(1)  # type: ignore[union-attr]
    assert re.search(r'<svg class="strip" viewBox="0 0 18 3"[^>]*><use href="#cp-conv2"/>', first)
    assert '<image id="cp-conv2" width="18" height="12"' in page  # 4 rows of 6 slots (6 inputs) of 3×3 patterns
    assert re.search(r'>3 \+\d[\d.]*</a><a href="#layer-conv1-channel-1">1 -\d', first)
    assert "<b>attribution</b>" in page and "averaged over the first 2 samples" in page
    assert "Built from: unknown, no captured layer" in page  # conv1 reads the image


def test_a_channel_the_page_does_not_show_is_named_but_not_linked(tmp_path: Path) -> None:
    page = _page(KnownWiring().eval(), torch.rand(2, 3, 16, 16), tmp_path, max_channels=2)
    rows = _links(page)
    assert set(rows) == {"layer-conv2-channel-0", "layer-conv2-channel-1"}
    assert all(link in {"layer-conv1-channel-0", "layer-conv1-channel-1"} for links in rows.values() for link in links)
    assert '<span class="off" data-at="conv1 3">3 +' in page  # channel 0's strongest input, conv1's channel 3
    channels = json.loads((tmp_path / "r.json").read_text())["layers"][1]["channels"]
    assert channels["inputs"][0][0]["channel"] == 3 and channels["inputs"][2:] == [None, None]


def test_a_comparison_shows_how_the_strongest_inputs_changed(tmp_path: Path) -> None:
    before, after = KnownWiring().eval(), KnownWiring().eval()
    after.load_state_dict(before.state_dict())
    with torch.no_grad():  # B rewires output 0: conv1's channel 4 instead of 3
        after.conv2.weight[0, 3] = 0.005
        after.conv2.weight[0, 4] = 3.0
    config = ReportConfig(quiet=True, graph=False, cam=None)
    compare_checkpoints(
        before, after, torch.rand(2, 3, 16, 16), tmp_path / "c.html", config, json_out=tmp_path / "c.json"
    )
    layer = json.loads((tmp_path / "c.json").read_text())["layers"][1]
    now, was = layer["channels"]["inputs"][0], layer["change"]["inputs_before"][0]
    assert (now[0]["channel"], was[0]["channel"]) == (4, 3)
    assert abs(now[0]["weight_before"]) < 0.1 * now[0]["weight"]  # under A channel 4 barely counted
    assert next(e["weight_before"] for e in now if e["channel"] == 3) == pytest.approx(was[0]["weight"], rel=1e-5)
    page = (tmp_path / "c.html").read_text(encoding="utf-8")
    row = re.search(r'<li id="layer-conv2-channel-0">(.*?)</li>', page).group(1)  # type: ignore[union-attr]
    assert re.search(r'>4 \+[\d.]+ <span class="was">A [+-][\d.e-]+</span></a>', row)


def test_a_scan_carries_the_inputs_into_each_card(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = ReportConfig(quiet=True, graph=False, input_size=16, normalize="none")
    scan_dataset(KnownWiring().eval(), [folder], tmp_path / "s.html", config, json_out=tmp_path / "s.json")
    channels = json.loads((tmp_path / "s.json").read_text())["layers"][1]["channels"]
    assert channels["inputs_method"] == ATTRIBUTION and channels["inputs_samples"] == 2
    assert [(e["channel"], e["weight"] > 0) for e in channels["inputs"][0][:2]] == [(3, True), (1, False)]
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    card = re.search(r'<article class="card" id="layer-conv2-channel-0".*?</article>', page, re.S).group(0)  # type: ignore[union-attr]
    assert re.search(r'<p class="built-row"><b>Built from</b> <a href="#layer-conv1-channel-3"><svg class="crop"', card)
    assert '<use href="#cp-conv2"/>' in card and 'id="cp-conv2"' in page


@pytest.mark.parametrize("model", [KnownWiring(), Residual(relu=True), Separable()], ids=type)
def test_replaying_the_capture_pass_gives_what_running_the_layers_again_gives(model: nn.Module, tmp_path: Path) -> None:
    """A report's probing pass returns the captured layers' outputs kept from its capture pass instead of
    running them: the inputs it finds are those of a probing pass that runs everything."""
    model.eval()
    samples = torch.rand(3, 3, 16, 16)
    reported = _inputs(model, samples, tmp_path)
    layers = select_layers(model)
    shown = {(name, 0): tuple(range(m.out_channels)) for name, m in layers}
    found, used = circuit_inputs(model, layers, shown, [samples[:2]], 8, 60)
    assert used == 2
    for (name, _), inputs in found.items():
        if isinstance(inputs, str):
            assert "inputs" not in reported[name]
            continue
        entries = [e for channel in reported[name]["inputs"] for e in channel]
        assert [e["channel"] for e in entries] == inputs.channel[inputs.source >= 0].tolist()
        np.testing.assert_allclose([e["weight"] for e in entries], inputs.weight[inputs.source >= 0], rtol=1e-5)


def test_a_stash_spares_the_probing_pass_the_captured_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    from featviz_report.circuits.stash import stashing

    model, samples = KnownWiring().eval(), torch.rand(3, 3, 16, 16)
    layers = select_layers(model)
    with stashing(model, layers, 2) as stash, torch.inference_mode():
        model(samples)
        model(samples)  # only the first pass is kept
    assert (
        stash.inputs is not None and stash.inputs.shape[0] == 2 and set(stash.outputs) == {("conv1", 0), ("conv2", 0)}
    )
    runs = []
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, *a: runs.append(self) or torch.zeros(0))
    traced = trace_circuits(model, layers, stash.inputs.clone(), stash)
    assert runs == [] and [t.key for t in traced.targets] == [("conv1", 0), ("conv2", 0)]
    assert "forward" not in model.conv1.__dict__  # the modules' own forward is back


class _Between(nn.Module):
    """a (3→2, 1×1) → something between → b (2→2, 1×1, weights [[1, -3], [2, 0.5]], no bias)."""

    def __init__(self, between: str) -> None:
        super().__init__()
        self.a, self.b, self.between = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1, bias=False), between
        with torch.no_grad():
            self.b.weight.copy_(torch.tensor([[1.0, -3.0], [2.0, 0.5]]).view(2, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.between == "write into a view":
            y[:, :1].mul_(-1)
        elif self.between == "assign a channel":
            y[:, 0] = 0
        elif self.between == "pad the channels":
            y = nn.functional.pad(y, (0, 0, 0, 0, 1, -1))  # channel c is a's channel c - 1
        elif self.between == "a mask from the data":
            y = y * (y > 0)
        elif self.between == "a kernel from the data":
            return self.b(nn.functional.conv2d(y, x.mean((0, 2, 3))[:2].repeat(2, 1).view(2, 2, 1, 1)))
        elif self.between == "square in place":
            y = y + 0
            y.mul_(y)
        return self.b(y)


@pytest.mark.parametrize(
    ("between", "expected"),
    [
        ("write into a view", [[(1, -3.0), (0, -1.0)], [(0, -2.0), (1, 0.5)]]),
        ("assign a channel", [[(1, -3.0)], [(1, 0.5)]]),
        ("pad the channels", [[(0, -3.0)], [(0, 0.5)]]),
        ("a mask from the data", None),
        ("a kernel from the data", None),
    ],
)
def test_what_is_not_the_wiring_is_measured_not_read_off_the_weights(
    between: str, expected: list[list[tuple[int, float]]] | None, tmp_path: Path
) -> None:
    """Red-team cases the rules once called linear ('expanded weights') with the unchanged weights: an in-place
    write through a view or into a channel, a pad that shifts channels, a product with a mask or a kernel made
    from the samples. Each is measured by the gradient now, which gets what the model computes."""
    torch.manual_seed(0)
    layer = _inputs(_Between(between).eval(), torch.rand(4, 3, 8, 8), tmp_path)["b"]
    assert layer["inputs_method"] == ATTRIBUTION
    if expected is not None:
        found = [[(i["channel"], round(i["weight"], 3)) for i in row] for row in layer["inputs"]]
        assert found == expected


class _SequenceAndDetached(nn.Module):
    """A Linear over a sequence of a map's positions, and a captured b reading a captured a through detach()."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.fc(self.c(x).flatten(2).transpose(1, 2)).mean(1)
        return tokens + self.b(self.a(x).detach()).mean((2, 3)).sum(1, keepdim=True)


def test_a_layer_without_inputs_says_a_true_why(tmp_path: Path) -> None:
    layers = _inputs(_SequenceAndDetached().eval(), torch.rand(2, 3, 16, 16), tmp_path)
    assert "Linear over a sequence" in layers["fc"]["inputs_unknown"]
    assert "detached" in layers["b"]["inputs_unknown"], "b reads a, cut off from the gradient: not only the input"


def test_a_diverged_layer_says_its_strengths_are_unknown(tmp_path: Path) -> None:
    """A NaN among conv2's weights, or NaN activations on its path, leaves no order of inputs to give: each
    says why, where the strengths were once read off the values left (NaN weights as 0, NaN gradients dropped)."""
    torch.manual_seed(0)
    model = KnownWiring().eval()
    with torch.no_grad():
        model.conv2.weight[0, 3, 1, 1] = float("nan")
    assert "1 non-finite weights" in _inputs(model, torch.rand(2, 3, 16, 16), tmp_path)["conv2"]["inputs_unknown"]
    model = KnownWiring().eval()
    with torch.no_grad():
        model.bn.running_var[1] = float("nan")  # channel 1 of conv2's input is NaN for every sample
    layer = _inputs(model, torch.rand(2, 3, 16, 16), tmp_path)["conv2"]
    assert "inputs" not in layer and "a NaN or an infinity on the path" in layer["inputs_unknown"]


def test_a_gradient_autograd_refuses_is_said_in_plain_words(tmp_path: Path) -> None:
    """y.mul_(y) overwrites what the product's backward needs: autograd's own message (versions, a hint about
    set_detect_anomaly) was the reason once; now it says what happened."""
    layer = _inputs(_Between("square in place").eval(), torch.rand(2, 3, 8, 8), tmp_path)["b"]
    assert layer["inputs_unknown"] == IN_PLACE_SAVED


@pytest.mark.parametrize(
    "norm",
    [nn.InstanceNorm2d(6, affine=True), nn.GroupNorm(6, 6), nn.BatchNorm2d(6, track_running_stats=False)],
    ids=lambda norm: type(norm).__name__ + ("" if norm.__dict__.get("track_running_stats", True) else "-batch-stats"),
)
def test_a_norm_over_the_datas_own_statistics_keeps_the_wiring(norm: nn.Module, tmp_path: Path) -> None:
    """An instance norm removes a uniform raise of each channel: the gradient through it was 0 up to rounding,
    and the 'strongest inputs' were that rounding ranked (1e-6). With its statistics held constant, as a
    BatchNorm's running ones are in eval mode, the known wiring is found again."""
    torch.manual_seed(0)
    model = KnownWiring().eval()
    model.bn = norm
    second = _inputs(model, torch.rand(4, 3, 16, 16), tmp_path)["conv2"]
    assert second["inputs_method"] == ATTRIBUTION
    for o, (plus, minus) in enumerate(zip(KnownWiring.PLUS, KnownWiring.MINUS)):
        signed = {e["channel"]: np.sign(e["weight"]) for e in second["inputs"][o][:2]}
        assert signed == {plus: 1, minus: -1}
        rest = max(abs(e["weight"]) for e in second["inputs"][o][2:])
        assert min(abs(e["weight"]) for e in second["inputs"][o][:2]) > 10 * rest


@pytest.mark.parametrize(
    ("func", "args"),
    [
        (nn.functional.layer_norm, ((5, 4), torch.rand(5, 4), torch.rand(5, 4))),
        (nn.functional.rms_norm, ((4,), torch.rand(4))),
        (nn.functional.group_norm, (3, torch.rand(6), torch.rand(6))),
        (nn.functional.instance_norm, (None, None, torch.rand(6), torch.rand(6))),
        (nn.functional.batch_norm, (None, None, torch.rand(6), torch.rand(6), True)),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_a_held_norm_computes_what_the_norm_computes(func: Any, args: tuple[Any, ...]) -> None:
    x = torch.randn(3, 6, 5, 4) * 3 + 1
    expected = func(x, *args)
    held = held_norm(func, (x, *args), {})
    assert held is not None and torch.allclose(held, expected, atol=1e-5)
    probe = torch.zeros(1, 6, 1, 1, requires_grad=True)
    (grad,) = torch.autograd.grad(held_norm(func, (x + probe, *args), {}).sum(), probe)  # type: ignore[union-attr]
    assert grad.abs().max() > 1e-2, "a uniform raise goes through, scaled"


class _CenteredConv(nn.Conv2d):
    """Computes with its kernels less each output's mean, as timm's StdConv2d does (without the division)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding)


def test_a_layer_that_computes_its_weight_is_read_by_the_weight_it_uses(tmp_path: Path) -> None:
    """conv2 holds the known wiring plus 1 everywhere, which its forward takes off again: read off the parameter,
    every input would gain 9 and the negative one would shrink to about the others' size."""
    torch.manual_seed(0)
    model = KnownWiring().eval()
    centred = _CenteredConv(6, 4, 3, padding=1)
    with torch.no_grad():
        centred.weight.copy_(model.conv2.weight + 1.0 - model.conv2.weight.mean((1, 2, 3), keepdim=True))
        centred.bias.copy_(model.conv2.bias)
    model.conv2 = centred
    second = _inputs(model, torch.rand(4, 3, 16, 16), tmp_path)["conv2"]
    for o, (plus, minus) in enumerate(zip(KnownWiring.PLUS, KnownWiring.MINUS)):
        first, then = second["inputs"][o][:2]
        assert (first["channel"], then["channel"]) == (plus, minus) and first["weight"] > 0 > then["weight"]
        assert abs(then["weight"]) > 10 * max(abs(e["weight"]) for e in second["inputs"][o][2:])


class _GroupNormed(nn.Module):
    """conv (3→6) → a group norm of 3 groups, as F.group_norm or torch.group_norm → ReLU → 1×1 conv (6→4)."""

    def __init__(self, call: str) -> None:
        super().__init__()
        self.conv1, self.conv2, self.call = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1), call

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        if self.call == "F.group_norm":
            return nn.functional.group_norm(y, 3)
        return torch.group_norm(y, 3)  # the same values: torch's own function, its arguments in its own order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.norm(self.conv1(x))))


@pytest.mark.parametrize("call", ["F.group_norm", "torch.group_norm"])
def test_a_group_norm_gives_the_gradient_it_is_measured_by(call: str, tmp_path: Path) -> None:
    """Each input's strength is the gradient of the channel's mean with respect to a uniform raise of the input
    channel, computed here by hand through the group norm with its statistics held (channel-wise): F.group_norm
    as nn.GroupNorm calls it, and torch.group_norm, which takes its arguments in its own order."""
    torch.manual_seed(0)
    model, samples = _GroupNormed(call).eval(), torch.rand(2, 3, 12, 12)
    found = _inputs(model, samples, tmp_path)["conv2"]["inputs"][0]
    probe = torch.zeros(1, 6, 1, 1, requires_grad=True)
    raised = model.conv1(samples).detach() + probe
    normed = held_norm(nn.functional.group_norm, (raised, 3), {})
    (truth,) = torch.autograd.grad(model.conv2(torch.relu(normed))[:, 0].mean(), probe)  # type: ignore[arg-type]
    expected = truth.flatten()
    assert sorted(e["channel"] for e in found) == list(range(6))
    magnitudes = [abs(e["weight"]) for e in found]
    assert magnitudes == sorted(magnitudes, reverse=True)  # strongest first (a group's two channels tie here)
    for entry in found:
        assert entry["weight"] == pytest.approx(float(expected[entry["channel"]]), rel=1e-4, abs=1e-6)


class _Between2(nn.Module):
    """a (3→4) → something between → b (4→2, 1×1, weights [[1, 2, 3, 4], [-1, -2, -3, -4]], no bias): red-team
    cases of the second round, each a number once stated wrong or a report that failed."""

    def __init__(self, between: str) -> None:
        super().__init__()
        self.a, self.b, self.between = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1, bias=False), between
        with torch.no_grad():
            self.b.weight.copy_(torch.tensor([[1.0, 2, 3, 4], [-1, -2, -3, -4]]).view(2, 4, 1, 1))
        self.register_buffer("keep", torch.ones(4, dtype=torch.bool))
        self.register_buffer("divisor", torch.cat([-torch.ones(1, 4, 8, 4), 3 * torch.ones(1, 4, 8, 4)], 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.between == "divide by a constant over positions":
            y = y / self.divisor
        elif self.between == "a mask keeping every channel":
            y = y[:, self.keep]
        elif self.between == "torch.batch_norm":  # aten's order: weight, bias, running mean, running var
            scale, shift = torch.tensor([1.0, -1, 2, 0.5]), torch.tensor([3.0, 0.1, 1, 2])
            y = torch.batch_norm(
                y, scale, shift, torch.zeros(4), torch.tensor([1.0, 1, 4, 0.25]), False, 0.0, 0.0, False
            )
        return self.b(y)


@pytest.mark.parametrize(
    ("between", "expected"),
    [
        ("divide by a constant over positions", [(3, -4 / 3), (2, -1.0), (1, -2 / 3), (0, -1 / 3)]),
        ("a mask keeping every channel", [(3, 4.0), (2, 3.0), (1, 2.0), (0, 1.0)]),
        ("torch.batch_norm", [(3, 4.0), (2, 3.0), (1, -2.0), (0, 1.0)]),
    ],
)
def test_a_linear_path_of_the_second_round_gives_the_true_strengths(
    between: str, expected: list[tuple[int, float]], tmp_path: Path
) -> None:
    """x / c with c -1 on half the positions and 3 on the other: the mean of 1/c (-1/3), not 1 / mean(c) (1); a
    boolean mask keeping all four channels: channel c stays c (it was read as indices 1, 1, 1, 1); torch.batch_norm
    takes its arguments in aten's order, not F.batch_norm's (its signs came out wrong)."""
    torch.manual_seed(0)
    layer = _inputs(_Between2(between).eval(), torch.rand(2, 3, 8, 8), tmp_path)["b"]
    found = [(i["channel"], i["weight"]) for i in layer["inputs"][0]]
    assert [c for c, _ in found] == [c for c, _ in expected]
    assert [w for _, w in found] == pytest.approx([w for _, w in expected], rel=1e-4)


class _Partial(nn.Conv2d):
    """FasterNet's partial convolution: its weight reads the first 2 of the 4 channels it is called with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([super().forward(x[:, :2]), x[:, 2:]], 1)


def test_a_layer_that_reads_part_of_its_input_says_so_and_the_report_is_written(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _Partial(2, 2, 3, padding=1), nn.Conv2d(4, 2, 1))
    layers = _inputs(model.eval(), torch.rand(2, 3, 8, 8), tmp_path)
    why = layers["2"]["inputs_unknown"]
    assert "does not apply its weight (2 input channels) to what it is called with (4×8×8, 4 along" in why
    assert layers["3"]["inputs"]


class _Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.uniform_(0, 0.1)
            self.conv1.bias.zero_()
            self.conv2.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def test_a_users_hook_that_changes_an_output_counts_once(tmp_path: Path) -> None:
    """The probing pass replays a layer's kept output, and the user's hook runs on it again: kept after that
    hook, the change was made twice, and channels 0 and 1, which it lowers to about half on, went off."""
    torch.manual_seed(0)
    model = _Hooked().eval()
    model.conv1.register_forward_hook(lambda m, args, out: out - torch.tensor([0.6, 0.6, -0.6, -0.6]).view(1, 4, 1, 1))
    entries = _inputs(model, torch.rand(2, 3, 12, 12), tmp_path)["conv2"]["inputs"][0]
    assert sorted(e["channel"] for e in entries) == [0, 1, 2, 3]
    assert {e["channel"]: e["weight"] for e in entries}[2] == pytest.approx(1.0)


def test_a_flat_channel_under_an_instance_norm_is_no_input(tmp_path: Path) -> None:
    """A pruned channel (constant) leaves an instance norm as 0 whatever is added to it; held, its scale would be
    1 / sqrt(eps), about 316, and it came out the strongest input."""
    torch.manual_seed(0)
    model = KnownWiring().eval()
    model.bn = nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        model.bn.bias.fill_(0.5)  # every channel on after the ReLU, the flat one too
        model.conv1.weight[3] = 0.0  # channel 3: its bias alone, the same everywhere
    entries = _inputs(model, torch.rand(2, 3, 16, 16), tmp_path)["conv2"]["inputs"][0]
    assert 3 not in [e["channel"] for e in entries] and (entries[0]["channel"], entries[0]["weight"] < 0) == (1, True)


class _Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.4)  # the probing pass runs it while the sections (and their filters) are made
        return torch.relu(x)


def test_weights_computed_in_forward_are_read_once_not_beside_the_probing_pass(tmp_path: Path) -> None:
    """The filters read a StdConv2d-like layer's weight by running its forward, once on the main thread while
    the probing pass (on another) had that forward replaced by its replay: some layers then drew their parameter
    as stored, under a false reason, and the replay lost count of its calls."""
    model = nn.Sequential(_CenteredConv(3, 4, 3), _Slow(), _CenteredConv(4, 4, 3), _Slow(), _CenteredConv(4, 2, 3))
    build_report(model.eval(), torch.rand(2, 3, 16, 16), tmp_path / "r.html", QUIET)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("as its forward computes it from its parameter (_CenteredConv)") == 3
    assert "could not be read" not in page and "no one weight" not in page


class _SmallMaps(nn.Module):
    """a (3→6) → BatchNorm → b (6→2, 3×3, padding 1, stride ``stride``): a linear path on small maps."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 2, 3, stride, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.bn(self.a(x)))


@pytest.mark.parametrize(("side", "stride"), [(5, 1), (8, 2)])
def test_expanded_weights_are_the_rise_of_the_channels_mean_on_small_maps(
    side: int, stride: int, tmp_path: Path
) -> None:
    """Each tap counts by its share of the positions at which it reads the map, not the zero padding: the kernel
    summed over space alone was off by up to 60 % on densenet121's 5×5 maps and 2× on a strided one."""
    torch.manual_seed(0)
    model, samples = _SmallMaps(stride).eval(), torch.rand(2, 3, side, side)
    found = _inputs(model, samples, tmp_path)["b"]
    assert found["inputs_method"] == EXPANDED
    with torch.no_grad():
        before = model.a(samples)
        for o, entries in enumerate(found["inputs"]):
            for entry in entries:
                raised = before.clone()
                raised[:, entry["channel"]] += 1.0
                truth = (model.b(model.bn(raised)) - model.b(model.bn(before)))[:, o].mean()
                assert entry["weight"] == pytest.approx(float(truth), rel=1e-4, abs=1e-6)


def test_a_channel_nothing_gets_through_to_says_so(tmp_path: Path) -> None:
    """Output 0 reads only conv1's channel 3, which its ReLU never lets through: its row was empty, unexplained."""
    model = KnownWiring().eval()
    with torch.no_grad():
        model.conv2.weight[0].zero_()
        model.conv2.weight[0, 3] = 1.0
        model.bn.bias[3] = -100.0
    found = _inputs(model, torch.rand(2, 3, 16, 16), tmp_path)["conv2"]
    assert found["inputs"][0] == [] and found["inputs"][1]
    build_report(model, torch.rand(2, 3, 16, 16), tmp_path / "r.html", QUIET)
    row = re.search(r'<li id="layer-conv2-channel-0">.*?</li>', (tmp_path / "r.html").read_text(encoding="utf-8"))
    assert row is not None and "no input with a strength other than 0" in row[0]
