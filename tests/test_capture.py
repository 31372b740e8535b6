"""capture.py: in-hook reduction, pixel truth, statistics, and leaving the model as it was."""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyCNN, decode_png, hooks_left, read_page
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.capture.hooks import select_layers
from featviz_report.capture.reduce import reduce_output, vector_shape
from featviz_report.errors import ModelError, UsageError


def test_tile_in_the_report_equals_conv_output_min_maxed_by_hand(tmp_path: Path, tiny_cnn: TinyCNN) -> None:
    """Pixel truth: conv1 is followed by ReLU(inplace=True), yet the tile must show the raw conv output."""
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = tmp_path / "r.html"
    build_report(tiny_cnn, x, out, ReportConfig(quiet=True, colormap="gray", batch_size=2))

    with torch.no_grad():
        expected_float = tiny_cnn.conv1(x)
    assert (expected_float < 0).any(), "the test needs negative conv outputs the inplace ReLU would clobber"
    lo = expected_float.amin(dim=(2, 3), keepdim=True)
    hi = expected_float.amax(dim=(2, 3), keepdim=True)
    expected = ((expected_float - lo) * (255.0 / (hi - lo))).round().clamp(0, 255).to(torch.uint8).numpy()

    page = read_page(out)
    maps = [
        img
        for img in page.images
        if img["_section"] == "layer-conv1" and "sample" in img["alt"] and "channels" in img["alt"]
    ]
    assert len(maps) == 3
    for sample, img in enumerate(maps):
        atlas = np.asarray(decode_png(img["src"]))  # palette indices: the uint8 values themselves
        assert atlas.shape == (2 * 8, 2 * 8)  # 4 channels in a 2×2 grid of 8×8 tiles
        for channel in range(4):
            row, col = divmod(channel, 2)
            tile = atlas[row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8]
            np.testing.assert_array_equal(tile, expected[sample, channel])


def test_statistics_merge_over_batches_like_numpy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3))
    x = torch.randn(7, 3, 9, 9)
    report = build_report(model, x, config=ReportConfig(quiet=True, batch_size=3))
    with torch.no_grad():
        values = model(x).double().numpy()
    (layer,) = report.layers
    per_channel = values.transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_allclose(layer.channels.mean, per_channel.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.channels.std, per_channel.std(1), rtol=1e-4)
    np.testing.assert_allclose(layer.channels.min, per_channel.min(1), rtol=1e-6)
    assert layer.stats.mean == pytest.approx(values.mean(), rel=1e-5, abs=1e-6)
    assert layer.stats.std == pytest.approx(values.std(), rel=1e-4)
    assert layer.stats.max == pytest.approx(values.max(), rel=1e-6)
    assert layer.output_shape == (5, 7, 7)


def test_hooks_removed_and_modes_restored_after_success(tiny_cnn: TinyCNN) -> None:
    tiny_cnn.train()
    tiny_cnn.conv2.eval()  # a mixed state must come back exactly
    tiny_cnn.conv1.weight.requires_grad_(False)
    before = {name: m.training for name, m in tiny_cnn.named_modules()}
    grads = {name: p.requires_grad for name, p in tiny_cnn.named_parameters()}
    build_report(tiny_cnn, torch.rand(2, 1, 8, 8), config=ReportConfig(quiet=True))
    assert {name: m.training for name, m in tiny_cnn.named_modules()} == before
    assert {name: p.requires_grad for name, p in tiny_cnn.named_parameters()} == grads
    assert hooks_left(tiny_cnn) == []


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn(self.conv(x))
        raise RuntimeError("boom in forward")


def test_garbage_collector_state_is_handed_back(tiny_cnn: TinyCNN) -> None:
    x = torch.rand(2, 1, 8, 8)
    build_report(tiny_cnn, x, config=ReportConfig(quiet=True))
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.freeze()  # a caller that froze its own objects keeps them frozen
    try:
        frozen = gc.get_freeze_count()
        build_report(tiny_cnn, x, config=ReportConfig(quiet=True))
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_hooks_removed_and_modes_restored_when_forward_raises() -> None:
    model = Exploding().train()
    with pytest.raises(ModelError, match="boom in forward"):
        build_report(model, torch.rand(2, 1, 8, 8), config=ReportConfig(quiet=True))
    assert model.training and model.bn.training
    assert all(p.requires_grad for p in model.parameters())
    assert hooks_left(model) == []
    assert int(model.bn.num_batches_tracked) == 0  # ran in eval mode: running stats untouched


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x)))


