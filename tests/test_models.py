"""models.py: every kind of model spec, weights loading and its failures."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import TinyCNN
from PIL import Image
from torch import nn

from featviz_report.cli import main
from featviz_report.errors import ModelError
from featviz_report.models.resolve import load_model, load_state_dict, weights_digest


def test_torchvision_models_are_built_with_a_fixed_random_init() -> None:
    first = load_model("torchvision:resnet18")
    second = load_model("torchvision:resnet18")
    assert first.input_size == 224 and first.normalize == "imagenet"
    assert first.labels is not None and len(first.labels) == 1000
    assert torch.equal(first.module.conv1.weight, second.module.conv1.weight)


def test_unknown_torchvision_model_suggests_close_names() -> None:
    with pytest.raises(ModelError, match="did you mean resnet18"):
        load_model("torchvision:resnet81")


def test_factory_spec_imports_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            def make():
                return nn.Sequential(nn.Conv2d(3, 2, 3))
            not_a_model = 3
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("my_models:make")
    assert isinstance(loaded.module[0], nn.Conv2d) and loaded.name == "my_models:make"
    with pytest.raises(ModelError, match="has no attribute 'missing'"):
        load_model("my_models:missing")
    with pytest.raises(ModelError, match="returned int, not a torch.nn.Module"):
        load_model("my_models:not_a_model")
    with pytest.raises(ModelError, match="cannot import 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:make")


def test_weights_round_trip_and_nested_checkpoints(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    torch.save({"state_dict": tiny_cnn.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    state = load_state_dict(tmp_path / "ckpt.pt")
    assert torch.equal(state["conv1.weight"], tiny_cnn.conv1.weight)


def test_mismatched_state_dict_lists_keys(tmp_path: Path, tiny_cnn: TinyCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tiny_cnn.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    torch.save(state, tmp_path / "w.pt")
    import featviz_report.models.resolve as models

    monkeypatch.setattr(models, "_resolve", lambda spec, trust: models.LoadedModel(TinyCNN(), "tiny"))
    with pytest.raises(ModelError, match=r"missing in the file: head.bias; only in the file: extra.weight"):
        load_model("tiny", tmp_path / "w.pt")


def test_pickled_objects_are_never_unpickled(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    torch.save(tiny_cnn, tmp_path / "whole.pt")  # a pickled module, not a state_dict
    with pytest.raises(ModelError, match="not a loadable state_dict"):
        load_state_dict(tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="a pickled model is not loaded.*--trust-pickled-model"):
        load_model(str(tmp_path / "whole.pt"))
    trusted = load_model(str(tmp_path / "whole.pt"), trust_pickle=True).module
    assert isinstance(trusted, TinyCNN) and torch.equal(trusted.conv1.weight, tiny_cnn.conv1.weight)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_is_refused_with_what_to_use_instead(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    torch.jit.save(torch.jit.script(tiny_cnn), tmp_path / "m.ts")
    with pytest.raises(ModelError, match=r"TorchScript file, whose layers cannot be hooked.*\.pt2.*factory"):
        load_model(str(tmp_path / "m.ts"))


class Convolutions(nn.Module):
    """Every way an export spells a convolution: string padding, groups, dilation, no bias, nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.same = nn.Conv2d(3, 8, 3, padding="same")
        self.grouped = nn.Conv2d(8, 8, 3, groups=4, dilation=2, padding=2, stride=2)
        self.nested = nn.Sequential(nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.ReLU()))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.nested(self.grouped(self.same(x))).mean((2, 3)))


