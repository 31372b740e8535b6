"""Receptive fields traced along the forward pass (field_trace) against the gradient's support, on models
that use every operation the tracer knows; and what it must refuse (operations it does not know, and
anything they feed)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from featviz_report.capture.truncated import Truncated
from featviz_report.errors import first_line
from featviz_report.fields.receptive import FieldUnknown, ReceptiveFields, gradient_boxes
from featviz_report.fields.trace import Blind, TracedField, trace_fields


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
        read = [p for p in positions if field.box(*p)[2] > field.box(*p)[0] and field.box(*p)[3] > field.box(*p)[1]]
        expected = gradient_boxes(model, module, 0, (3, size, size), read)
        assert {p: field.box(*p) for p in read} == expected, module
        for p in sorted(set(positions) - set(read))[:1]:  # in padding: no pixel, no box
            with pytest.raises(FieldUnknown, match="reaches no input pixel"):
                gradient_boxes(model, module, 0, (3, size, size), [p])


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


class ClassicSE(nn.Module):
    """Two squeeze-excitation blocks as SENet's code writes them: pooled, ``view(b, c)``, linear layers,
    then ``view(b, c, 1, 1)`` and ``expand_as``. The first pools every 4th row and column of its maps, so
    what follows reads less than the whole image."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Sequential(nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 8), nn.Sigmoid())
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.fc2 = nn.Sequential(nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 8), nn.Sigmoid())
        self.head = nn.Conv2d(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c = x.shape[:2]
        x = x * self.fc(F.adaptive_avg_pool2d(F.max_pool2d(x, 1, 4), 1).view(b, c)).view(b, c, 1, 1)
        x = self.mid(F.avg_pool2d(x, 2))  # a functional max pool would send the gradient to one pixel
        y = self.fc2(torch.flatten(F.adaptive_avg_pool2d(F.avg_pool2d(x, 1, 3), 1), 1)).view(b, c, 1, 1)
        return self.head(x * y.expand_as(x))


def test_traced_fields_equal_the_gradients_after_classic_squeeze_excitation_blocks() -> None:
    torch.manual_seed(0)
    model = ClassicSE()
    _compare(model, 30, [model.stem, model.mid, model.head])


class Unknown(nn.Module):
    """A rolled branch (the tracer does not know roll) added back onto a known path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, padding=1)
        self.roll = nn.Identity()
        self.head = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.head(x + self.roll(torch.roll(self.down(x), 3, dims=-1)))


def test_what_the_tracer_does_not_know_is_unknown_and_so_is_all_it_feeds() -> None:
    model = Unknown().eval()
    traced = trace_fields(model, torch.randn(1, 3, 16, 16))
    assert traced[(model.conv, 0)] is not None and traced[(model.down, 0)] is not None
    assert traced[(model.roll, 0)] is None and traced[(model.head, 0)] is None
    flat = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Flatten(), nn.Unflatten(1, (3, 14, 14)), nn.Conv2d(3, 3, 3))
    traced = trace_fields(flat.eval(), torch.randn(1, 3, 16, 16))
    assert traced[(flat[0], 0)] is not None
    assert traced[(flat[1], 0)] is None and traced[(flat[3], 0)] is None  # through a flat vector: not vouched


class Lambda(nn.Module):
    """A model whose forward is ``fn(self, x)``, with the given submodules."""

    def __init__(self, fn: object, **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)  # type: ignore[operator]


def _true_box(model: nn.Module, module: nn.Module, position: tuple[int, int]) -> tuple[int, int, int, int]:
    """The bounding box of the input pixels the position really depends on: autograd on the real model in
    float64, the union over three random inputs; where autograd cannot differentiate the model (``out=``,
    ``set_``), the pixels whose change changes the position's outputs."""
    support = torch.zeros(16, 16, dtype=torch.float64)
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.randn(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
        with Truncated(model, module, 0) as truncated:
            try:
                out = truncated(x)
                support += torch.autograd.grad(out[:, :, position[0], position[1]].sum(), x)[0].abs().sum((0, 1))
            except RuntimeError:
                support += _moved(truncated, x.detach(), position)
    ys, xs = torch.nonzero(support, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _moved(truncated: Truncated, x: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
    """1 at each pixel of ``x`` whose change (all its channels) changes the outputs at ``position``, else 0."""
    moved = torch.zeros(16, 16, dtype=torch.float64)
    with torch.no_grad():
        before = truncated(x)[:, :, position[0], position[1]]
        for row in range(16):
            for col in range(16):
                changed = x.clone()
                changed[..., row, col] += 1.0
                moved[row, col] = float(not torch.equal(truncated(changed)[:, :, position[0], position[1]], before))
    return moved


def _conv(k: int = 3, out: int = 4) -> nn.Conv2d:
    return nn.Conv2d(3, out, k, padding=k // 2)


def _head() -> nn.Conv2d:
    return nn.Conv2d(4, 4, 1)


class _Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x.mean((2, 3), keepdim=True))


def _slice_add(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    y = s.c(x)
    y[:, :2].add_(s.b(x))  # written through a view: the base's field grows
    return s.h(y)


def _old_view(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    y = s.c(x)
    v = y.view(y.shape)
    y.add_(s.b(x))
    return s.h(v)


def _w_not_last(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(s.c(x).transpose(1, 3))


def _scripted_gate(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(s.c(x) * s.g(s.c(x)))


def _sum_all(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(s.c(x) * s.c(x).sum(dim=[], keepdim=True))


def _channels_last_mean(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(s.c(x).permute(0, 2, 3, 1).mean(-1).unsqueeze(1).permute(0, 3, 1, 2))


def _list_of_slices(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(s.c(x)[[slice(None)] * 3 + [list(range(15, -1, -1))]])  # flips W


def _cat_axis(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(torch.cat([s.c(x), s.c(x)], axis=2))


def _reflect(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(F.pad(s.c(x), (2, 1, 3, 0), mode="reflect"))


def _replicate(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(F.pad(s.c(x), (2, 2, 2, 2), mode="replicate"))


def _channel_slice(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(s.c(x)[:, :2, :, :])


def _zoomed(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(F.interpolate(s.c(x), scale_factor=1.7, mode="bilinear"))


def _shrunk(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(F.interpolate(s.c(x), scale_factor=0.6, mode="bilinear", antialias=True))


def _transposed(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(s.up(s.down(s.c(x))))


def _shuffled(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(F.pixel_shuffle(s.c(x), 2))


def _unshuffled(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    return s.h(F.pixel_unshuffle(s.c(x), 2))


def _se_vector(s: Lambda, y: torch.Tensor) -> torch.Tensor:
    """A classic squeeze-excitation vector: pooled over every 4th row and column of ``y`` (so its box is
    not the whole image), as ``view(b, c)``, two linear layers (SiLU between: a ReLU can be dead for all three
    test inputs, and then the gradient this is checked against sees no gate)."""
    b, c = y.shape[:2]
    return torch.sigmoid(s.fc2(F.silu(s.fc1(F.adaptive_avg_pool2d(F.max_pool2d(y, 1, 4), 1).view(b, c)))))


def _classic_se(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    y = s.c(x)
    return s.h(y * _se_vector(s, y).view(*y.shape[:2], 1, 1))


def _se_unknown_ops(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # sort and cumsum: any op keeps the box
    y = s.c(x)
    g = torch.cumsum(torch.sort(_se_vector(s, y), dim=1).values, 1)
    return s.h(y * g.view(*y.shape[:2], 1, 1))


def _se_expanded(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # the gate alone, as maps
    y = s.c(x)
    return s.h(_se_vector(s, y).view(*y.shape[:2], 1, 1).expand_as(y))  # as classic SENet code writes it


def _buffer_view(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # the gate written into a buffer through a view
    y = s.c(x)
    b, c = y.shape[:2]
    buf = torch.zeros(b, c, 1, 1, dtype=y.dtype)
    buf.view(b, c).copy_(F.adaptive_avg_pool2d(y, 1).view(b, c))
    return s.h(y * buf)


def _new_tensor(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a copy of the pooled values
    y = s.c(x)
    return s.h(y * y.new_tensor(F.adaptive_avg_pool2d(y, 1)))


def _lrn_channels_last(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # its window then runs along H
    return s.h(F.local_response_norm(s.c(x).permute(0, 2, 3, 1), 5).permute(0, 3, 1, 2))


def _sparse_alive(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a sparse tensor has no storage to compare
    y = s.c(x)
    sparse = y.to_sparse()
    z = y.clone()
    z.add_(1)
    return s.h(z + 0 * sparse.to_dense())


def _mean_gate(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # timm's way: mean((2, 3)), then [..., None, None]
    y = s.c(x)
    return s.h(y * torch.sigmoid(s.fc2(s.fc1(F.max_pool2d(y, 1, 4).mean((2, 3)))))[:, :, None, None])


def _whole_mean(s: Lambda, x: torch.Tensor) -> torch.Tensor:
    y = s.c(x)
    return s.h(y - F.max_pool2d(y, 1, 4).mean())


def _alias_then_write(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # the alias was taken before the write
    y = s.c(x)
    b, c = y.shape[:2]
    buf = torch.zeros(b, c, dtype=y.dtype)
    alias = buf.view(b, c, 1, 1)
    buf.copy_(F.adaptive_avg_pool2d(y, 1).view(b, c))
    return s.h(y * alias)


def _ghost(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # GhostNet: a channel slice of a concatenation, added to
    out = torch.cat([s.c(x), s.b(s.c(x))], 1)[:, :4]
    out += s.d(x)
    return s.h(out)


def _stacked(s: Lambda, x: torch.Tensor, dim: int = 1) -> torch.Tensor:  # SK: branches stacked, then summed
    return s.h(torch.stack([s.c(x), s.b(x)], dim).sum(dim))


def _max_other(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # elementwise, the second tensor by keyword
    return s.h(torch.max(F.avg_pool2d(x, 1, 2), other=F.max_pool2d(x, 2, 2)))


def _detached_write(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # written through an alias with no _base
    y = s.c(x)
    buf = torch.zeros(1, 4, 1, 1, dtype=y.dtype)
    buf.detach().copy_(y.mean((2, 3), keepdim=True))
    return s.h(y * buf)


def _out_tuple(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # out= as a tuple, into a view of a followed tensor
    y = s.c(x)
    base = y.clone()
    torch.max(F.avg_pool2d(y, 7, 1, 3), 1, keepdim=True, out=(base[:, :1], torch.empty(0, dtype=torch.long)))
    return s.h(base)


def _set_bigger(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # set_ is not seen, and changes the shape
    y = s.c(x)
    g = F.avg_pool2d(y, 1, 16)
    g.set_(F.avg_pool2d(y, 7, 1, 3))
    return s.h(g)


def _sampled(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # every 4th row and column of the first maps
    return F.max_pool2d(s.c(x), 1, 4)


def _global_context(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # GCNet: softmax over positions, then a sum
    y = s.c(x)
    z = _sampled(s, x)
    b, c = z.shape[:2]
    weights = torch.softmax(s.a(z).reshape(b, 1, -1), -1)
    context = z.reshape(b, c, -1).unsqueeze(1) @ weights.unsqueeze(-1)
    return s.h(y + context.view(b, c, 1, 1))


def _self_attention(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a non-local block over sampled tokens
    z = _sampled(s, x)
    b, c, h, w = z.shape
    tokens = z.flatten(2).transpose(1, 2)
    q, k, v = s.q(tokens), s.k(tokens), s.v(tokens)
    out = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
    return s.h(out.transpose(1, 2).reshape(b, c, h, w) + z)


def _biased_attention(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # CoAtNet: a bias gathered from a table
    y = s.c(x)
    b, c, h, w = y.shape
    tokens = y.flatten(2).transpose(1, 2).unsqueeze(1)
    bias = s.table.weight[torch.arange(h * w)[:, None] - torch.arange(h * w)[None, :] + h * w - 1].squeeze(-1)
    out = F.scaled_dot_product_attention(tokens, tokens, tokens, attn_mask=bias)
    return s.h(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


def _token_mixing(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # MLP-Mixer: a linear layer across tokens
    z = _sampled(s, x)
    return s.h(s.mix(z.flatten(2)).reshape(z.shape))


def _tokens_alone(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # to tokens and back, mixing channels only
    y = s.c(x)
    tokens = s.lin(s.norm(y.flatten(2).transpose(1, 2)))
    return s.h(tokens.transpose(1, 2).reshape(y.shape))


def _class_token(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a token put before the others: not maps
    y = s.c(x)
    tokens = torch.cat([torch.zeros(1, 1, 4, dtype=y.dtype), y.flatten(2).transpose(1, 2)], 1)
    return s.h(tokens[:, 1:].transpose(1, 2).reshape(y.shape))


def _linear_by_tokens(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # the weight is the tokens themselves
    y = s.c(x)
    b, c, h, w = y.shape
    tokens = y.flatten(2).transpose(1, 2)
    return s.h(F.linear(tokens, tokens[0]).reshape(b, h, w, h * w).permute(0, 3, 1, 2))


def _matmul_by_keyword(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # operands named, in the other order
    y = s.c(x)
    b, c, h, w = y.shape
    mixed = torch.matmul(other=y.flatten(2).transpose(1, 2), input=s.mix.weight)
    return s.h(mixed.transpose(1, 2).reshape(b, c, h, w))


def _prelu_by_tokens(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a per-channel weight from the tokens
    z = F.max_pool2d(s.c(x), 1, 8)  # 2×2: as many tokens as channels
    tokens = z.flatten(2)
    return s.h(F.prelu(-1 - tokens * tokens, tokens[0, 0]).reshape(z.shape))


def _batch_norm_by_tokens(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # its weight from the tokens, as prelu's
    z = F.max_pool2d(s.c(x), 1, 8)
    tokens = z.flatten(2)
    statistics = torch.zeros(4, dtype=z.dtype), torch.ones(4, dtype=z.dtype)
    return s.h(F.batch_norm(tokens, *statistics, weight=tokens[0, 0]).reshape(z.shape))


def _clamp_by_tokens(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # in place, bounded by other tokens
    tokens = F.max_pool2d(s.c(x), 1, 8).flatten(2)
    out = -1 - tokens * tokens
    out.clamp_(max=-1 - tokens.flip(-1) ** 2)  # flip: the tracer refuses
    return s.h(out.reshape(-1, 4, 2, 2))


def _swapaxes_by_keyword(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # numpy's axis0/axis1
    return s.h(F.avg_pool2d(s.c(x).swapaxes(axis0=2, axis1=3), (1, 5), 1, (0, 2)))


def _flip(y: torch.Tensor) -> torch.Tensor:
    return y.flip(-1)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated; models still carry it
    _scripted_flip = torch.jit.script(_flip)


def _script_into_zeros(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # unseen maps copied into a constant
    y = s.c(x)
    buf = torch.zeros(y.shape, dtype=y.dtype)
    buf.copy_(_scripted_flip(y))
    return s.h(y + buf)


def _numpy_into_zeros(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a factory's map filled through numpy
    y = s.c(x)
    buf = torch.zeros(y.shape, dtype=y.dtype)
    buf.numpy()[...] = y.detach().flip(-1).numpy()
    return s.h(y + buf)


class _Store(nn.Module):
    """A buffer for a model to write into."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("big", torch.zeros(1, 4, 16, 16, dtype=torch.float64))


def _aten_copy(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # an ATen overload's name is copy_.default
    y = s.c(x)
    view = s.store.big.view(1, 4, 16, 16)
    torch.ops.aten.copy_.default(s.store.big, F.avg_pool2d(y, 5, 1, 2))
    return s.h(y + view)


def _parameter_gate(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # nn.Parameter made over a followed gate
    y = s.c(x)
    return s.h(y * nn.Parameter(y.mean((2, 3), keepdim=True), requires_grad=False))


def _tolist_map(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a constant's new_tensor of maps from the input
    y = s.c(x)
    return s.h(y + s.c.weight.new_tensor(y.flip(-1).tolist()))


def _tokens(h: nn.Module, **more: nn.Module) -> dict[str, nn.Module]:
    return {"c": _conv(), "h": h, **more}


def _se(h: nn.Module) -> dict[str, nn.Module]:
    return {"c": _conv(), "fc1": nn.Linear(4, 3), "fc2": nn.Linear(3, 4), "h": h}


def _decoder(s: Lambda, x: torch.Tensor) -> torch.Tensor:  # a UNet's way up: down, resample, add the skip
    skip = s.c(x)
    return s.h(skip + s.up(s.down(skip)))


CASES = {  # a red-team pass's cases, each a wrong box once (now exact or refused), then newly understood ones
    "W not last": (_w_not_last, lambda: {"c": _conv(), "h": nn.LayerNorm(4)}, (5, 0), False),
    "add_ through a slice": (_slice_add, lambda: {"c": _conv(), "b": _conv(7, 2), "h": _head()}, (0, 0), False),
    "a view of a base added to": (_old_view, lambda: {"c": _conv(), "b": _conv(7), "h": _head()}, (0, 0), False),
    "a traced TorchScript gate": (
        _scripted_gate,
        lambda: {"c": _conv(), "g": torch.jit.trace(_Gate(), torch.randn(1, 4, 16, 16)), "h": _head()},
        (0, 0),
        False,
    ),
    "sum over dim=[]": (_sum_all, lambda: {"c": _conv(), "h": _head()}, (0, 0), False),
    "channels-last mean(-1)": (_channels_last_mean, lambda: {"c": _conv(), "h": nn.Identity()}, (0, 0), False),
    "a list of slices": (_list_of_slices, lambda: {"c": _conv(), "h": nn.Identity()}, (0, 0), False),
    "cat with axis=": (_cat_axis, lambda: {"c": _conv(), "h": _head()}, (0, 0), False),
    "reflect padding": (_reflect, lambda: {"c": _conv(), "h": nn.Conv2d(4, 4, 3)}, (0, 14), True),
    "replicate padding": (_replicate, lambda: {"c": _conv(), "h": nn.Conv2d(4, 4, 5)}, (15, 0), True),
    "full spatial slices": (_channel_slice, lambda: {"c": _conv(5), "h": nn.Conv2d(2, 2, 3, padding=1)}, (7, 7), True),
    "transposed convolution": (
        _transposed,
        lambda: {
            "c": _conv(),
            "down": nn.Conv2d(4, 4, 3, stride=2, padding=1),
            "up": nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, dilation=1),
            "h": nn.Conv2d(4, 4, 3, padding=1),
        },
        (9, 0),
        True,
    ),
    "dilated transposed convolution": (
        _transposed,
        lambda: {
            "c": _conv(),
            "down": nn.Conv2d(4, 4, 2, stride=2),
            "up": nn.ConvTranspose2d(4, 4, 3, stride=3, padding=2, dilation=2),
            "h": nn.Conv2d(4, 4, 1),
        },
        (12, 5),
        True,
    ),
    "pixel shuffle": (_shuffled, lambda: {"c": _conv(3, 8), "h": nn.Conv2d(2, 2, 3)}, (6, 27), True),
    "pixel unshuffle": (_unshuffled, lambda: {"c": _conv(), "h": nn.Conv2d(16, 2, 3)}, (5, 1), True),
    "a gate written into a view of a buffer": (_buffer_view, lambda: {"c": _conv(), "h": nn.Identity()}, (8, 8), False),
    "channels-last local response norm": (
        _lrn_channels_last,
        lambda: {"c": _conv(), "h": nn.Identity()},
        (8, 8),
        False,
    ),
    "a sparse tensor alive": (_sparse_alive, lambda: {"c": _conv(), "h": nn.Identity()}, (8, 8), False),
    "an alias of a buffer, then written": (
        _alias_then_write,
        lambda: {"c": _conv(), "h": nn.Identity()},
        (8, 8),
        False,
    ),
    "added into a slice of a concatenation": (
        _ghost,
        lambda: {"c": _conv(), "b": nn.Conv2d(4, 4, 3, padding=1), "d": _conv(7), "h": _head()},
        (2, 13),
        True,
    ),
    "branches stacked": (_stacked, lambda: {"c": _conv(), "b": _conv(5), "h": _head()}, (15, 3), True),
    "stacked after the spatial axes": (
        lambda s, x: _stacked(s, x, -1),
        lambda: {"c": _conv(), "b": _conv(5), "h": _head()},
        (15, 3),
        False,
    ),
    "max with other=": (_max_other, lambda: {"h": nn.Identity()}, (7, 7), True),
    "out= a tuple": (_out_tuple, lambda: {"c": _conv(), "h": nn.Identity()}, (15, 15), False),
    "set_ to a larger tensor": (_set_bigger, lambda: {"c": _conv(), "h": nn.Identity()}, (8, 8), False),
    "global context (GCNet)": (
        _global_context,
        lambda: _tokens(nn.Conv2d(4, 4, 3, padding=1), a=nn.Conv2d(4, 1, 1)),
        (0, 0),
        True,
    ),
    "self-attention over tokens": (
        _self_attention,
        lambda: _tokens(nn.Conv2d(4, 4, 3, padding=1), q=nn.Linear(4, 4), k=nn.Linear(4, 4), v=nn.Linear(4, 4)),
        (0, 0),
        True,
    ),
    "attention with a bias from a table": (
        _biased_attention,
        lambda: _tokens(nn.Conv2d(4, 4, 1), table=nn.Embedding(511, 1)),
        (3, 5),
        True,
    ),
    "tokens mixed by a linear layer": (
        _token_mixing,
        lambda: _tokens(nn.Conv2d(4, 4, 1), mix=nn.Linear(16, 16)),
        (1, 2),
        True,
    ),
    "to tokens and back": (
        _tokens_alone,
        lambda: _tokens(nn.Conv2d(4, 4, 3, padding=1), norm=nn.LayerNorm(4), lin=nn.Linear(4, 4)),
        (6, 11),
        True,
    ),
    "a linear layer weighted by the tokens": (
        _linear_by_tokens,
        lambda: _tokens(nn.Identity()),
        (0, 0),
        False,
    ),
    "matmul with its operands by keyword": (
        _matmul_by_keyword,
        lambda: _tokens(nn.Identity(), mix=nn.Linear(256, 256)),
        (3, 3),
        True,
    ),
    "prelu weighted by the tokens": (_prelu_by_tokens, lambda: _tokens(nn.Identity()), (0, 0), False),
    "batch norm weighted by the tokens": (_batch_norm_by_tokens, lambda: _tokens(nn.Identity()), (0, 0), False),
    "clamped in place by other tokens": (_clamp_by_tokens, lambda: _tokens(nn.Identity()), (0, 0), False),
    "swapaxes by keyword": (_swapaxes_by_keyword, lambda: _tokens(nn.Identity()), (0, 0), False),
    "ATen's copy_ into a buffer, read through a view": (
        _aten_copy,
        lambda: {"c": _conv(), "store": _Store(), "h": nn.Identity()},
        (8, 8),
        False,
    ),
    "a class token": (_class_token, lambda: _tokens(nn.Conv2d(4, 4, 1)), (3, 3), False),
    "squeeze-excitation with view(b, c)": (_classic_se, lambda: _se(nn.Conv2d(4, 4, 3, padding=1)), (0, 0), True),
    "its vector through unknown ops": (_se_unknown_ops, lambda: _se(nn.Conv2d(4, 4, 3, padding=1)), (1, 0), True),
    "a gate from mean((2, 3)) and [..., None, None]": (
        _mean_gate,
        lambda: _se(nn.Conv2d(4, 4, 3, padding=1)),
        (0, 0),
        True,
    ),
    "less the mean of everything": (_whole_mean, lambda: {"c": _conv(), "h": nn.Conv2d(4, 4, 3)}, (0, 0), True),
    "its gate expanded to maps": (_se_expanded, lambda: _se(nn.Identity()), (15, 15), True),
    "scaled by 1.7": (_zoomed, lambda: {"c": _conv(), "h": nn.Conv2d(4, 4, 3)}, (20, 3), True),
    "shrunk, antialiased": (_shrunk, lambda: {"c": _conv(), "h": nn.Conv2d(4, 4, 3)}, (4, 2), True),
    **{
        f"upsampled, {mode}": (
            _decoder,
            lambda kw=kw: {
                "c": _conv(),
                "down": nn.Conv2d(4, 4, 3, stride=2, padding=1),
                "up": nn.Upsample(size=(16, 16), **kw),
                "h": nn.Conv2d(4, 4, 3, padding=1),
            },
            position,
            True,
        )
        for mode, kw, position in (
            ("nearest", {"mode": "nearest"}, (5, 9)),
            ("nearest-exact", {"mode": "nearest-exact"}, (15, 0)),
            ("bilinear", {"mode": "bilinear", "align_corners": False}, (0, 7)),
            ("bilinear, corners aligned", {"mode": "bilinear", "align_corners": True}, (11, 15)),
            ("bicubic", {"mode": "bicubic", "align_corners": False}, (8, 3)),
        )
    },
}


def _answer(model: nn.Module, x: torch.Tensor, position: tuple[int, int]) -> tuple[int, ...] | str:
    """What a report gives as ``model.h``'s field at ``position``, traced on ``x``: the box (traced, or from the
    gradient where the tracer refused), or the reason the page gives for saying it is unknown (any failure:
    :func:`featviz_report.fields.receptive.with_fields`), which must say something."""
    try:
        return ReceptiveFields.traced_on(model, x).boxes(model.h, 0, [position])[position]
    except Exception as err:  # noqa: BLE001 - the page says the field is unknown, and why
        assert first_line(err).strip(), f"{type(err).__name__} with no reason"
        return f"unknown: {first_line(err)}"


def _holds(answer: tuple[int, ...] | str, box: tuple[int, ...]) -> bool:
    """Whether the answer holds ``box`` (x0, y0, x1, y1) or is 'unknown'; never a box smaller than the truth."""
    if isinstance(answer, str):
        return True
    return answer[0] <= box[0] and answer[1] <= box[1] and answer[2] >= box[2] and answer[3] >= box[3]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")  # jit.trace, a list as an index
@pytest.mark.parametrize("name", list(CASES))
def test_traced_boxes_are_exact_or_refused(name: str) -> None:
    """The traced box is the true one; where the tracer refuses, what the report shows instead (the gradient's
    box, or 'unknown' and why) holds the true box (issue 26)."""
    forward, modules, position, understood = CASES[name]
    torch.manual_seed(0)
    model = Lambda(forward, **modules()).double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    field = trace_fields(model, x).get((model.h, 0))
    assert isinstance(field, TracedField) or not understood, name
    truth = _true_box(model, model.h, position)
    if isinstance(field, TracedField):
        assert field.box(*position) == truth, name
    else:  # refused: the gradient answers, or the page says the field is unknown
        answer = _answer(model, x, position)
        assert _holds(answer, truth), (name, answer, truth)


@pytest.mark.filterwarnings("ignore:To copy construct")  # torch's advice about new_tensor: the case itself
@pytest.mark.parametrize(
    "forward", [_new_tensor, _detached_write, _script_into_zeros, _numpy_into_zeros, _parameter_gate, _tolist_map]
)
def test_copies_without_a_gradient_are_followed_or_refused(forward: object) -> None:
    """``new_tensor``, a write through ``detach()`` and maps copied in from a scripted function or numpy
    carry values without a gradient, so autograd cannot be the judge: a pixel far from the position's own
    window (here: its mirror image's) changes the output there, and what the report shows holds it (the
    traced box; where the tracer refuses, the gradient's, or 'unknown' and why)."""
    torch.manual_seed(0)
    model = Lambda(forward, c=_conv(), h=nn.Identity()).double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    moved = x.clone()
    moved[..., 8, 13] += 1.0  # outside (8, 2)'s own 3×3 window
    with torch.no_grad():
        assert not torch.equal(model(x)[..., 8, 2], model(moved)[..., 8, 2])
    field = trace_fields(model, x)[(model.h, 0)]
    answer = field.box(8, 2) if isinstance(field, TracedField) else _answer(model, x, (8, 2))
    assert _holds(answer, (13, 8, 14, 9)) and _holds(answer, (2, 8, 3, 9)), answer  # the mirror pixel, its own


@pytest.mark.filterwarnings("ignore:To copy construct")
@pytest.mark.parametrize(
    ("forward", "how"),
    [
        (_numpy_into_zeros, "numpy"),
        (_tolist_map, "tolist"),
        (_parameter_gate, "same memory"),
        (_detached_write, "same memory"),
    ],
)
def test_a_path_the_gradient_cannot_see_makes_the_layer_and_all_it_feeds_unknown(forward: object, how: str) -> None:
    """Where values from the input travel outside autograd (numpy, ``.tolist()``, a tensor made over their memory,
    a write through ``detach()``) and the tracer cannot follow them, the gradient's box would miss them: the layer
    and every layer after it are unknown, and the reason says how the values went."""
    torch.manual_seed(0)
    model = Lambda(forward, c=_conv(), h=nn.Identity()).double().eval()
    after = nn.Conv2d(4, 4, 3, padding=1).double()
    whole = nn.Sequential(model, after).eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    traced = trace_fields(whole, x)
    for module in (model.h, after):
        assert isinstance(traced[(module, 0)], Blind) and how in traced[(module, 0)].reason, module
        with pytest.raises(FieldUnknown, match="the gradient"):
            ReceptiveFields.traced_on(whole, x).boxes(module, 0, [(8, 2)])
    assert isinstance(traced[(model.c, 0)], TracedField)  # before the values left: traced