def test_module_called_twice_gives_two_entries() -> None:
    report = build_report(Twice(), torch.rand(2, 2, 6, 6), config=ReportConfig(quiet=True))
    assert [layer.name for layer in report.layers] == ["conv", "conv (call 2)"]
    assert len({layer.slug for layer in report.layers}) == 2


def test_non_finite_and_constant_channels_are_counted_and_tiles_stay_valid() -> None:
    values = torch.randn(2, 3, 4, 4)
    values[0, 0, 0, 0] = float("nan")
    values[1, 0, 1, 1] = float("inf")
    values[:, 2] = 1.5  # constant channel
    reduced = reduce_output(values)
    assert reduced.nans.tolist() == [1, 0, 0]
    assert reduced.infs.tolist() == [1, 0, 0]
    assert reduced.tiles.dtype == torch.uint8
    assert int(reduced.tiles[:, 2].max()) == 0
    assert int(reduced.tiles[0, 0].max()) == 255  # the finite values still span the full range
    assert torch.isfinite(reduced.mean).all()


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 7, 4), (3, 10)])
def test_per_channel_sums_match_numpy_over_finite_values(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    values = torch.randn(shape).relu()  # about half exact zeros
    values.view(-1)[::7] *= -1  # and some negatives
    values.view(-1)[5] = float("nan")
    values.view(-1)[11] = float("inf")
    values.view(-1)[12] = -float("inf")
    for tensor in (values, torch.nan_to_num(values, nan=0.5, posinf=2.0, neginf=-2.0)):  # masked and fast path
        reduced = reduce_output(tensor)
        channel_axis = 2 if tensor.ndim == 3 else 1
        per_channel = np.moveaxis(tensor.double().numpy(), channel_axis, 0).reshape(tensor.shape[channel_axis], -1)
        for c, row in enumerate(per_channel):
            finite = row[np.isfinite(row)]
            assert int(reduced.count[c]) == finite.size
            assert int(reduced.zeros[c]) == int((finite == 0).sum())
            assert int(reduced.positives[c]) == int((finite > 0).sum())
            assert int(reduced.nans[c]) == int(np.isnan(row).sum())
            assert int(reduced.infs[c]) == int(np.isinf(row).sum())
            assert float(reduced.mean[c]) == pytest.approx(finite.mean(), abs=1e-6)
            assert float(reduced.m2[c]) == pytest.approx(((finite - finite.mean()) ** 2).sum(), rel=1e-5, abs=1e-6)


def test_linear_outputs_become_one_image_per_sample() -> None:
    reduced = reduce_output(torch.arange(20.0).view(2, 10))
    assert tuple(reduced.tiles.shape) == (2, 1, 2, 5)
    assert reduced.tiles[0, 0].flatten().tolist()[0] == 0 and reduced.tiles[0, 0].flatten().tolist()[-1] == 255
    assert vector_shape(64) == (8, 8)
    assert vector_shape(1000) == (25, 40)
    assert vector_shape(17) == (5, 4)  # a prime: padded square-ish, not 1×17


def test_layer_selection_by_glob_and_default(tiny_cnn: TinyCNN) -> None:
    assert [n for n, _ in select_layers(tiny_cnn)] == ["conv1", "conv2", "head"]
    assert [n for n, _ in select_layers(tiny_cnn, ["conv*", "pool"])] == ["conv1", "pool", "conv2"]
    with pytest.raises(UsageError, match="'nope.*' matches no layer"):
        select_layers(tiny_cnn, ["nope.*"])


def test_a_featviz_glob_naming_a_container_adds_it_to_the_captured_layers() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(2 * 24 * 24, 3)
    )  # layers "0", "1" (a container: "1.0", "1.1"), "2", "3"
    assert [n for n, _ in select_layers(model)] == ["0", "1.0", "3"]
    assert [n for n, _ in select_layers(model, (), ["1"])] == ["0", "1", "1.0", "3"]  # in model order
    assert [n for n, _ in select_layers(model, (), ["1.*"])] == ["0", "1.0", "3"]  # matches 1.0, already captured
    assert [n for n, _ in select_layers(model, ["0"], ["1", "3"])] == ["0", "1", "3"]
    with pytest.raises(UsageError, match="--featviz '9' matches no layer of the model"):
        select_layers(model, (), ["9"])


