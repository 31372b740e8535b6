"""A static site of reports over a training run: a held-out training loop recorded with the Recorder,
the index's numbers against each step's JSON, the model left untouched, and the CLI rebuilding the index."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featviz_report import Recorder, ReportConfig, build_report
from featviz_report.errors import InputError, OutputError, UsageError
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
            for key in ("mean", "std", "min", "max", "zero_fraction", "dead_channels"):
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
    assert html.count("<span>mean ± std</span>") == 3  # one chart per layer: conv1, conv2, head
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
