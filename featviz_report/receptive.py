"""Receptive fields from the model itself: which input pixels an output position of a layer depends on.

:class:`ReceptiveFields` composes them exactly along one forward pass where every operation is understood
(:mod:`featviz_report.field_trace`: milliseconds for a whole model) and otherwise takes the gradient's
support, below (seconds per layer of a large model).

By the gradient, the field of a position is the support of the gradient of that position's outputs (every channel) with
respect to the input, on a structural copy of the model in which nothing can hide a path: every
convolution and linear layer averages its inputs with positive weights and no bias, max pooling becomes
average pooling of the same geometry, normalisation, dropout and activation modules become identities,
and the input is all ones. Every path then carries a positive gradient,
so the support is exactly the set of pixels the position can depend on, clipped to the image.

Computed once per layer: boxes for a few probe positions (centre, its neighbours, corners); when the
centre's field lies inside the image and the others are its shifts (a translation-equivariant layer, as
convolutions and pooling are), the box of every position whose shifted field stays inside the image
follows by shifting; the others' (a field the border clips, which dilation or strides can make other than
the shifted one clipped) are computed directly, a batch of positions at a time. Operations done with
``torch.nn.functional`` inside ``forward`` are not replaced (a functional max pool sends the gradient to
one pixel of its window, so such a field can come out smaller than the true one).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .device import evaluating
from .errors import first_line
from .feature_vis import Truncated
from .field_trace import TracedField, trace_fields
from .report_data import LayerSection, Peaks

__all__ = ["ReceptiveFields", "receptive_fields", "with_fields", "gradient_boxes", "Box"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in input pixels, x1/y1 exclusive
CHUNK = 16  # positions per backward pass when computed one by one
_IDENTITY = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.GroupNorm,
    nn.InstanceNorm2d, nn.LayerNorm, nn.LocalResponseNorm,
)  # fmt: skip


def _structural(model: nn.Module) -> tuple[nn.Module, dict[int, nn.Module]]:
    """The structural copy (float32, CPU) and a map from the original modules' ids to their copies."""
    probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    originals = dict(zip((id(m) for m in probe.modules()), model.modules()))
    for module in probe.modules():  # the user's hooks are not run on the probe's made-up values
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            getattr(module, hooks).clear()
    for parent in list(probe.modules()):
        for name, child in list(parent.named_children()):
            replacement = _replacement(child)
            if replacement is not None:
                originals[id(replacement)] = originals[id(child)]
                setattr(parent, name, replacement)
    for module in probe.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)):
            with torch.no_grad():
                module.weight.fill_(1.0 / max(1, module.weight[0].numel()))
                if module.bias is not None:
                    module.bias.zero_()
    return probe, {id(original): copied for copied in probe.modules() for original in [originals[id(copied)]]}


def _replacement(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.MaxPool2d) and module.dilation in (1, (1, 1)):
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode, True)  # type: ignore[arg-type]
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveAvgPool2d(module.output_size)
    if isinstance(module, _IDENTITY):
        return nn.Identity()
    return None


