"""graph.py and graph_layout.py: the graph of what ran, for any eager model, drawn inline and linked."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from conftest import TinyCNN, hooks_left, read_page
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.cli import main
from featviz_report.graph.record import record_graph


class Branchy(nn.Module):
    """A skip connection (add), a concatenation, a module called twice, a Python loop and a branch on
    the data: what torch.fx.symbolic_trace cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.act = nn.ReLU()
        self.side = nn.Conv2d(4, 2, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        for _ in range(2):  # a Python loop: the block's modules run twice
            x = self.act(self.block(x) + x)
        if x.mean() > -1e9:  # data-dependent control flow
            x = torch.cat([x, self.side(x)], dim=1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


INPUTS = torch.rand(2, 3, 8, 8)


def _incoming(graph, node_id):  # type: ignore[no-untyped-def]
    return [a for a, b in graph.edges if b == node_id]


def test_what_ran_is_recorded_where_fx_cannot_trace() -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    with pytest.raises(Exception):  # noqa: B017 - whatever fx raises on data-dependent control flow
        torch.fx.symbolic_trace(model)
    graph = record_graph(model, INPUTS)
    by_name: dict[str, list] = {}
    for node in graph.nodes:
        by_name.setdefault(node.name, []).append(node)
    assert [n.call for n in by_name["block.0"]] == [0, 1], "a module called twice is two nodes of one layer"
    adds = by_name["add"]
    assert len(adds) == 2 and all(len(_incoming(graph, n.id)) == 2 for n in adds), "the skip joins the branch"
    (cat,) = by_name["cat"]
    assert len(_incoming(graph, cat.id)) == 2 and cat.shape == (6, 8, 8)
    assert by_name["head"][0].shape == (3,) and "flatten" in by_name
    assert not any("weight" in n.name or "bias" in n.name for n in graph.nodes), "parameters are not nodes"
    assert graph.nodes[0].kind == "input" and graph.nodes[-1].kind == "output"
    assert _incoming(graph, graph.nodes[-1].id) == [by_name["head"][0].id]
    assert hooks_left(model) == []


def test_the_page_draws_the_graph_with_links_to_every_captured_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy().train()
    out, sidecar = tmp_path / "r.html", tmp_path / "r.json"
    report = build_report(model, torch.rand(3, 3, 8, 8), out, ReportConfig(quiet=True), json_out=sidecar)
    assert model.training and all(m.training for m in model.modules()) and hooks_left(model) == []
    text = out.read_text(encoding="utf-8")
    start, end = text.index('<svg class="graph"'), text.index("</svg>", text.index('<svg class="graph"'))
    svg = ET.fromstring(text[start : end + 6])  # well-formed
    links = {a.get("href") for a in svg.iter("{http://www.w3.org/2000/svg}a")} | {a.get("href") for a in svg.iter("a")}
    sections = {f"#layer-{layer.slug}" for layer in report.layers}
    assert sections <= links, sections - links
    assert "http" not in text[start:end] and "style=" not in text[start:end]  # nothing fetched, CSP kept
    assert read_page(out).sections  # the page still parses around it
    data = json.loads(sidecar.read_text())
    assert all(a < b for a, b in data["graph"]["edges"]), "edges run forward: no cycles"
    assert {n["op"] for n in data["graph"]["nodes"]} >= {"Conv2d", "BatchNorm2d", "add", "cat", "Linear"}
    ids = {f"layer-{layer.slug}" for layer in report.layers}
    linked = {node["layer"] for node in data["graph"]["nodes"] if node["layer"]}
    assert linked == ids
    merges = [n for n in data["graph"]["nodes"] if sum(1 for e in data["graph"]["edges"] if e[1] == n["id"]) > 1]
    assert {n["name"] for n in merges} == {"add", "cat"}


def test_no_graph_leaves_it_out_and_a_missing_engine_says_why(
    tmp_path: Path, tiny_cnn: TinyCNN, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    assert main(["-o", str(out), "--no-graph", "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert 'id="graph"' not in out.read_text() and "graph" not in json.loads((tmp_path / "r.json").read_text())
    import featviz_report.graph.layout as layout

    monkeypatch.setattr(layout, "_engine", lambda: None)
    build_report(tiny_cnn, torch.rand(2, 1, 8, 8), out, ReportConfig(quiet=True))
    text = out.read_text()
    assert 'id="graph"' in text and "no graph: the graphviz-pure program is missing" in text
    assert '<svg class="graph"' not in text
    capsys.readouterr()


def test_a_big_graph_folds_its_repeated_blocks_and_draws_each_inside(tmp_path: Path) -> None:
    block = lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())  # noqa: E731
    model = nn.Sequential(nn.Conv2d(3, 4, 1), *[block() for _ in range(40)]).eval()  # 121 calls
    out, sidecar = tmp_path / "r.html", tmp_path / "r.json"
    build_report(model, torch.rand(1, 3, 6, 6), out, ReportConfig(quiet=True), json_out=sidecar)
    text = out.read_text(encoding="utf-8")
    overview = text[text.index('<svg class="graph"') : text.index("</svg>")]
    assert overview.count('class="node group"') == 40 and 'href="#module-1"' in overview
    assert text.count('<details id="module-') == 40 and '<details id="module-40"' in text
    detail = text[text.index('<details id="module-1"') :]
    assert 'href="#layer-1.0"' in detail[: detail.index("</details>")], "the inside links to the layer's section"
    data = json.loads(sidecar.read_text())["graph"]
    assert len(data["nodes"]) == 123 and len(data["folded"]) == 40  # every call is in the JSON, folded or not


def test_comparisons_and_scans_draw_the_graph_too(tmp_path: Path, image_folder: Path) -> None:
    from featviz_report import compare_checkpoints, scan_dataset

    torch.manual_seed(0)
    before, after = Branchy(), Branchy()
    compared = compare_checkpoints(before, after, torch.rand(2, 3, 8, 8), config=ReportConfig(quiet=True))
    scanned = scan_dataset(Branchy(), [image_folder], config=ReportConfig(quiet=True, input_size=8))
    for report in (compared, scanned):
        assert report is not None and report.graph is not None and report.graph.overview is not None
        names = [n.name for n in report.graph.recorded.nodes]
        assert "cat" in names and names.count("add") == 2


class Odd(nn.Module):
    """Module names with control characters, a NUL, a backslash and a line break; a property op (x.T)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("a\x1b[31mred\x07", nn.Conv2d(3, 2, 3))
        block = nn.Sequential(nn.Conv2d(2, 2, 1))
        self.add_module("back\\slash\nnew", block)
        self.add_module("n\x00ul", nn.Conv2d(2, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x.mT.mT


def test_odd_names_keep_their_graph_and_their_frames_read_as_written(tmp_path: Path) -> None:
    report = build_report(Odd(), torch.rand(1, 3, 8, 8), tmp_path / "r.html", ReportConfig(quiet=True))
    assert report.graph is not None and report.graph.overview is not None, report.graph and report.graph.note
    assert [f.name for f in report.graph.overview.clusters] == ["back\\slash\nnew"]
    assert "mT" in [n.name for n in report.graph.recorded.nodes]


class Dense(nn.Module):
    """Every layer reads the sum of every earlier output, all at the top level (no frames): 30 layers make
    92 nodes and 526 edges, far under the old 4,000-edge limit, yet about 13,600 nodes for dot to place
    (12 s of dot on one core, 30 s on a busy machine)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(1, 1, 1) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for layer in self.layers:
            outs.append(layer(torch.stack(outs).sum(0)))
        return outs[-1]


class DenseLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(1), nn.ReLU(), nn.Conv2d(1, 1, 1))

    def forward(self, earlier: list[torch.Tensor]) -> torch.Tensor:
        return self.body(torch.cat(earlier, 1).sum(1, keepdim=True))


class DenseBlock(nn.Module):
    """densenet's pattern: each layer a module (a frame) that concatenates every earlier output."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer() for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for layer in self.layers:
            outs.append(layer(outs))
        return torch.cat(outs, 1)


def _no_dot(*args: object, **kwargs: object) -> None:
    raise AssertionError("dot should not have been started")


def test_a_graph_too_large_to_lay_out_is_turned_away_before_dot_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featviz_report.graph.layout as layout

    monkeypatch.setattr(layout.subprocess, "run", _no_dot)  # no wait for dot: the size decides
    sidecar = tmp_path / "r.json"
    config = ReportConfig(quiet=True, layers=("layers.0",))
    report = build_report(Dense(30), torch.rand(1, 1, 4, 4), tmp_path / "r.html", config, json_out=sidecar)
    assert report.graph is not None and report.graph.overview is None
    note = report.graph.note
    assert note.startswith("no graph: too large to lay out") and "92 nodes and 526 edges" in note, note
    assert f"over the limit of {layout.MAX_LAYOUT_SIZE:,}" in note and "did not run" not in note
    assert note in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert json.loads(sidecar.read_text())["graph"]["note"] == note


def test_dense_graphs_under_the_bound_are_still_laid_out() -> None:
    from featviz_report.graph.layout import MAX_LAYOUT_SIZE, _drawings, layout_graph, layout_size

    for model in (Dense(12), DenseBlock(24)):  # about 900 and 1,850 nodes to place
        graph = record_graph(model.eval(), torch.rand(1, 1, 4, 4))
        assert layout_size(_drawings(graph)) < MAX_LAYOUT_SIZE
        view = layout_graph(graph)
        assert view.overview is not None, view.note


def test_a_layout_that_times_out_or_cannot_start_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    import featviz_report.graph.layout as layout

    graph = record_graph(Branchy().eval(), INPUTS)

    def timed_out(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired("graphviz-pure", layout.TIMEOUT_S)

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(layout.subprocess, "run", timed_out)
    note = layout.layout_graph(graph).note
    assert note.startswith(f"no graph: graphviz-pure timed out after {layout.TIMEOUT_S} s (") and "edges" in note
    monkeypatch.setattr(layout.subprocess, "run", refused)
    note = layout.layout_graph(graph).note
    assert note == "no graph: graphviz-pure could not be started (PermissionError: Permission denied)"
