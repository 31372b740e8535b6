"""Receptive fields of channels-last layers (ConvNeXt's LayerNorm, Linear, GELU on N×H×W×C), in the maps the
report shows for them (capture.maps_order), traced and from the gradient, against autograd on the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featviz_report.capture.hooks import maps_order
from featviz_report.capture.truncated import Truncated
from featviz_report.fields.receptive import gradient_boxes
from featviz_report.fields.trace import trace_fields


class ChannelsLast(nn.Module):
    """ConvNeXt's block: a strided 5×5 convolution, then channels last (LayerNorm, Linear, GELU, Linear) and
    back; ``roll`` first rolls the maps (the tracer does not know roll: every field comes from the gradient)."""

    def __init__(self, roll: bool = False) -> None:
        super().__init__()
        self.roll = roll
        self.conv = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = (torch.roll(x, 2, dims=-1) if self.roll else x).permute(0, 2, 3, 1)
        return self.fc2(self.act(self.fc1(self.norm(x)))).permute(0, 3, 1, 2)


def _shown_supports(model: nn.Module, module: nn.Module, size: int) -> dict[tuple[int, int, int], tuple[int, ...]]:
    """Every element's support by autograd on the real model in float64, as a box, keyed by (channel, row,
    column) of the maps a report shows for ``module`` (capture.maps_order)."""
    model = model.double()
    with Truncated(model, module, 0) as truncated:
        jacobian = torch.autograd.functional.jacobian(
            lambda x: truncated(x).permute(maps_order(module))[0], torch.randn(1, 3, size, size, dtype=torch.float64)
        )  # C×H×W of the maps × the input's 1×3×size×size
    boxes = {}
    for element in np.ndindex(*jacobian.shape[:3]):
        ys, xs = torch.nonzero(jacobian[element].ne(0).any(1)[0], as_tuple=True)
        boxes[element] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return boxes


@pytest.mark.parametrize("layer", ["norm", "fc1", "act", "fc2"])
def test_channels_last_layers_get_the_fields_of_the_maps_the_report_shows(layer: str) -> None:
    """A Linear's N×H×W×C output is shown channels first, any other module's as it is (H maps of W×C): the
    traced box of each element is autograd's support in that view (for the latter it depends on the map), and
    the gradient's probe, traced or not, gives each position the union over its maps."""
    torch.manual_seed(0)
    size = 12
    model = ChannelsLast().eval()
    module = getattr(model, layer)
    truth = _shown_supports(model, module, size)
    field = trace_fields(model.float(), torch.randn(1, 3, size, size))[(module, 0)]
    assert field is not None
    for (channel, row, col), box in truth.items():
        found = field.boxes(np.asarray(row), np.asarray(col), np.asarray(channel)).tolist()
        assert tuple(found) == box, (channel, row, col)
    positions = sorted({(row, col) for _, row, col in truth})
    union = {p: _spanned([box for (_, *at), box in truth.items() if tuple(at) == p]) for p in positions}
    assert {p: field.box(*p) for p in positions} == union
    assert gradient_boxes(model, module, 0, (3, size, size), positions) == union
    rolled = ChannelsLast(roll=True).eval()
    rolled.load_state_dict(model.state_dict())
    rolled_module = getattr(rolled, layer)
    assert trace_fields(rolled, torch.randn(1, 3, size, size))[(rolled_module, 0)] is None
    truth = _shown_supports(rolled, rolled_module, size)
    union = {p: _spanned([box for (_, *at), box in truth.items() if tuple(at) == p]) for p in positions}
    assert gradient_boxes(rolled, rolled_module, 0, (3, size, size), positions) == union


def _spanned(boxes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