def _support(truncated: Truncated, shape: tuple[int, int, int], positions: Sequence[tuple[int, int]]) -> list[Box]:
    """The bounding box of the gradient's support for each (row, col) of the layer's maps."""
    boxes: list[Box] = []
    for start in range(0, len(positions), CHUNK):
        chunk = positions[start : start + CHUNK]
        x = torch.ones((len(chunk), *shape), requires_grad=True)
        with torch.enable_grad():
            out = truncated(x)
            rows = torch.arange(len(chunk))
            picked = out[rows, :, torch.tensor([r for r, _ in chunk]), torch.tensor([c for _, c in chunk])]
            picked.sum().backward()
        grad = x.grad.abs().sum(1)  # type: ignore[union-attr]
        for g in grad:
            ys, xs = torch.nonzero(g, as_tuple=True)
            boxes.append(
                (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(ys) else (0, 0, 0, 0)
            )
    return boxes


class ReceptiveFields:
    """The receptive fields of ``model``'s layers for C×H×W inputs of ``shape``: those ``traced`` along a
    forward pass (:mod:`.field_trace`), else from the gradient."""

    def __init__(
        self, model: nn.Module, shape: tuple[int, int, int], traced: dict[tuple[nn.Module, int], TracedField | None]
    ) -> None:
        self.model, self.shape, self.traced = model, shape, traced

    @classmethod
    def traced_on(cls, model: nn.Module, inputs: torch.Tensor) -> ReceptiveFields:
        """Traced on ``inputs`` (N×C×H×W, on the model's device), in eval mode (the modes restored after)."""
        with evaluating(model):
            return cls(model, (inputs.shape[1], inputs.shape[2], inputs.shape[3]), trace_fields(model, inputs))

    def boxes(self, module: nn.Module, call: int, positions: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Box]:
        """Each (row, col) of ``module``'s ``call``-th output maps → its field in input pixels."""
        field = self.traced.get((module, call))
        if field is None:
            return gradient_boxes(self.model, module, call, self.shape, positions)
        return {p: field.box(*p) for p in set(positions)}

    def peak_boxes(self, module: nn.Module, call: int, top: Peaks) -> np.ndarray:
        """k×C×4: the field of every channel's top peaks, -1 for an empty slot."""
        kept = top.sample >= 0
        field = self.traced.get((module, call))
        if field is not None:
            return np.where(kept[..., None], field.boxes(np.where(kept, top.row, 0), np.where(kept, top.col, 0)), -1)
        found = self.boxes(module, call, {(int(r), int(c)) for r, c in zip(top.row[kept], top.col[kept])})
        boxes = np.full((*top.sample.shape, 4), -1, dtype=np.int64)
        for rank, channel in zip(*np.nonzero(kept)):
            boxes[rank, channel] = found[(int(top.row[rank, channel]), int(top.col[rank, channel]))]
        return boxes


def receptive_fields(model: nn.Module, candidates: Iterable[torch.Tensor]) -> ReceptiveFields | None:
    """The fields traced on the first of ``candidates`` the model runs on (None when it runs on none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the model's own warnings were shown when it ran for the report
        for inputs in candidates:
            try:
                return ReceptiveFields.traced_on(model, inputs)
            except Exception:  # noqa: BLE001 - the model ran for the report; one sample may not
                continue
    return None


def with_fields(
    sections: Sequence[LayerSection],
    keys: Sequence[tuple[nn.Module, int]],
    fields: ReceptiveFields | None,
    warn: Callable[[str], None],
) -> tuple[LayerSection, ...]:
    """``sections`` (each made for the (module, call) in ``keys``) with every map layer's top peaks given
    their receptive fields; a layer the model does not allow them for gets none, and one warning."""
    done = []
    for section, (module, call) in zip(sections, keys):
        if section.kind != "maps" or isinstance(module, nn.MultiheadAttention):  # attention maps: query × key
            done.append(section)
            continue
        try:
            if fields is None:
                raise RuntimeError("the model ran on no single sample")
            boxes = fields.peak_boxes(module, call, section.channels.top)
        except Exception as err:  # noqa: BLE001 - the user's model, probed our way: the page stands without them
            warn(f"no receptive fields for {section.name!r} ({type(err).__name__}: {first_line(err)}); "
                 "its top images are shown whole")  # fmt: skip
            done.append(section)
            continue
        top = dataclasses.replace(section.channels.top, box=boxes)
        done.append(dataclasses.replace(section, channels=dataclasses.replace(section.channels, top=top)))
    return tuple(done)


def gradient_boxes(
    model: nn.Module, module: nn.Module, call: int, shape: tuple[int, int, int], positions: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], Box]:
    """Each (row, col) of ``module``'s ``call``-th output maps → its receptive field in the input of
    C×H×W ``shape`` from the gradient's support, clipped to the image. ``model`` itself is not changed
    (a copy is probed)."""
    wanted = sorted(set(positions))
    if not wanted:
        return {}
    with evaluating(model):
        probe, copies = _structural(model)
    probe.eval()
    with Truncated(probe, copies[id(module)], call) as truncated:
        with torch.no_grad():
            output = truncated(torch.ones((1, *shape)))
        if output.ndim != 4:
            raise ValueError(f"the layer's output is {output.ndim}-D, not maps")
        h, w = output.shape[-2:]
        centre = (h // 2, w // 2)
        probes = [centre, (min(h - 1, centre[0] + 1), centre[1]), (centre[0], min(w - 1, centre[1] + 1))]
        probes += [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
        found = dict(zip(probes, _support(truncated, shape, probes)))
        shifted = _shifted(found, centre, shape, (h, w))
        inside = {p: shifted(p) for p in wanted if shifted is not None and _inside(shifted(p), shape)}
        border = [p for p in wanted if p not in inside]  # a clipped field may not be the shifted one clipped
        return {**inside, **dict(zip(border, _support(truncated, shape, border)))}


def _inside(box: Box, shape: tuple[int, int, int]) -> bool:
    return box[0] > 0 and box[1] > 0 and box[2] < shape[2] and box[3] < shape[1]


def _shifted(
    found: dict[tuple[int, int], Box], centre: tuple[int, int], shape: tuple[int, int, int], size: tuple[int, int]
):  # type: ignore[no-untyped-def]
    """A function giving any position's box, unclipped, by shifting the centre's, when the probes agree."""
    x0, y0, x1, y1 = found[centre]
    if not _inside(found[centre], shape) or size[0] < 2 or size[1] < 2:
        return None  # the centre's field reaches the border: its true extent is not known
    sy = found[(centre[0] + 1, centre[1])][1] - y0 if centre[0] + 1 < size[0] else 0
    sx = found[(centre[0], centre[1] + 1)][0] - x0 if centre[1] + 1 < size[1] else 0

    def box(position: tuple[int, int]) -> Box:
        dy, dx = (position[0] - centre[0]) * sy, (position[1] - centre[1]) * sx
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    clipped = {
        p: (max(0, b[0]), max(0, b[1]), min(shape[2], b[2]), min(shape[1], b[3])) for p in found for b in [box(p)]
    }
    return box if clipped == found else None
