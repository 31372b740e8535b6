"""Layer ids as addresses: readable (the module's name as written), escaped where the name needs it, unique in
a page and, as a scan folder's file names, even where case does not count; older reports' addresses still land."""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from featviz_report import ReportConfig, build_report, scan_dataset
from featviz_report.render.anchors import layer_ids, legacy_ids, old_ids, page_names

ID = re.compile(r"layer-[A-Za-z0-9._~@-]+")
HOSTILE = ["a b", "x#/%", 'q"', "<script>", "é中", "Conv", "conv", "a~20b", "X_channel_1", "x"]


class Hostile(nn.Module):
    """A 1×1 conv per hostile name in a row, then ``block.0`` (a dotted name) run twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        for name in HOSTILE:
            self.add_module(name, nn.Conv2d(3, 3, 1))
        self.block = nn.Sequential(nn.Conv2d(3, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in HOSTILE:
            x = torch.relu(getattr(self, name)(x))
        return self.block(self.block(x)).mean((2, 3))


NAMES = [*HOSTILE, "block.0", "block.0 (call 2)"]
IDS = ["a~20b", "x~23~2F~25", "q~22", "~3Cscript~3E", "~C3~A9~E4~B8~AD", "Conv", "conv", "a~7E20b"]
IDS += ["X_channel_1", "x", "block.0", "block.0@2"]


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.nodes: list[str] = []
        self.old: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.ids += [a["id"]] if "id" in a else []
        self.hrefs += [a["href"][1:]] if a.get("href", "").startswith("#layer-") else []
        self.nodes += [a["data-node"]] if "data-node" in a else []
        if tag == "section" and "data-old" in a:
            self.old[a["data-old"]] = a["id"]


def _parse(html: str) -> _Ids:
    parser = _Ids()
    parser.feed(html)
    return parser


def _config(**changes: object) -> ReportConfig:
    return ReportConfig(quiet=True, input_size=8, normalize="none", **changes)  # type: ignore[arg-type]


def test_an_id_is_the_qualified_name_as_written() -> None:
    names = ["layer3.0.conv1", "features.0", "Mixed_5b.branch1x1.conv", "blocks.0.attn.qkv"]
    assert layer_ids(names) == names
    assert layer_ids(["conv1", "conv1 (call 2)", "conv1@2"]) == ["conv1", "conv1@2", "conv1~402"]
    assert legacy_ids(names) == ["layer3-0-conv1", "features-0", "mixed-5b-branch1x1-conv", "blocks-0-attn-qkv"]


def test_an_old_id_that_means_something_else_on_a_new_page_is_not_kept() -> None:
    names = ["Conv", "conv", "X_channel_1", "x", "a.b"]
    ids = layer_ids(names)  # old: conv, conv-2, x-channel-1, x, a-b
    assert old_ids(names, ids) == {"conv": "conv-2", "a.b": "a-b"}  # conv is a new id, x-channel-1 x's channel


def test_no_id_is_another_layers_channel_address() -> None:
    ids = layer_ids(["x", "x-channel-1", "x-channel", "x-channel", "x-channel-1 (call 2)"])
    assert ids == ["x", "x~2Dchannel-1", "x-channel", "x~2Dchannel-2", "x-channel-1@2"]
    addresses = {f"{i}-channel-{c}" for i in ids for c in range(4)}
    assert not addresses & set(ids), "#layer-x-channel-1 would open channel 1 of x, not the layer"


def test_a_scan_folder_of_a_very_long_name_is_written(tmp_path: Path) -> None:
    """Its page name is shortened; the old rule's name, too long for any disk, gets no redirect."""
    data, site = _noise(tmp_path / "data", 2), tmp_path / "site"
    model = nn.Sequential()
    model.add_module("c" * 250, nn.Conv2d(3, 2, 1))
    scan_dataset(model, [data], site, _config(format="dir", top_k=2, graph=False, loader_workers=0))
    assert [len(p.name) for p in site.glob("layer-*.html")] == [len(page_names(["c" * 250])[0])]


