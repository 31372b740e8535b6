"""capture/weights.py: the weight a layer computes with, read from its forward where that is not its parameter,
or why it has no one weight; the model left as it was found."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from featviz_report.capture.weights import _NOT_ONE, computed_weights


def _read(module: nn.Module) -> torch.Tensor | str:
    found = computed_weights(module, [("layer", module)])
    return found.get("layer", "plain")


def test_torch_own_layers_are_read_off_their_parameter() -> None:
    assert computed_weights(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)), []) == {}
    for plain in (nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(3, 4, 3), nn.Linear(4, 2)):
        assert _read(plain) == "plain"


def test_timms_standardised_convolution_is_read_by_the_weight_it_uses() -> None:
    layers = pytest.importorskip("timm.layers")
    for conv in (layers.StdConv2d(4, 3, 3), layers.ScaledStdConv2d(4, 3, 3)):
        computed = _read(conv)
        assert isinstance(computed, torch.Tensor) and not torch.equal(computed, conv.weight)
        assert torch.allclose(computed.mean((1, 2, 3)), torch.zeros(3), atol=1e-6)


class _StepOverridden(nn.Conv2d):
    """Standardises its weight in ``_conv_forward``, not ``forward``."""

    def _conv_forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(x, w - w.mean((1, 2, 3), keepdim=True), b)


def test_a_convolution_step_of_its_own_and_a_parametrization_are_read_too() -> None:
    conv = _StepOverridden(4, 2, 1)
    computed = _read(conv)
    assert isinstance(computed, torch.Tensor)
    assert torch.allclose(computed, conv.weight - conv.weight.mean((1, 2, 3), keepdim=True))
    normed = parametrizations.weight_norm(nn.Conv2d(4, 2, 3))
    assert torch.allclose(_read(normed), normed.weight)  # type: ignore[arg-type]


class _Odd(nn.Conv2d):
    """A convolution whose output is not one convolution with one weight."""

    def __init__(self, how: str) -> None:
        super().__init__(4, 2, 3, padding=1)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "two branches":
            return F.conv2d(x, self.weight, self.bias, padding=1) + F.conv2d(x, -2 * self.weight, padding=1)
        if self.how == "the same weight twice":
            return 2 * F.conv2d(x, self.weight, self.bias, padding=1)
        if self.how == "a weight made from the input":
            return F.conv2d(x, self.weight * x.mean((0, 2, 3))[None, :, None, None], self.bias, padding=1)
        if self.how == "a low-rank update":
            return F.conv2d(x, self.weight, self.bias, padding=1) + x[:, :2] * 0.5
        return F.conv2d(x, self.weight, self.bias, padding=1)[:, :, :1]  # "part of its output"


@pytest.mark.parametrize(
    "how", ["two branches", "the same weight twice", "a weight made from the input", "a low-rank update", "part"]
)
def test_a_layer_with_no_one_weight_says_so(how: str) -> None:
    assert _read(_Odd(how)) == _NOT_ONE


class _ReflectStd(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * 2, self.bias)


def test_a_padding_wider_than_the_kernel_fits_the_probe() -> None:
    conv = _ReflectStd(4, 2, 3, padding=5, padding_mode="reflect")
    assert torch.allclose(_read(conv), conv.weight * 2)  # type: ignore[arg-type]


class _ConvBN(nn.Conv2d):
    """A convolution with its BatchNorm inside (quantisation-aware training's ConvBn2d), its weight doubled."""

    def __init__(self) -> None:
        super().__init__(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self._conv_forward(x, self.weight * 2, self.bias))


def test_reading_runs_in_eval_mode_and_leaves_the_model_as_it_was() -> None:
    """In train mode its BatchNorm would update its statistics, and a spectral norm its power iteration."""
    model = nn.Sequential(_ConvBN(), parametrizations.spectral_norm(nn.Conv2d(4, 2, 1))).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = computed_weights(model, list(model.named_children()))
    assert set(found) == {"0", "1"} and all(isinstance(w, torch.Tensor) for w in found.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