def test_every_exported_convolution_becomes_the_same_layer_again(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Convolutions().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"))
    layers = dict(loaded.module.named_modules())
    for name in ("same", "grouped", "nested.0.0"):
        original, restored = model.get_submodule(name), layers[name]
        assert isinstance(restored, nn.Conv2d), name
        for attr in ("stride", "padding", "dilation", "groups", "kernel_size"):
            assert getattr(restored, attr) == getattr(original, attr), (name, attr)
    assert loaded.batch_size is None and loaded.input_size == 16
    x = torch.rand(5, 3, 16, 16)
    torch.testing.assert_close(loaded.module(x), model(x))


def test_export_archives_load_with_their_real_layers_and_input(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    program = torch.export.export(tiny_cnn.eval(), (torch.rand(1, 1, 8, 8),))
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"))
    layers = dict(loaded.module.named_modules())
    assert isinstance(layers["conv1"], nn.Conv2d) and isinstance(layers["head"], nn.Linear)
    assert torch.equal(layers["conv2"].weight, tiny_cnn.conv2.weight)
    assert (loaded.input_size, loaded.batch_size) == (8, 1)
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(loaded.module(x), tiny_cnn(x))


def test_unusable_specs_are_explained() -> None:
    with pytest.raises(ModelError, match="not a file, not torchvision:NAME"):
        load_model("does-not-exist")


# --- extra state (get_extra_state): hashed as data, never a crash ------------------------------------------------

EXTRA_STATE_NET = """
import os
import torch
from torch import nn

class Opaque:
    '''Not plain data: no digest can say what it holds.'''

class Scaled(nn.Module):
    '''A convolution whose output is scaled by a number kept as extra state, not as a tensor.'''

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = float(os.environ.get("EXTRA_SCALE", "2.0"))
        self.names = ["a"]
        self.opaque = os.environ.get("EXTRA_OPAQUE") == "1"

    def forward(self, x):
        return self.conv(x) * self.scale

    def get_extra_state(self):
        state = {"scale": self.scale, "names": list(self.names)}
        return {**state, "how": Opaque()} if self.opaque else state

    def set_extra_state(self, state):
        self.scale, self.names = state["scale"], list(state["names"])

def build():
    torch.manual_seed(0)
    return nn.Sequential(Scaled(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
"""


@pytest.fixture
def extra_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``extra_state_net.build()``: a model whose first block keeps {"scale": 2.0, "names": ["a"]} as extra
    state (``EXTRA_SCALE`` changes the scale, ``EXTRA_OPAQUE=1`` adds an object), and three images in imgs/."""
    (tmp_path / "extra_state_net.py").write_text(EXTRA_STATE_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "extra_state_net", raising=False)
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    return importlib.import_module("extra_state_net")


def _digest(model: nn.Module) -> tuple[str, list[str]]:
    warnings: list[str] = []
    return weights_digest(model, warnings.append), warnings


def test_extra_state_is_hashed_as_data(extra_net: ModuleType) -> None:
    model = extra_net.build()
    assert "0._extra_state" in model.state_dict()
    first, warned = _digest(model)
    assert first == _digest(extra_net.build())[0] and warned == [], "the same state, the same digest"
    seen = {first}
    for change in (
        {"scale": 3.0},
        {"scale": 2.0000000000000004},  # one ulp: floats are hashed exactly
        {"names": ["b"]},
        {"names": ("a",)},  # a tuple is not a list
        {"names": [b"a"]},
        {"names": [torch.tensor([1.0])]},
        {"names": [torch.tensor([1.0], dtype=torch.float64)]},
        {"names": [np.arange(3)]},
        {"names": [{"k": 1}]},
        {"names": [{"k": 1.0}]},
        {"names": [{"k": True}]},
    ):
        model[0].get_extra_state = lambda change=change: {"scale": 2.0, "names": ["a"], **change}
        digest, warned = _digest(model)
        assert digest not in seen and warned == [], change
        seen.add(digest)
    model[0].get_extra_state = lambda: {"names": ["a"], "scale": 2.0}  # a dict's order is not its content
    assert _digest(model) == (first, [])
    model[0].get_extra_state = lambda: [{3, 1, 2}, frozenset("ab")]
    assert _digest(model) == _digest(model) and _digest(model)[1] == []


def test_extra_state_that_is_not_data_is_left_out_and_said_once(extra_net: ModuleType) -> None:
    model = extra_net.build()
    model[0].get_extra_state = lambda: {"scale": 2.0, "how": extra_net.Opaque()}
    digest, warned = _digest(model)
    assert len(warned) == 1, warned
    assert "'0' (Scaled)" in warned[0] and "0._extra_state['how'] is of type extra_state_net.Opaque" in warned[0]
    assert "left out of the weights' hash" in warned[0]
    assert _digest(model)[0] == digest, "another object of the same kind: the same digest"
    model[0].get_extra_state = lambda: {"scale": 3.0, "how": extra_net.Opaque()}
    assert _digest(model)[0] != digest, "the plain part still counts"
    loop: list[object] = [1]
    loop.append(loop)
    model[0].get_extra_state = lambda: loop
    assert "0._extra_state[1] holds itself" in _digest(model)[1][0]
    assert weights_digest(model) == _digest(model)[0], "no warn: silent, the same digest"


def test_featviz_caches_and_scans_resume_a_model_with_extra_state(
    extra_net: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*argv: str) -> str:
        code = main([*argv, "--model", "extra_state_net:build", "--input-size", "8", "--quiet"])
        err = capsys.readouterr().err
        assert code == 0, err
        return err

    featviz = [
        "--samples",
        "imgs",
        "--featviz",
        "0.conv",
        "--featviz-steps",
        "2",
        "--cache-dir",
        "cache",
        "-o",
        "r.html",
    ]
    entries = lambda: sorted(p.name for p in (tmp_path / "cache").rglob("*.json"))  # noqa: E731
    assert run(*featviz) == "" and len(entries()) == 4
    assert run(*featviz) == "" and len(entries()) == 4, "the same extra state: the cache is used"
    monkeypatch.setenv("EXTRA_SCALE", "3.0")
    assert run(*featviz) == "" and len(entries()) == 8, "another scale: other images"

    scan = ["scan", "imgs", "--state", "state", "-o", "scan.html"]
    run(*scan)
    run(*scan)  # resumed: the same extra state
    monkeypatch.setenv("EXTRA_SCALE", "2.0")
    assert main([*scan, "--model", "extra_state_net:build", "--input-size", "8", "--quiet"]) == 2
    assert "holds the state of a different scan" in capsys.readouterr().err, "another scale is another scan"
    monkeypatch.setenv("EXTRA_OPAQUE", "1")
    for argv in (["scan", "imgs", "--state", "state2", "-o", "scan.html"], featviz):
        err = run(*argv)
        assert err.count("\n") == 1 and err.startswith("featviz-report: warning: the extra state of '0' (Scaled)")
        assert "extra_state_net.Opaque" in err


def test_weights_and_comparisons_of_a_model_with_extra_state(
    extra_net: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = extra_net.build()
    model[0].scale = 5.0
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert load_state_dict(tmp_path / "w.pt")["0._extra_state"] == {"scale": 5.0, "names": ["a"]}
    argv = ["--model", "extra_state_net:build", "--samples", "imgs", "--input-size", "8", "--quiet"]
    assert main([*argv, "--weights", "w.pt", "--json", "r.json", "-o", "r.html"]) == 0, capsys.readouterr().err
    assert main([*argv, "--compare", "w.pt", "-o", "c.html"]) == 0, capsys.readouterr().err
    torch.save({"0._extra_state": {"scale": 5.0}}, tmp_path / "bad.pt")
    assert main([*argv, "--weights", "bad.pt", "-o", "b.html"]) == 2
    assert "missing in the file: 0.conv.weight" in capsys.readouterr().err