def test_case_folded_and_long_ids_get_distinct_file_names() -> None:
    long = "m" * 300
    pages = page_names(["Conv", "conv", "CONV", "conv+2", long, long + "x"])
    assert pages[:4] == ["layer-Conv.html", "layer-conv+2.html", "layer-CONV+3.html", "layer-conv+2+2.html"]
    assert len({p.lower() for p in pages}) == len(pages) and all(len(p) <= 6 + 200 + 5 for p in pages)


def test_hostile_names_give_unique_valid_escaped_ids_in_the_page_and_the_json(tmp_path: Path) -> None:
    build_report(Hostile(), torch.rand(2, 3, 8, 8), tmp_path / "r.html", _config(), json_out=tmp_path / "r.json")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    page = _parse(html)
    sections = [i for i in page.ids if ID.fullmatch(i) and "-channel-" not in i and i not in page.old]
    assert sections == [f"layer-{i}" for i in IDS]
    assert [layer["id"] for layer in json.loads((tmp_path / "r.json").read_text())["layers"]] == sections
    assert not [i for i, n in Counter(page.ids).items() if n > 1], "every element id is unique"
    assert set(page.hrefs) <= set(page.ids) and set(page.nodes) <= set(IDS)
    assert "&lt;script&gt;" in html and html.count("<script") == 2  # the page's data and its script only
    old = {"a-b": "a~20b", "q": "q~22", "script": "~3Cscript~3E", "layer": "~C3~A9~E4~B8~AD", "conv-2": "conv"}
    old |= {"a-20b": "a~7E20b", "x-2": "x", "block-0": "block.0", "block-0-call-2": "block.0@2"}
    assert page.old == {f"layer-{o}": f"layer-{n}" for o, n in old.items()}  # not x (x#/%), nor x-channel-1
    assert page.old.keys() <= set(page.ids), "an old address lands without script too"


def _noise(folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"noise-{i}.png")
    return folder


def test_a_scan_folder_keeps_every_layer_page_apart_and_redirects_old_names(tmp_path: Path) -> None:
    data, site = _noise(tmp_path / "data", 4), tmp_path / "site"
    scan_dataset(Hostile(), [data], site, _config(format="dir", top_k=2, graph=False, loader_workers=0))
    pages = page_names(IDS[:-1])  # a scan keeps a module's first call
    assert pages[5:7] == ["layer-Conv.html", "layer-conv+2.html"]
    for name, page in zip(NAMES, pages):
        text = (site / page).read_text(encoding="utf-8")
        assert re.findall(r'<section id="[^"]*"[^>]*data-layer="([^"]*)"', text) == [_escaped(name)]
    written = {p.name for p in site.glob("layer-*.html")}
    assert len({p.lower() for p in written}) == len(written) == 11 + 9, "no two share a name but for case"
    redirects = {"layer-a-b.html": "layer-a~20b.html", "layer-block-0.html": "layer-block.0.html"}
    redirects |= {"layer-x-2.html": "layer-x.html", "layer-script.html": pages[3]}
    for old, new in redirects.items():
        text = (site / old).read_text(encoding="utf-8")
        assert f'content="0; url={new}"' in text and f'href="{new}"' in text
    assert "layer-conv.html" not in written, "Conv's old page is its new one but for case: no redirect over it"
    assert "layer-x.html" in written and "url=" not in (site / "layer-x.html").read_text(), "x#/%'s old name is x's"
    scan_dataset(nn.Sequential(nn.Conv2d(3, 3, 1)), [data], site, _config(format="dir", top_k=2, graph=False))
    assert sorted(p.name for p in site.glob("*.html")) == ["index.html", "layer-0.html"], "the old pages are ours"


def _escaped(name: str) -> str:
    return name.replace("&", "&amp;").replace('"', "&#34;").replace("<", "&lt;").replace(">", "&gt;")