class Mixed(nn.Module):
    """A ConvNeXt-style Linear on N×H×W×C maps, a Linear on N×L×D sequences and a 5-D Conv3d output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pointwise = nn.Linear(4, 6)
        self.tokens = nn.Linear(6, 2)
        self.volume = nn.Conv3d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.pointwise(self.conv(x).permute(0, 2, 3, 1))
        self.volume(x.unsqueeze(1))
        return self.tokens(maps.flatten(1, 2)).mean(1)


def test_channels_last_linear_sequences_and_unshowable_outputs() -> None:
    report = build_report(Mixed(), torch.rand(2, 1, 5, 7), config=ReportConfig(quiet=True, layers=("*",)))
    assert [(layer.name, layer.output_shape) for layer in report.layers] == [
        ("conv", (4, 5, 7)),
        ("pointwise", (6, 5, 7)),
        ("tokens", (35, 2)),
    ]
    tokens = report.layers[2]
    assert len(tokens.channels.mean) == 2 and (tokens.maps[0].tile_height, tokens.maps[0].tile_width) == (35, 2)
    assert report.notes == (
        "1 selected layers give no N×C×H×W, N×L×D or N×F output and are not shown: volume (a 5-D output)",
    )


class Windows(nn.Module):
    """MaxViT's window attention: maps cut into 2×2 windows folded into the batch, a Linear on each, and back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.qkv = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.conv(x).permute(0, 2, 3, 1)  # N×4×4×C
        n, h, w, c = maps.shape
        windows = maps.view(n, h // 2, 2, w // 2, 2, c).transpose(2, 3).reshape(n * 4, 2, 2, c)
        return self.qkv(windows).view(n, 2, 2, 2, 2, c).transpose(2, 3).reshape(n, h, w, c).mean((1, 2))


def test_a_layer_with_windows_folded_into_the_batch_is_listed_not_shown(tmp_path: Path) -> None:
    """Its first axis holds 4 windows per sample: shown, it had 12 maps for 3 samples and the page failed."""
    report = build_report(Windows(), torch.rand(3, 1, 4, 4), tmp_path / "w.html", ReportConfig(quiet=True))
    assert [layer.name for layer in report.layers] == ["conv"]
    assert report.notes == (
        "1 selected layers give no N×C×H×W, N×L×D or N×F output and are not shown: qkv (12 along the first axis "
        "for 3 samples)",
    )
    assert 'data-layer="qkv"' not in (tmp_path / "w.html").read_text(encoding="utf-8")


class BatchNormDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        features = self.bn(self.conv(x))
        return {"aux": (features,), "logits": self.fc(features.mean((2, 3)))}


def test_train_mode_model_keeps_batchnorm_statistics_and_dict_outputs_work() -> None:
    model = BatchNormDict().train()
    before = (model.bn.running_mean.clone(), model.bn.running_var.clone(), int(model.bn.num_batches_tracked))
    report = build_report(model, torch.rand(3, 1, 6, 6), config=ReportConfig(quiet=True))
    assert model.training and model.bn.training
    assert torch.equal(model.bn.running_mean, before[0]) and torch.equal(model.bn.running_var, before[1])
    assert int(model.bn.num_batches_tracked) == before[2]
    assert [layer.name for layer in report.layers] == ["conv", "fc"]
    assert all(s.prediction is not None and s.prediction.label.startswith("class ") for s in report.samples)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_goes_back_to_the_os_between_batches_on_glibc() -> None:
    """192 MB freed in the middle of the heap (a live allocation above it) stays resident until trimmed."""
    code = textwrap.dedent(
        """
        import os, numpy as np
        from featviz_report.runtime.heap import release_freed_memory
        def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        chunks = [np.ones(8192) for _ in range(3000)]  # 64 KB each: heap, not mmap
        above = np.ones(8192)  # the last chunk stays: what was freed is below the top of the heap
        del chunks
        freed = rss()
        release_freed_memory()
        print(freed - rss())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(done.stdout) > 64e6, f"only {int(done.stdout) / 1e6:.0f} MB went back to the OS"


def test_a_lazy_model_that_has_not_run_is_refused_in_one_line(tmp_path: Path) -> None:
    """A LazyConv2d's parameters have no shape before its first call: holding their requires_grad failed with
    torch's ValueError, and had it gone on they would have been made inside the report's inference mode."""
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ModelError, match=r"4 parameters are not initialised yet \(0.weight, a lazy layer\)"):
        build_report(model, torch.rand(2, 3, 12, 12), tmp_path / "r.html", ReportConfig(quiet=True, graph=False))
    model(torch.rand(1, 3, 12, 12))  # as the message says
    build_report(model, torch.rand(2, 3, 12, 12), tmp_path / "r.html", ReportConfig(quiet=True, graph=False))
    assert all(p.requires_grad and not p.is_inference() for p in model.parameters())
