"""Receptive fields from the model itself: which input pixels an output position of a layer depends on.

:class:`ReceptiveFields` composes them exactly along one forward pass where every operation is understood
(:mod:`featviz_report.field_trace`: milliseconds for a whole model) and otherwise takes the gradient's
support, below (seconds per layer of a large model).

By the gradient, the field of a position is the bounding box of every input pixel that the gradient of the
position's outputs reaches, over two CPU copies of the model, each run under
:class:`~featviz_report.field_paths.OpenPaths` (values as computed, but no activation, max, pool,
normalisation statistic or data-dependent sampling can hide a path from the gradient):

- a *structural* copy, every parameter positive and random (a convolution or linear layer averages its
  inputs with random positive weights), BatchNorm's statistics neutral, on a random positive input: no
  value is zero and no channel is another's copy, so nothing cancels;
- the model's own weights on the first sample and on a random input.

The position's channels are summed with random signed weights (channels whose sum is a constant, after a
softmax over channels or a layer norm, no longer cancel). A position whose gradient reaches no pixel has no
field: the layer's fields are unknown (:class:`FieldUnknown`), never an empty box. Every (input, position)
pair has its own slot of the batch, so one backward pass covers many; a model exported for a fixed batch
size is probed in batches of exactly that size.

Computed per layer: the centre's field; when it lies inside the image, those of its neighbours and the
corners too, and when these are its shifts (a translation-equivariant layer, as convolutions and pooling
are), the box of every position whose shifted field stays inside the image follows by shifting; the others'
(a field the border clips, which dilation or strides can make other than the shifted one clipped) are
computed directly.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .capture import maps_order
from .device import evaluating
from .errors import first_line
from .feature_vis import Truncated
from .field_paths import OpenPaths
from .field_trace import TracedField, trace_fields
from .report_data import LayerSection, Peaks

__all__ = [
    "ReceptiveFields", "receptive_fields", "with_fields", "gradient_boxes", "GradientProbe", "fixed_batch", "Box",
    "FieldUnknown",
]  # fmt: skip

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in input pixels, x1/y1 exclusive
Position = tuple[int, int]  # row, col in a layer's maps
SLOTS = 16  # (input, position) pairs per backward pass, for a model that takes any batch size
_SEED = 0


class FieldUnknown(Exception):
    """A layer whose receptive fields cannot be given; the message says why."""


class ReceptiveFields:
    """The receptive fields of ``model``'s layers for C×H×W inputs of ``shape``: those ``traced`` along a
    forward pass (:mod:`.field_trace`), else from the gradient, on ``sample`` (1×C×H×W) among others."""

    def __init__(
        self,
        model: nn.Module,
        shape: tuple[int, int, int],
        traced: dict[tuple[nn.Module, int], TracedField | None],
        sample: torch.Tensor | None = None,
    ) -> None:
        self.model, self.shape, self.traced, self.sample = model, shape, traced, sample
        self._probe: GradientProbe | None = None

    @classmethod
    def traced_on(cls, model: nn.Module, inputs: torch.Tensor) -> ReceptiveFields:
        """Traced on ``inputs`` (N×C×H×W, on the model's device), in eval mode (the modes restored after)."""
        with evaluating(model):
            traced = trace_fields(model, inputs)
        return cls(model, (inputs.shape[1], inputs.shape[2], inputs.shape[3]), traced, inputs[:1])

    def boxes(self, module: nn.Module, call: int, positions: Iterable[Position]) -> dict[Position, Box]:
        """Each (row, col) of ``module``'s ``call``-th output maps → its field in input pixels."""
        field = self.traced.get((module, call))
        if field is None:
            if self._probe is None:  # one pair of copies for every layer the tracer left
                self._probe = GradientProbe(self.model, self.shape, self.sample)
            return self._probe.boxes(module, call, positions)
        return {p: field.box(*p) for p in set(positions)}

    def peak_boxes(self, module: nn.Module, call: int, top: Peaks) -> np.ndarray:
        """k×C×4: the field of every channel's top peaks, -1 for an empty slot."""
        kept = top.sample >= 0
        field = self.traced.get((module, call))
        if field is not None:
            channels = np.broadcast_to(np.arange(top.sample.shape[1]), top.sample.shape)  # k×C: the peaks' maps
            given = field.boxes(np.where(kept, top.row, 0), np.where(kept, top.col, 0), channels)
            boxes = np.where(kept[..., None], given, -1)
            empty = kept & ((boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1]))
            if empty.any():  # a position in padding: it reads nothing
                rank, channel = (int(i[0]) for i in np.nonzero(empty))
                raise FieldUnknown(
                    f"the peak at row {top.row[rank, channel]}, column {top.col[rank, channel]} reads no input pixel"
                )
            return boxes
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
    their receptive fields; a layer they cannot be given for gets none, the reason in ``field_unknown``,
    and one warning."""
    done = []
    for section, (module, call) in zip(sections, keys):
        if section.kind != "maps" or isinstance(module, nn.MultiheadAttention):  # attention maps: query × key
            done.append(section)
            continue
        try:
            if fields is None:
                raise FieldUnknown("the model ran on no single sample")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the model's own warnings were shown when it ran for the report
                boxes = fields.peak_boxes(module, call, section.channels.top)
        except Exception as err:  # noqa: BLE001 - the user's model, probed our way: the page stands without them
            reason = first_line(err) if isinstance(err, FieldUnknown) else f"{type(err).__name__}: {first_line(err)}"
            warn(f"no receptive fields for {section.name!r} ({reason}); its top images are shown whole")
            done.append(dataclasses.replace(section, field_unknown=reason))
            continue
        top = dataclasses.replace(section.channels.top, box=boxes)
        done.append(dataclasses.replace(section, channels=dataclasses.replace(section.channels, top=top)))
    return tuple(done)


def gradient_boxes(
    model: nn.Module,
    module: nn.Module,
    call: int,
    shape: tuple[int, int, int],
    positions: Iterable[Position],
    sample: torch.Tensor | None = None,
) -> dict[Position, Box]:
    """Each (row, col) of ``module``'s ``call``-th output maps → its receptive field in the input of
    C×H×W ``shape`` from the gradient's support (see the module's docstring), clipped to the image;
    :class:`FieldUnknown` when a position's gradient reaches no pixel. ``model`` itself is not changed
    (copies are probed)."""
    return GradientProbe(model, shape, sample).boxes(module, call, positions)


def fixed_batch(model: nn.Module) -> int | None:
    """The one batch size a ``torch.export`` program takes (its input's first size where the export fixed
    it), None for any other model."""
    nodes = getattr(model, "input_placeholders", None)  # an unflattened program
    if nodes is None:
        graph = getattr(model, "graph", None)  # ExportedProgram.module()
        nodes = [n for n in graph.nodes if n.op == "placeholder"] if isinstance(graph, torch.fx.Graph) else []
    for node in nodes:
        value = getattr(node, "meta", {}).get("val")
        if isinstance(value, torch.Tensor) and value.ndim == 4:
            return value.shape[0] if isinstance(value.shape[0], int) else None
    return None


class GradientProbe:
    """The two copies of ``model`` whose gradients give fields (see the module's docstring) and their inputs."""

    def __init__(self, model: nn.Module, shape: tuple[int, int, int], sample: torch.Tensor | None = None) -> None:
        self.shape, self.batch = shape, fixed_batch(model)
        generator = torch.Generator().manual_seed(_SEED)
        with evaluating(model):
            own, self.own_copies = _copy(model)
        structural, twins = _copy(own)  # from the CPU copy: a model on a GPU is copied there once
        self.structural_copies = {key: twins[id(copied)] for key, copied in self.own_copies.items()}
        _make_structural(structural, generator)
        first = sample[0].detach().to("cpu", torch.float32) if sample is not None else None
        self.copies = [
            (structural, self.structural_copies, [torch.rand(shape, generator=generator) + 0.5]),
            (own, self.own_copies, [t for t in (first, torch.randn(shape, generator=generator)) if t is not None]),
        ]
        self.dtype = torch.float32

    def boxes(self, module: nn.Module, call: int, positions: Iterable[Position]) -> dict[Position, Box]:
        """As :func:`gradient_boxes`."""
        wanted = sorted(set(positions))
        if not wanted:
            return {}
        h, w, channels = self._size(module, call)
        layer = _Layer(module, call, torch.randn(channels, generator=torch.Generator().manual_seed(_SEED)))
        centre = (h // 2, w // 2)
        found = self.supports(layer, [centre], check=True)  # a miss of the structural copy shows everywhere
        shifted, known = None, found[centre]
        if len(wanted) > len(_probes(h, w)) and known is not None and _inside(known, self.shape):
            found.update(self.supports(layer, [p for p in _probes(h, w) if p not in found], check=False))
            shifted = _shifted(found, centre, self.shape, (h, w))
        inside = {p: shifted(p) for p in wanted if shifted is not None and _inside(shifted(p), self.shape)}
        border = [p for p in wanted if p not in inside and p not in found]  # a clipped field may not be the
        found.update(self.supports(layer, border, check=False))  # shifted one clipped
        return _known({**found, **inside}, wanted)

    def _size(self, module: nn.Module, call: int) -> tuple[int, int, int]:
        """The height, width and channels of the layer's maps."""
        own, copies, inputs = self.copies[1]
        with Truncated(own, copies[id(module)], call) as truncated, torch.no_grad():
            output = _maps(truncated, torch.stack([inputs[0]] * (self.batch or 1)).to(self.dtype))
        if output.ndim != 4:
            raise FieldUnknown(f"the layer's output is {output.ndim}-D, not maps")
        return output.shape[2], output.shape[3], output.shape[1]

    def supports(self, layer: _Layer, positions: Sequence[Position], check: bool) -> dict[Position, Box | None]:
        """Each position's field (None: no pixel) from the structural copy and, where ``check`` is set or an
        earlier check found a pixel the structural copy missed, the model's own weights too; an empty
        field is computed again in float64 before it counts as empty."""
        found = self._supports(layer, positions, check)
        empty = [p for p in positions if found[p] is None]
        if empty and self.dtype == torch.float32:
            self.dtype = torch.float64  # underflow: e.g. a sigmoid gate closed to exactly 0 in float32
            for model, _, _ in self.copies:
                model.to(torch.float64)
            found.update(self._supports(layer, empty, check))
        return found

    def _supports(self, layer: _Layer, positions: Sequence[Position], check: bool) -> dict[Position, Box | None]:
        found = self._copy_supports(self.copies[0], layer, positions)
        if check or layer.suspect:
            own = self._copy_supports(self.copies[1], layer, positions)
            layer.suspect = layer.suspect or any(_union(found[p], own[p]) != found[p] for p in positions)
            found = {p: _union(found[p], own[p]) for p in positions}
        return found

    def _copy_supports(
        self,
        copied: tuple[nn.Module, dict[int, nn.Module], list[torch.Tensor]],
        layer: _Layer,
        positions: Sequence[Position],
    ) -> dict[Position, Box | None]:
        """Each position's field over one copy and all its inputs, every (input, position) in its own slot."""
        model, copies, inputs = copied
        found: dict[Position, Box | None] = dict.fromkeys(positions)
        pairs = [(i, p) for p in positions for i in range(len(inputs))]
        size = self.batch or SLOTS
        with Truncated(model, copies[id(layer.module)], layer.call) as truncated:
            for start in range(0, len(pairs), size):
                chunk = pairs[start : start + size]
                slots = chunk + [chunk[-1]] * (size - len(chunk)) if self.batch else chunk
                x = torch.stack([inputs[i] for i, _ in slots]).to(self.dtype).requires_grad_(True)
                for (_, p), box in zip(chunk, _gradient(truncated, x, [p for _, p in slots], layer.weights)):
                    found[p] = _union(found[p], box)
        return found


@dataclasses.dataclass
class _Layer:
    """One layer being probed: its channels' random signed weights, and whether a check found a pixel that
    the structural copy missed (then every position takes the model's own weights too)."""

    module: nn.Module
    call: int
    weights: torch.Tensor
    suspect: bool = False


def _gradient(
    truncated: Truncated, x: torch.Tensor, positions: list[Position], weights: torch.Tensor
) -> list[Box | None]:
    """The box of each slot's gradient support, for the position given for that slot."""
    with torch.enable_grad(), OpenPaths():
        out = _maps(truncated, x)
        rows, cols = torch.tensor([r for r, _ in positions]), torch.tensor([c for _, c in positions])
        picked = out[torch.arange(len(positions)), :, rows, cols]
        if not picked.requires_grad:  # the layer does not depend on the input
            return [None] * len(positions)
        (picked * weights.to(picked.dtype)).sum().backward()
    reached = x.grad.ne(0).any(1)  # type: ignore[union-attr]  # n × H × W; NaN counts as reached
    rows_hit, cols_hit = reached.any(2), reached.any(1)
    y0, x0 = rows_hit.int().argmax(1), cols_hit.int().argmax(1)
    y1, x1 = rows_hit.shape[1] - rows_hit.flip(1).int().argmax(1), cols_hit.shape[1] - cols_hit.flip(1).int().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).tolist()
    return [tuple(b) if hit else None for b, hit in zip(boxes, rows_hit.any(1).tolist())]  # type: ignore[misc]


def _maps(truncated: Truncated, x: torch.Tensor) -> torch.Tensor:
    """The layer's output on ``x``, 4-D as the report shows it (:func:`.capture.maps_order`)."""
    out = truncated(x)
    return out.permute(maps_order(truncated.module)) if out.ndim == 4 else out


def _union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a or b
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _known(found: dict[Position, Box | None], wanted: Sequence[Position]) -> dict[Position, Box]:
    for p in wanted:
        if found[p] is None:
            raise FieldUnknown(f"the gradient at row {p[0]}, column {p[1]} reaches no input pixel")
    return {p: found[p] for p in wanted}  # type: ignore[misc]


def _copy(model: nn.Module) -> tuple[nn.Module, dict[int, nn.Module]]:
    """A float32 CPU copy of ``model`` without the user's hooks (they must not see made-up values) or
    gradients for its parameters, and a map from the original modules' ids to their copies."""
    memo: dict[int, object] = {}
    for module in model.modules():  # an exported program's nodes hold fake tensors that cannot be copied
        graph = getattr(module, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            memo.update((id(node.meta), node.meta) for node in graph.nodes)
    for node in getattr(model, "input_placeholders", None) or ():
        memo[id(node.meta)] = node.meta
    copied = copy.deepcopy(model, memo).to(device="cpu", dtype=torch.float32).requires_grad_(False)
    for module in copied.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            getattr(module, hooks).clear()
    return copied, {id(original): twin for original, twin in zip(model.modules(), copied.modules())}


def _make_structural(model: nn.Module, generator: torch.Generator) -> None:
    """Every floating parameter random and positive (a weight divided by its fan-in), BatchNorm's running
    statistics those of no normalisation."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                fan = parameter[0].numel() if parameter.ndim >= 2 else 1
                parameter.copy_((torch.rand(parameter.shape, generator=generator) + 0.5) / fan)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.running_var is not None:
                module.running_var.fill_(1.0)
                module.running_mean.zero_()  # type: ignore[union-attr]


def _probes(h: int, w: int) -> list[Position]:
    centre = (h // 2, w // 2)
    found = [centre, (min(h - 1, centre[0] + 1), centre[1]), (centre[0], min(w - 1, centre[1] + 1))]
    return list(dict.fromkeys(found + [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]))


def _inside(box: Box, shape: tuple[int, int, int]) -> bool:
    return box[0] > 0 and box[1] > 0 and box[2] < shape[2] and box[3] < shape[1]


def _shifted(
    found: dict[Position, Box | None], centre: Position, shape: tuple[int, int, int], size: tuple[int, int]
) -> Callable[[Position], Box] | None:
    """A function giving any position's box, unclipped, by shifting the centre's, when the probes agree."""
    if any(found.get(p) is None for p in _probes(*size)) or size[0] < 2 or size[1] < 2:
        return None
    x0, y0, x1, y1 = found[centre]  # type: ignore[misc]
    sy = found[(centre[0] + 1, centre[1])][1] - y0 if centre[0] + 1 < size[0] else 0  # type: ignore[index]
    sx = found[(centre[0], centre[1] + 1)][0] - x0 if centre[1] + 1 < size[1] else 0  # type: ignore[index]

    def box(position: Position) -> Box:
        dy, dx = (position[0] - centre[0]) * sy, (position[1] - centre[1]) * sx
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    clipped = {
        p: (max(0, b[0]), max(0, b[1]), min(shape[2], b[2]), min(shape[1], b[3]))
        for p in _probes(*size)
        for b in [box(p)]
    }
    return box if all(clipped[p] == found[p] for p in clipped) else None
