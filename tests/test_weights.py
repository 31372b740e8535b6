"""capture/filters.py: filters as tiles, with caps that say what is left out, drawn as the layer computes them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from featviz_report.capture.filters import filter_tiles
from featviz_report.capture.weights import recording


def test_first_rgb_layer_gives_one_min_maxed_rgb_tile_per_filter() -> None:
    conv = nn.Conv2d(3, 10, 5)
    view = filter_tiles(conv, is_first=True, cap=32)
    assert view is not None and view.rgb
    assert view.tiles.shape == (10, 5, 5, 3)
    assert all(t.min() == 0 and t.max() == 255 for t in view.tiles)
    # channel order is kept: the red plane of filter 0 is its input-channel-0 kernel
    w = conv.weight.detach()[0]
    scaled = ((w - w.min()) / (w.max() - w.min()) * 255).round().numpy().astype(np.uint8)
    np.testing.assert_array_equal(view.tiles[0][..., 0], scaled[0])


def test_grey_and_depthwise_filters_are_diverging_and_centred_at_zero() -> None:
    conv = nn.Conv2d(1, 4, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 2.0
        conv.weight[0, 0, 2, 2] = -2.0
    view = filter_tiles(conv, is_first=True, cap=32)
    assert view is not None and not view.rgb
    assert view.tiles.shape == (4, 3, 3)
    assert view.tiles[0, 0, 0] == 255 and view.tiles[0, 2, 2] == 0 and view.tiles[0, 1, 1] == 128
    depthwise = filter_tiles(nn.Conv2d(8, 8, 3, groups=8), is_first=False, cap=32)
    assert depthwise is not None and depthwise.tiles.shape == (8, 3, 3)


def test_deep_layers_give_a_capped_kernel_grid_and_say_so() -> None:
    view = filter_tiles(nn.Conv2d(40, 50, 3), is_first=False, cap=32)
    assert view is not None
    assert view.tiles.shape == (32 * 32, 3, 3) and view.cols == 32
    assert view.note == "showing the first 32 of 50 filters × first 32 of 40 input channels"
    small = filter_tiles(nn.Conv2d(4, 6, 1), is_first=False, cap=32)
    assert small is not None and small.note is None and small.tiles.shape == (24, 1, 1)


def test_linear_weights_are_one_heatmap_block_averaged_when_large() -> None:
    small = filter_tiles(nn.Linear(4, 2), is_first=False, cap=32)
    assert small is not None and small.kind == "matrix" and small.tiles.shape == (1, 2, 4) and small.note is None
    linear = nn.Linear(1000, 10)
    with torch.no_grad():
        linear.weight.copy_(torch.arange(1000.0).repeat(10, 1) - 500)
    big = filter_tiles(linear, is_first=False, cap=32)
    assert big is not None and big.tiles.shape == (1, 10, 250) and big.note == "block-averaged to 10×250"
    assert big.tiles[0, 0, 0] < 10 and big.tiles[0, 0, -1] > 245  # block means keep the ramp


def test_layers_without_weights_have_no_filter_view() -> None:
    assert filter_tiles(nn.MaxPool2d(2), is_first=False, cap=32) is None


class _Negated(nn.Conv2d):
    """Computes with minus its parameter: a stand-in for timm's StdConv2d, whose forward standardises it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, -self.weight, self.bias)


def test_a_layer_that_computes_its_weight_is_drawn_as_it_computes_it() -> None:
    conv = _Negated(1, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 2.0
    view = filter_tiles(conv, True, 32, _computed(conv))
    assert view is not None and view.tiles[0, 0, 0] == 0, "blue: the -2 it computes with, not the stored +2"
    assert view.note == "as its forward computes it from its parameter (_Negated)"
    plain = nn.Conv2d(1, 2, 3)
    assert _computed(plain) is None and filter_tiles(plain, True, 32).note is None  # type: ignore[union-attr]


class _TwoBranches(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + nn.functional.conv2d(x, self.weight.flip(-1))


def test_a_layer_with_no_one_weight_is_drawn_as_stored_and_says_why() -> None:
    conv = _TwoBranches(1, 2, 3)
    view = filter_tiles(conv, True, 32, _computed(conv))
    assert view is not None and view.note is not None
    assert view.note.startswith("its parameter as stored: its forward makes more than one convolution")


def _computed(conv: nn.Module) -> torch.Tensor | str | None:
    """What a capture pass finds ``conv`` computes with (None: its parameter as stored)."""
    layers = [("conv", conv)]
    with recording(layers) as reader, torch.no_grad():
        conv(torch.rand(1, 1, 8, 8))
    return reader.computed(layers).get("conv")
