"""Receptive fields traced along the forward pass (field_trace) against the gradient's support, on models
that use every operation the tracer knows; and what it must refuse (operations it does not know, and
anything they feed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from featviz_report.field_trace import trace_fields
from featviz_report.receptive import gradient_boxes


class Zoo(nn.Module):
    """Residual adds, a channel concatenation, depthwise and dilated convolutions, 'same' padding, a
    ceil-mode max pool, constant padding, a channels-last LayerNorm + Linear block (ConvNeXt), a channel
    shuffle (view/transpose), a channel split, a squeeze-excitation gate and an adaptive pool whose
    windows overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 5, padding="same", groups=8, dilation=2)
        self.branch = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.pad = nn.ZeroPad2d((1, 2, 0, 3))
        self.mix = nn.Conv2d(16, 16, 3)
        self.norm = nn.LayerNorm(16)
        self.linear = nn.Linear(16, 16)
        self.gate = nn.Conv2d(16, 16, 1)
        self.after_gate = nn.Conv2d(16, 16, 3, stride=2)
        self.adaptive = nn.AdaptiveAvgPool2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + self.depthwise(x)
        x = torch.cat([x, self.branch(x)], dim=1)
        x = self.mix(self.pad(self.pool(x)))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # channel shuffle
        x = x + self.linear(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b, a], 1) * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True))) + x
        return self.adaptive(self.after_gate(x))


def _compare(model: nn.Module, size: int, modules: list[nn.Module]) -> None:
    model.eval()
    traced = trace_fields(model, torch.randn(1, 3, size, size))
    for module in modules:
        field = traced[(module, 0)]
        assert field is not None, module
        positions = [(r, c) for r in range(len(field.rows.lo)) for c in range(len(field.cols.lo))]
        expected = gradient_boxes(model, module, 0, (3, size, size), positions)
        assert {p: field.box(*p) for p in positions} == expected, module


def test_traced_fields_equal_the_gradients_on_every_operation_the_tracer_knows() -> None:
    torch.manual_seed(0)
    model = Zoo()
    _compare(model, 37, [model.stem, model.depthwise, model.pool, model.pad, model.mix,
                         model.gate, model.after_gate, model.adaptive])  # fmt: skip


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet"])
def test_traced_fields_equal_the_gradients_on_torchvision_models(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **({"init_weights": False} if name == "googlenet" else {}))
    ran = {module for module, _ in trace_fields(model.eval(), torch.zeros(1, 3, 32, 32))}  # not googlenet's aux heads
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d)) and m in ran]
    _compare(model, 32, convs[:: max(1, len(convs) // 6)] + convs[-1:])


class Unknown(nn.Module):
    """An upsampled branch (the tracer does not know interpolation) added back onto a known path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2.0)
        self.head = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.head(x + self.up(self.down(x)))


def test_what_the_tracer_does_not_know_is_unknown_and_so_is_all_it_feeds() -> None:
    model = Unknown().eval()
    traced = trace_fields(model, torch.randn(1, 3, 16, 16))
    assert traced[(model.conv, 0)] is not None and traced[(model.down, 0)] is not None
    assert traced[(model.up, 0)] is None and traced[(model.head, 0)] is None
    rolled = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Flatten(), nn.Unflatten(1, (3, 14, 14)), nn.Conv2d(3, 3, 3))
    traced = trace_fields(rolled.eval(), torch.randn(1, 3, 16, 16))
    assert traced[(rolled[0], 0)] is not None
    assert traced[(rolled[1], 0)] is None and traced[(rolled[3], 0)] is None  # through a flat vector: not vouched
