"""capture/weights.py: the weight a layer computes with, watched while the capture pass runs it, where that is not
its parameter as stored; or why it has no one weight. Nothing runs that the report would not run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from featviz_report import ReportConfig, build_report
from featviz_report.capture.weights import CHANGES, NOT_ONE, recording


def _read(module: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor | str | None:
    """What the capture pass would find for ``module`` run on ``x``: its weight, why none, or None (its parameter)."""
    layers = [("layer", module)]
    with recording(layers) as reader, torch.no_grad():
        module(torch.rand(2, 4, 9, 9) if x is None else x)
    return reader.computed(layers).get("layer")


def test_torch_own_layers_compute_with_their_parameter() -> None:
    for plain, x in (
        (nn.Conv2d(4, 3, 3), None),
        (nn.ConvTranspose2d(4, 3, 3), None),
        (nn.Linear(4, 2), torch.rand(2, 4)),
    ):
        assert _read(plain, x) is None


def test_timms_standardised_convolutions_are_read_by_the_weight_they_use() -> None:
    layers = pytest.importorskip("timm.layers")
    for conv in (layers.StdConv2d(4, 3, 3), layers.ScaledStdConv2d(4, 3, 3), layers.StdConv2dSame(4, 3, 3, stride=2)):
        computed = _read(conv)
        assert isinstance(computed, torch.Tensor) and not torch.equal(computed, conv.weight)
        assert torch.allclose(computed.mean((1, 2, 3)), torch.zeros(3), atol=1e-6)
    assert _read(layers.Conv2dSame(4, 3, 3, stride=2)) is None  # its dynamic padding, then its parameter


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


class _Around(nn.Conv2d):
    """One convolution with its parameter, and something around it that is not a second weight."""

    def __init__(self, how: str) -> None:
        super().__init__(4, 2, 3)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        y = super().forward(x)
        if self.how == "a fused ReLU":
            return F.relu(y)
        if self.how == "a tuple":
            return y, y.mean()
        return y + 0.5  # "a bias of its own"


@pytest.mark.parametrize("how", ["a fused ReLU", "a tuple", "a bias of its own"])
def test_what_is_around_its_one_convolution_leaves_its_parameter(how: str) -> None:
    assert _read(_Around(how)) is None


class _MatLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t() + self.bias


def test_a_linear_map_as_a_matrix_product_of_its_parameter_leaves_its_parameter() -> None:
    assert _read(_MatLinear(4, 3), torch.rand(2, 4)) is None


class _Odd(nn.Conv2d):
    """A convolution whose output is not one convolution with one weight."""

    def __init__(self, how: str) -> None:
        super().__init__(4, 2, 3, padding=1)
        self.how = how
        self.down, self.up = nn.Parameter(torch.randn(1, 4, 1, 1)), nn.Parameter(torch.randn(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "two branches":
            return F.conv2d(x, self.weight, self.bias, padding=1) + F.conv2d(x, -2 * self.weight, padding=1)
        if self.how == "a low-rank update":
            return super().forward(x) + F.conv2d(F.conv2d(x, self.down), self.up)
        return F.conv2d(x, self.weight * x.mean((0, 2, 3))[None, :, None, None], self.bias, padding=1)


@pytest.mark.parametrize("how", ["two branches", "a low-rank update"])
def test_a_layer_with_more_than_one_weight_says_so(how: str) -> None:
    assert _read(_Odd(how)) == NOT_ONE


def test_a_weight_made_from_the_input_changes_and_says_so() -> None:
    odd = _Odd("made from the input")
    layers = [("layer", odd)]
    with recording(layers) as reader, torch.no_grad():
        odd(torch.rand(2, 4, 9, 9))
        odd(torch.rand(2, 4, 9, 9) * 3)
    assert reader.computed(layers)["layer"] == CHANGES


def test_a_low_rank_update_from_an_instance_forward_or_a_hook_is_seen() -> None:
    down, up = torch.randn(1, 4, 1, 1), torch.randn(2, 1, 1, 1)
    patched = nn.Conv2d(4, 2, 1)
    patched.forward = lambda x: nn.Conv2d.forward(patched, x) + F.conv2d(F.conv2d(x, down), up)  # type: ignore[method-assign]
    assert _read(patched) == NOT_ONE
    hooked = nn.Conv2d(4, 2, 1)
    hooked.register_forward_hook(lambda m, args, out: out + F.conv2d(F.conv2d(args[0], down), up))
    assert _read(hooked) == NOT_ONE


class _SetsUpOnFirstCall(nn.Conv2d):
    """Like timm's Conv2dSameExport: its padding is fixed by the first input it sees."""

    seen: tuple[int, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seen is None:
            self.seen = tuple(x.shape[-2:])
        return super().forward(x)


def test_nothing_runs_that_the_report_would_not_and_a_diverged_weight_still_gives_a_report(tmp_path: Path) -> None:
    """No probe of its own: a layer that sets itself up on its first call sees the samples' size. A NaN in a
    standardised weight once failed every report (the probe's tolerance was NaN); now the layer says why."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _SetsUpOnFirstCall(4, 4, 3), _StepOverridden(4, 2, 1)
    )
    with torch.no_grad():
        model[3].weight[0, 1, 0, 0] = float("nan")
    config = ReportConfig(quiet=True, graph=False)
    build_report(model.eval(), torch.rand(2, 3, 15, 15), tmp_path / "r.html", config, json_out=tmp_path / "r.json")
    assert model[2].seen == (15, 15)
    assert "non-finite weights" in (tmp_path / "r.json").read_text()


class _Gated(nn.Conv2d):
    """A convolution scaled by a gate from a Linear layer of its own (squeeze-excitation style)."""

    def __init__(self) -> None:
        super().__init__(4, 4, 3, padding=1)
        self.gate = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.sigmoid(self.gate(x.mean((2, 3))))[:, :, None, None]


def test_what_other_layers_and_hooks_make_of_its_output_is_not_its_weight() -> None:
    """Products of the output in a hook (a Gram matrix for monitoring, another layer called on it) and the
    calls of a watched layer inside it were counted as its own: 'no one weight'."""
    monitored, other = nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 1)
    grams: list[torch.Tensor] = []
    monitored.register_forward_hook(lambda m, args, out: grams.append(torch.einsum("bchw,bdhw->bcd", out, out)))
    monitored.register_forward_hook(lambda m, args, out: other(out))
    assert _read(monitored) is None and len(grams) == 1
    gated = _Gated()
    layers = [("gated", gated), ("gated.gate", gated.gate)]
    with recording(layers) as reader, torch.no_grad():
        gated(torch.rand(2, 4, 9, 9))
    assert reader.computed(layers) == {}


class _Merged(nn.Linear):
    """A low-rank update merged into its weight before its one linear map (a product of parameters alone)."""

    def __init__(self) -> None:
        super().__init__(4, 3)
        self.a, self.b = nn.Parameter(torch.randn(3, 1)), nn.Parameter(torch.randn(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight + self.a @ self.b, self.bias)


def test_a_weight_made_by_products_of_parameters_is_one_weight() -> None:
    merged = _Merged()
    computed = _read(merged, torch.rand(2, 4))
    assert isinstance(computed, torch.Tensor) and torch.allclose(computed, merged.weight + merged.a @ merged.b)
    orthogonal = parametrizations.orthogonal(nn.Linear(4, 4))
    computed = _read(orthogonal, torch.rand(2, 4))
    assert isinstance(computed, torch.Tensor) and torch.allclose(computed, orthogonal.weight)


class _Interrupted(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise KeyboardInterrupt


def test_an_interrupted_run_leaves_no_recorder_behind() -> None:
    """torch runs always-call hooks for an Exception only: after Ctrl-C a recorder stayed on for the session,
    recording (and holding the inputs of) every later product."""
    layers = [("layer", _Interrupted(4, 2, 1))]
    with pytest.raises(KeyboardInterrupt), recording(layers):
        layers[0][1](torch.rand(1, 4, 4, 4))
    assert torch._C._len_torch_function_stack() == 0
