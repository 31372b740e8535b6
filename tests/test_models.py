"""models.py: every kind of model spec, weights loading and its failures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TinyCNN
from torch import nn

from featviz_report.errors import ModelError
from featviz_report.models import load_model, load_state_dict


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
    import featviz_report.models as models

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
