"""A static site of reports over a training run: a held-out training loop recorded with the Recorder,
the index's numbers against each step's JSON, the model left untouched, and the CLI rebuilding the index."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featviz_report import Recorder, ReportConfig, build_report
from featviz_report.cli import main
from featviz_report.errors import InputError, OutputError, UsageError
from featviz_report.training.chart import step_labels, tick_label, value_ticks
from featviz_report.training.index import read_steps
from tests.conftest import TinyCNN, hooks_left

CONFIG = ReportConfig(input_size=8, graph=False)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model: torch.nn.Module, steps: int, seed: int) -> None:
    """A few SGD steps on random digits-sized data; leaves gradients in place, as a training loop does."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        x = torch.rand(16, 1, 8, 8, generator=generator)
        y = torch.randint(0, 3, (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.fixture
def recorded(tmp_path: Path, image_folder: Path) -> tuple[Path, dict[int, dict[str, torch.Tensor]]]:
    """A training loop recording steps 0, 3 and 6; returns the site and the weights at each step."""
    torch.manual_seed(0)
    model = TinyCNN()
    recorder = Recorder(tmp_path / "site", image_folder, CONFIG)
    weights = {}
    for step in (0, 3, 6):
        if step:
            _train(model, 3, step)
        weights[step] = _state(model)
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        rng = torch.get_rng_state()
        recorder.record(model, step)
        assert model.training and not hooks_left(model)
        assert all(torch.equal(v, weights[step][k]) for k, v in model.state_dict().items())
        assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(p.requires_grad for p in model.parameters())
    return tmp_path / "site", weights


def test_index_lists_every_step_with_its_own_numbers_and_weight_change(
    recorded: tuple[Path, dict[int, dict[str, torch.Tensor]]],
) -> None:
    site, weights = recorded
    index = json.loads((site / "index.json").read_text())
    assert [s["step"] for s in index["steps"]] == [0, 3, 6]
    for entry in index["steps"]:
        page, sidecar = site / entry["report"], site / entry["json"]
        assert page.is_file() and sidecar.is_file() and entry["report"] == f"./step-{entry['step']:06d}/index.html"
        report = json.loads(sidecar.read_text())
        assert report["training"]["step"] == entry["step"]
        for layer in report["layers"]:
            numbers = entry["layers"][layer["name"]]
            for key in ("mean", "std", "min", "max", "zero_fraction", "nonpositive_fraction", "dead_channels"):
                assert numbers[key] == layer["stats"][key]
        assert entry["predictions"] == [s["prediction"]["label"] for s in report["samples"]]
    for before, after in ((0, 3), (3, 6)):
        step = next(s for s in index["steps"] if s["step"] == after)
        a = torch.cat([weights[before]["conv1.weight"].flatten(), weights[before]["conv1.bias"]])
        b = torch.cat([weights[after]["conv1.weight"].flatten(), weights[after]["conv1.bias"]])
        expected = float((b - a).double().norm() / a.double().norm())
        assert step["layers"]["conv1"]["weight_change"] == pytest.approx(expected, rel=1e-9)
        assert expected > 0.01
    assert index["steps"][0]["layers"]["conv1"]["weight_change"] is None


def test_index_page_links_are_relative_and_it_needs_no_script(
    recorded: tuple[Path, dict[int, dict[str, torch.Tensor]]],
) -> None:
    site, _ = recorded
    html = (site / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'(?:href|src)="([^"]*)"', html)
    assert links and all(not re.match(r"^([a-z]+:|/|\\)", link) for link in links)
    assert {"./step-000000/index.html", "./step-000003/index.html", "./step-000006/index.html", "index.json"} <= set(
        links
    )
    assert str(site) not in html and str(site) not in (site / "index.json").read_text()
    assert "<script" not in html and "default-src 'none'" in unescape(html)  # attribute text is entity-escaped
    assert html.count("<figcaption>mean ± std</figcaption>") == 3  # one chart per layer: conv1, conv2, head
    step_page = (site / "step-000003" / "index.html").read_text(encoding="utf-8")
    assert 'href="../index.html"' in step_page and "(after 0)" in step_page


def test_cli_rebuilds_a_deleted_index_from_the_reports_alone(
    recorded: tuple[Path, dict[int, dict[str, torch.Tensor]]],
) -> None:
    site, _ = recorded
    before = {name: (site / name).read_bytes() for name in ("index.json", "index.html")}
    for name in before:
        (site / name).unlink()
    done = subprocess.run([sys.executable, "-m", "featviz_report", "site", str(site)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "3 steps, 0 to 6" in done.stdout
    assert {name: (site / name).read_bytes() for name in before} == before
    empty = site.parent / "empty"
    empty.mkdir()
    failed = subprocess.run(
        [sys.executable, "-m", "featviz_report", "site", str(empty)], capture_output=True, text=True
    )
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "no step reports" in failed.stderr


def test_reports_made_separately_are_gathered_by_the_number_in_their_names(tmp_path: Path, image_folder: Path) -> None:
    site = tmp_path / "gathered"
    site.mkdir()
    torch.manual_seed(0)
    model = TinyCNN()
    for epoch in (10, 2):
        _train(model, 2, epoch)
        build_report(model, image_folder, site / f"epoch-{epoch}.html", CONFIG, json_out=site / f"epoch-{epoch}.json")
    steps = read_steps(site)
    assert [(s.step, s.report, s.json) for s in steps] == [
        (2, "./epoch-2.html", "./epoch-2.json"),
        (10, "./epoch-10.html", "./epoch-10.json"),
    ]
    assert all(layer["weight_change"] is None for layer in steps[0].layers.values())
    html = subprocess.run([sys.executable, "-m", "featviz_report", "site", str(site), "--quiet"], capture_output=True)
    assert html.returncode == 0 and html.stdout == b""
    assert "--compare CHECKPOINT_10" in (site / "index.html").read_text(encoding="utf-8")


def test_recording_does_not_change_what_training_computes(tmp_path: Path, image_folder: Path) -> None:
    """Two identical runs with dropout, one recorded every step: the final weights are bit-identical."""

    def run(recorder: Recorder | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(TinyCNN(), torch.nn.Dropout(0.5))
        for step in range(3):
            x = torch.rand(8, 1, 8, 8)
            model.train()
            loss = model(x).square().mean()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
            if recorder is not None:
                recorder.record(model, step)
        return _state(model)

    plain, watched = run(None), run(Recorder(tmp_path / "site", image_folder, CONFIG))
    assert all(torch.equal(plain[k], watched[k]) for k in plain)


class _WithExtraState(TinyCNN):
    """TinyCNN whose output is scaled by a number kept as extra state (not a tensor) in its state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def get_extra_state(self) -> dict[str, object]:
        return {"scale": self.scale, "names": ["a"]}

    def set_extra_state(self, state: dict[str, object]) -> None:
        self.scale = float(state["scale"])  # type: ignore[arg-type]


def test_a_model_with_extra_state_is_recorded_and_compared(tmp_path: Path, image_folder: Path) -> None:
    torch.manual_seed(0)
    model = _WithExtraState()
    recorder = Recorder(tmp_path / "site", image_folder, CONFIG, compare=True)
    recorder.record(model, 0)
    model.scale = 3.0  # extra state that changes between the steps
    _train(model, 2, 1)
    recorder.record(model, 1)
    assert model.scale == 3.0
    compare = json.loads((tmp_path / "site" / "index.json").read_text())["steps"][1]["compare"]
    assert compare and (tmp_path / "site" / compare).is_file()


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning (dev set-up) is not installed")
def test_lightning_callback_records_every_n_epochs(tmp_path: Path, image_folder: Path) -> None:
    import lightning as L

    from featviz_report.training.lightning import FeatvizCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyCNN()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 3, (32,)))
    callback = FeatvizCallback(tmp_path / "site", image_folder, every_n_epochs=2, config=CONFIG)
    trainer = L.Trainer(
        max_epochs=4, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=8))
    index = json.loads((tmp_path / "site" / "index.json").read_text())
    assert [s["step"] for s in index["steps"]] == [2, 4]
    assert np.isfinite(index["steps"][1]["layers"]["net.conv1"]["weight_change"])


def _lightning_fit(pl_module: torch.nn.Module, callback: object, steps: int = 2) -> object:
    """A real, tiny CPU training run of ``steps`` steps (4 images of 8×8 per step: one epoch per step)."""
    import lightning as L

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(4, 1, 8, 8), torch.randint(0, 3, (4,)))
    trainer = L.Trainer(
        max_steps=steps, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(pl_module, torch.utils.data.DataLoader(data, batch_size=4))
    assert trainer.global_step == steps, "training ran to its end"
    return trainer


def _featviz_warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("featviz-report: warning:")]


def _lightning_modules() -> dict[str, type]:
    """LightningModules without a forward: Lightning's quick-start shape (an encoder and a decoder that
    training_step calls) and one with a single child; and one whose recording fails outside training."""
    import lightning as L

    class QuickStart(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Sequential(
                torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1)
            )
            self.decoder = torch.nn.Conv2d(4, 1, 3, padding=1)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            return F.mse_loss(self.decoder(self.encoder(batch[0])), batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class SingleChild(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyCNN()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class FailsInEval(SingleChild):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                raise RuntimeError("boom: this model only runs in training mode")
            return self.net(x)

    return {"quick": QuickStart, "single": SingleChild, "fails": FailsInEval}


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning (dev set-up) is not installed")
def test_lightning_callback_never_ends_training_and_records_what_it_is_told(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featviz_report.training.lightning import FeatvizCallback

    modules = _lightning_modules()

    def callback(site: str, **options: object) -> FeatvizCallback:
        return FeatvizCallback(tmp_path / site, image_folder, config=CONFIG, **options)

    def steps(site: str) -> list[tuple[int, list[str]]]:
        index = json.loads((tmp_path / site / "index.json").read_text())
        return [(s["step"], sorted(s["layers"])) for s in index["steps"]]

    capsys.readouterr()
    _lightning_fit(modules["quick"](), callback("quick"), steps=3)  # no forward, two children: says so once
    (warning,) = _featviz_warnings(capsys)
    assert "QuickStart has no forward and 2 child modules (encoder, decoder)" in warning and "module=" in warning
    assert not (tmp_path / "quick").exists()

    _lightning_fit(modules["quick"](), callback("encoder", module="encoder"))
    assert steps("encoder") == [(1, ["0", "2"]), (2, ["0", "2"])] and _featviz_warnings(capsys) == []
    _lightning_fit(modules["quick"](), callback("chosen", module=lambda m: m.encoder[:2]))
    assert steps("chosen") == [(1, ["0"]), (2, ["0"])] and _featviz_warnings(capsys) == []

    _lightning_fit(modules["single"](), callback("single"))  # no forward, one child: that child
    assert steps("single") == [(1, ["conv1", "conv2", "head"]), (2, ["conv1", "conv2", "head"])]
    assert _featviz_warnings(capsys) == []

    for site, module, options, said in (
        ("fails", "fails", {}, "could not record epoch 1: "),  # its forward raises outside training
        ("typo", "quick", {"module": "encodr"}, "module='encodr': QuickStart has no such submodule"),
        ("notamodule", "quick", {"module": lambda m: "encoder"}, "returned str, not an nn.Module"),
    ):
        _lightning_fit(modules[module](), callback(site, **options), steps=3)
        (warning,) = _featviz_warnings(capsys)  # once, not once per epoch
        assert said in warning and warning.endswith("training goes on"), warning
        assert not (tmp_path / site / "index.json").exists()
    with pytest.raises(UsageError, match="module must be a submodule's name or a function"):
        callback("bad", module=3)


def test_site_never_overwrites_an_index_it_did_not_write(
    recorded: tuple[Path, dict[int, dict[str, torch.Tensor]]],
) -> None:
    site, _ = recorded
    (site / "index.html").write_text("<html>my own landing page</html>", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "featviz_report", "site", str(site)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a featviz-report site index" in done.stderr
    assert (site / "index.html").read_text(encoding="utf-8") == "<html>my own landing page</html>"


def test_hostile_names_and_malformed_sidecars_cannot_break_the_index(
    recorded: tuple[Path, dict[int, dict[str, torch.Tensor]]],
) -> None:
    site, _ = recorded
    page = (site / "step-000003" / "index.html").read_bytes()
    report = json.loads((site / "step-000003" / "report.json").read_text())
    for name in ("https:evil.example-88", "javascript:alert(1)-77", "a?b#c-99"):
        (site / f"{name}.html").write_bytes(page)
        (site / f"{name}.json").write_text(json.dumps({**report, "training": None}), encoding="utf-8")
    broken = {**report, "layers": ["not a layer"], "samples": 5}
    (site / "broken-55.html").write_bytes(page)
    (site / "broken-55.json").write_text(json.dumps(broken), encoding="utf-8")
    huge = json.loads(json.dumps(report))
    huge["training"] = None
    huge["layers"][0]["stats"]["mean"] = 10**400
    (site / "huge-66.html").write_bytes(page)
    (site / "huge-66.json").write_text(json.dumps(huge), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "featviz_report", "site", str(site)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    html = (site / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'href="([^"]*)"', html)
    assert all(link.startswith("./") or link == "index.json" for link in links), links
    assert "./https%3Aevil.example-88.html" in links and "./a%3Fb%23c-99.html" in links
    index = json.loads((site / "index.json").read_text())
    assert 55 not in [s["step"] for s in index["steps"]]  # malformed: not a step
    assert next(s for s in index["steps"] if s["step"] == 66)["layers"]["conv1"]["mean"] is None


def test_a_users_index_is_refused_before_any_work(tmp_path: Path, image_folder: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="is not a featviz-report site index"):
        Recorder(site, image_folder, CONFIG).record(TinyCNN(), 1)
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(OutputError, match="cannot make the site folder"):
        Recorder(tmp_path / "file" / "sub", image_folder, CONFIG).record(TinyCNN(), 1)
    with pytest.raises(UsageError, match="whole number"):
        Recorder(site, image_folder, CONFIG).record(TinyCNN(), True)  # type: ignore[arg-type]


UNEVEN = (0, 1, 2, 5, 10, 20, 40)  # the demo's epochs: about doubling


def _record(site: Path, images: Path, steps: tuple[int, ...], seed: int, config: ReportConfig = CONFIG) -> Path:
    """A TinyCNN trained a little between ``steps``, recorded at each into ``site``."""
    torch.manual_seed(seed)
    model = TinyCNN()
    recorder = Recorder(site, images, config)
    for step in steps:
        if step:
            _train(model, 2, seed + step)
        recorder.record(model, step)
    return site


@dataclass
class Chart:
    """One chart of the index page as drawn: caption, value ticks (value, y), step labels (label, x), and per
    run its dots (cx, cy, hover title)."""

    caption: str
    ticks: list[tuple[float, float]]
    steps: list[tuple[str, float]]
    dots: dict[int, list[tuple[float, float, str]]]

    def value_at(self, cy: float) -> float:
        """The value a height on the chart stands for, read off its value ticks."""
        (v0, y0), (v1, y1) = self.ticks[0], self.ticks[-1]
        return v0 + (cy - y0) * (v1 - v0) / (y1 - y0)

    def titled(self, run: int) -> dict[int, tuple[float, str]]:
        """Run ``run``'s dots by the step their title names: (value in the title, the whole title)."""
        found = {}
        for _, _, title in self.dots.get(run, []):
            ((step, value),) = _found(r"step (\d+): (-?[0-9.]+(?:e[-+]?\d+)?)", title)
            found[int(step)] = (float(value), title)
        return found


def _found(pattern: str, text: str) -> list[tuple[str, ...]]:
    return [m if isinstance(m, tuple) else (m,) for m in re.findall(pattern, text, re.S)]


def _chart(figure: str) -> Chart:
    """One ``<figure class="chart">``'s content, read back."""
    (caption,) = _found(r"<figcaption>(.*?)</figcaption>", figure)
    (y_axis,) = _found(r'<g class="y">(.*?)</g>', figure) or [("",)]
    (x_axis,) = _found(r'<g class="x">(.*?)</g>', figure) or [("",)]
    ticks = _found(r'<line [^>]*y1="([-0-9.]+)"[^>]*/><text [^>]*>([^<]*)</text>', y_axis[0])
    steps = _found(r'<text x="([-0-9.]+)"[^>]*>([^<]*)</text>', x_axis[0])
    dot = r'<circle cx="([-0-9.]+)" cy="([-0-9.]+)"[^>]*><title>(.*?)</title>'
    return Chart(
        unescape(caption[0]),
        [(float(text), float(y)) for y, text in ticks],
        [(text, float(x)) for x, text in steps],
        {
            int(run): [(float(cx), float(cy), unescape(title)) for cx, cy, title in _found(dot, dots)]
            for run, dots in _found(r'<g class="run-(\d)">(.*?)</g>', figure)
        },
    )


def _charts(html: str) -> dict[str, list[Chart]]:
    """Every layer's charts in the page, by layer name."""
    layer = r'<div class="layer" id="layer-\d+">\s*<h3>(.*?)</h3>(.*?)</div>\s*</div>'
    return {
        unescape(name): [_chart(figure) for (figure,) in _found(r'<figure class="chart">(.*?)</figure>', body)]
        for name, body in _found(layer, html)
    }


def _is_round_spacing(ticks: list[float]) -> bool:
    """Evenly spaced, 1, 2 or 5 × 10ⁿ apart, each a whole multiple of that."""
    spacing = ticks[1] - ticks[0]
    mantissa = spacing / 10 ** math.floor(math.log10(spacing) + 1e-9)
    return (
        any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5))
        and all(abs((b - a) - spacing) < 1e-9 * max(1.0, abs(b)) for a, b in zip(ticks, ticks[1:]))
        and all(abs(t / spacing - round(t / spacing)) < 1e-6 for t in ticks)
    )


def test_every_chart_has_round_value_ticks_and_its_true_steps_evenly_spaced(tmp_path: Path, image_folder: Path) -> None:
    site = _record(tmp_path / "uneven", image_folder, UNEVEN, seed=0)
    html = (site / "index.html").read_text(encoding="utf-8")
    index = {s["step"]: s["layers"] for s in json.loads((site / "index.json").read_text())["steps"]}
    charts = _charts(html)
    assert list(charts) == ["conv1", "conv2", "head"]
    keys = {"mean ± std": "mean", "dead channels": "dead_channels", "% of outputs ≤ 0 (what a ReLU zeroes)": ""}
    keys.update({"% of outputs ≤ 0 (what a ReLU zeroes)": "nonpositive_fraction", "weight change": "weight_change"})
    for layer, layer_charts in charts.items():
        assert [c.caption for c in layer_charts] == list(keys)
        for chart in layer_charts:
            key = keys[chart.caption]
            scale = 100 if key == "nonpositive_fraction" else 1
            # the step axis: every true step labelled (seven fit), in even slots, not placed by step number
            assert [label for label, _ in chart.steps] == [str(s) for s in UNEVEN], chart.steps
            xs = [x for _, x in chart.steps]
            assert max(b - a for a, b in zip(xs, xs[1:])) - min(b - a for a, b in zip(xs, xs[1:])) < 0.2
            # the value axis: round ticks, from below the lowest value to above the highest
            values = {s: scale * v for s, v in ((s, index[s][layer][key]) for s in UNEVEN) if v is not None}
            spreads = {s: index[s][layer]["std"] if key == "mean" else 0.0 for s in values}
            ticks = [v for v, _ in chart.ticks]
            assert _is_round_spacing(ticks), (layer, key, ticks)
            assert ticks[0] <= min(v - spreads[s] for s, v in values.items()) + 1e-9
            assert ticks[-1] >= max(v + spreads[s] for s, v in values.items()) - 1e-9
            assert key not in ("dead_channels", "nonpositive_fraction", "weight_change") or ticks[0] >= 0
            assert key != "dead_channels" or all(t == int(t) for t in ticks)
            # each dot: at its step's slot, at its value's height, with its value as a hover title
            dots = chart.titled(0)
            assert sorted(dots) == sorted(values)
            for cx, cy, title in chart.dots[0]:
                step = int(re.search(r"step (\d+)", title).group(1))  # type: ignore[union-attr]
                assert cx == pytest.approx(xs[UNEVEN.index(step)], abs=0.1)
                span = ticks[-1] - ticks[0]
                assert chart.value_at(cy) == pytest.approx(values[step], abs=span * 0.002)
                assert dots[step][0] == pytest.approx(
                    values[step], rel=5e-3, abs=1e-12
                )  # as written: 3 or 4 significant digits
    assert "step 40: " in html and "step 3: " not in html


def test_the_zeros_chart_is_the_share_of_outputs_a_relu_would_zero(tmp_path: Path, image_folder: Path) -> None:
    """TinyCNN's convolutions are captured before their ReLU: their exact zeros are none, which says nothing;
    the chart draws the share of outputs <= 0, as index.json and each step's JSON have it."""
    site = _record(tmp_path / "run", image_folder, (0, 4), seed=1)
    index = json.loads((site / "index.json").read_text())
    for entry in index["steps"]:
        report = json.loads((site / entry["json"]).read_text())
        for layer in report["layers"]:
            assert entry["layers"][layer["name"]]["nonpositive_fraction"] == layer["stats"]["nonpositive_fraction"]
        conv1 = entry["layers"]["conv1"]
        assert conv1["zero_fraction"] == 0 and 0.1 < conv1["nonpositive_fraction"] < 0.9
    html = (site / "index.html").read_text(encoding="utf-8")
    (zeros,) = [c for c in _charts(html)["conv1"] if "≤ 0" in c.caption]
    titled = zeros.titled(0)
    for entry in index["steps"]:
        percent = 100 * entry["layers"]["conv1"]["nonpositive_fraction"]
        assert titled[entry["step"]][0] == pytest.approx(percent, rel=1e-3)
        assert titled[entry["step"]][1].endswith("%")
    assert "which a ReLU after the layer sets to 0" in html and "fraction of zeros" not in html


def test_a_second_run_is_drawn_on_the_same_charts_at_the_steps_and_layers_both_have(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _record(tmp_path / "uneven", image_folder, UNEVEN, seed=0)
    other_steps = (0, 1, 5, 10, 30, 40)
    other = _record(
        tmp_path / 'run <b>&"2', image_folder, other_steps, seed=7, config=replace(CONFIG, layers=("conv*",))
    )
    alone = {name: (site / name).read_bytes() for name in ("index.html", "index.json")}
    assert main(["site", str(site), "--against", str(other)]) == 0
    assert "drawn against" in capsys.readouterr().out
    html = (site / "index.html").read_text(encoding="utf-8")
    assert (site / "index.json").read_bytes() == alone["index.json"]  # the index stays this run's own
    assert html != alone["index.html"].decode("utf-8")
    assert " style=" not in html and "<script" not in html  # static SVG under the page's strict CSP
    assert "run <b>" not in html and "run &lt;b&gt;&amp;&#34;2" in html  # the folder's name, escaped
    legend = re.search(r'<p class="legend">(.*?)</p>', html, re.S).group(1)  # type: ignore[union-attr]
    assert "uneven (this site)" in legend and 'run <b>&"2' in unescape(legend)
    assert "Steps only there, left out: 30." in html and "Layers only here: head." in html
    assert "(not at 5, 40)" in unescape(html)  # weight change since another step before there
    theirs = {s["step"]: s["layers"] for s in json.loads((other / "index.json").read_text())["steps"]}
    charts = _charts(html)
    assert all(set(chart.dots) == {0} for chart in charts["head"])  # a layer the other run does not have
    for layer in ("conv1", "conv2"):
        for chart, key in zip(charts[layer], ("mean", "dead_channels", "nonpositive_fraction", "weight_change")):
            assert set(chart.dots) == {0, 1}
            assert [label for label, _ in chart.steps] == [str(s) for s in UNEVEN]  # this run's axis
            drawn = chart.titled(1)
            expected = {0, 1, 5, 10, 40} if key != "weight_change" else {1, 10}  # 1 and 10 follow 0 and 5 in both
            assert sorted(drawn) == sorted(expected), (layer, key)
            scale = 100 if key == "nonpositive_fraction" else 1
            for step, (value, title) in drawn.items():
                assert title.startswith('run <b>&"2 · step ')
                assert value == pytest.approx(
                    scale * theirs[step][layer][key], rel=5e-3, abs=1e-12
                )  # as written: 3 or 4 significant digits
            span = chart.ticks[-1][0] - chart.ticks[0][0]
            for _, cy, title in chart.dots[1]:
                step = int(re.search(r"step (\d+)", title).group(1))  # type: ignore[union-attr]
                assert chart.value_at(cy) == pytest.approx(scale * theirs[step][layer][key], abs=span * 0.002)


def test_drawing_against_a_folder_that_is_not_another_site_is_one_line(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _record(tmp_path / "site", image_folder, (0, 3), seed=0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    elsewhere = _record(tmp_path / "elsewhere", image_folder, (5, 6), seed=0)
    before = (site / "index.html").read_bytes()
    for other, said in (
        (tmp_path / "missing", "it does not exist"),
        (tmp_path / "file", "it is not a folder"),
        (tmp_path / "empty", "it is not a training-run site (no step reports"),
        (site / ".." / "site", "it is the site itself"),
        (elsewhere, "it shares no step with"),
    ):
        capsys.readouterr()
        assert main(["site", str(site), "--against", str(other)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"featviz-report: error: cannot draw against {str(other)!r}: ")
        assert said in err, err
    assert (site / "index.html").read_bytes() == before


def test_value_ticks_are_round_and_step_labels_fit() -> None:
    assert value_ticks(0.0258, 0.632) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert value_ticks(-11.48, 6.411) == pytest.approx([-15, -10, -5, 0, 5, 10])
    assert value_ticks(20, 27, whole=True) == [20, 22, 24, 26, 28]
    assert value_ticks(1, 2, whole=True) == [1, 2]  # counts: no 1.5
    assert value_ticks(0, 0, nonnegative=True) == [0, 0.5, 1]  # flat: an axis around it, none below 0
    assert value_ticks(90, 90) == pytest.approx([80, 85, 90, 95, 100])
    ticks = value_ticks(3e-6, 4.1e-5)
    assert [tick_label(t, ticks[1] - ticks[0]) for t in ticks] == ["0", "1e-5", "2e-5", "3e-5", "4e-5", "5e-5"]
    assert [tick_label(t, 0.1) for t in (-0.1, 3 * 0.1, 1e-17)] == ["-0.1", "0.3", "0"]
    assert tick_label(2.5e6, 5e5) == "2.5e6"
    assert step_labels(7, 20, 200) == list(range(7))
    assert step_labels(1000, 30, 200) == [0, 200, 400, 600, 800, 999]  # round steps of an even run, and the last
    assert step_labels(101, 30, 200)[-3:] == [60, 80, 100]
    assert step_labels(96, 30, 200)[-2:] == [80, 95]  # the last replaces one it would overlap (90)
    assert step_labels(1, 30, 200) == [0]
