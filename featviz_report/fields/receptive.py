"""Receptive fields from the model itself: which input pixels an output position of a layer depends on.

:class:`ReceptiveFields` composes them exactly along one forward pass where every operation is understood
(:mod:`featviz_report.fields.trace`: milliseconds for a whole model) and otherwise takes the gradient's
support, below (seconds per layer of a large model).

By the gradient, the field of a position is the bounding box of every input pixel that the gradient of the
position's outputs reaches, over two CPU copies of the model, each run under
:class:`~featviz_report.fields.paths.OpenPaths` (values as computed, but no activation, max, pool,
normalisation statistic or data-dependent sampling can hide a path from the gradient):

- a *structural* copy, every parameter positive and random (a convolution or linear layer averages its
  inputs with random positive weights), BatchNorm's statistics neutral, on a random positive input: no
  value is zero and no channel is another's copy, so nothing cancels;
- the model's own weights on the first sample and on a random input.

The position's channels are summed with random signed weights (channels whose sum is a constant, after a
softmax over channels or a layer norm, no longer cancel). A position whose gradient reaches no pixel has no
field: the layer's fields are unknown (:class:`FieldUnknown`), never an empty box. Each copy runs forward
once per layer, all its inputs in one batch (a model exported for a fixed batch size: batches of exactly
that size), and backward once per probe: 3.5 to 6.5 times faster than one pass of a batch of 16 copies of
the input, a probe in each, through layers of maxvit_tiny on a 2-core CPU.

Computed per layer: the centre's field (on both copies: where the model's own weights reach a pixel the
structural copy misses, every probe of the layer takes both), then the others', each probed directly or,
when that takes more probes, from lines: one probe sums a whole row of the maps (each position with its
own random signed factor), another a whole column, and a position's box is the intersection of its row's
and its column's boxes. Each holds the position's support, so the intersection does too; it is the exact
box wherever a field's rows depend on the position's row alone and its columns on its column
(convolutions, pooling, their borders, channels-last maps), and larger, never smaller, elsewhere; an empty
intersection reads nothing, and the layer is unknown. Lines are probed at eight places along each axis
(ends, middle, quarters) and, when each side of their boxes is one straight function of the line clipped
to the image there (a translation-equivariant layer: a stride per line, or none), the other lines follow
by shifting; otherwise each is probed.

Every pass is held to a :class:`~featviz_report.fields.budget.Deadline` when one is given: a pass that
would end past it, taking as long as the last one, is not started (:class:`OverBudget`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..capture.hooks import maps_order
from ..capture.truncated import Truncated
from ..errors import first_few, first_line
from ..report_data import LayerSection, Peaks
from ..runtime.device import evaluating
from ..runtime.progress import Progress
from ..runtime.threads import ThreadPolicy
from .budget import OVER_BUDGET, Deadline, OverBudget
from .paths import OpenPaths
from .trace import Blind, LayerFields, TracedField, trace_fields

__all__ = [
    "ReceptiveFields", "receptive_fields", "with_fields", "gradient_boxes", "GradientProbe", "fixed_batch", "Box",
    "FieldUnknown",
]  # fmt: skip

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in input pixels, x1/y1 exclusive
Position = tuple[int, int]  # row, col in a layer's maps
Target = tuple[int | None, int | None]  # a position, a whole row (row, None) or a whole column (None, col)
_SEED = 0


class FieldUnknown(Exception):
    """A layer whose receptive fields cannot be given; the message says why."""


class ReceptiveFields:
    """The receptive fields of ``model``'s layers for C×H×W inputs of ``shape``: those ``traced`` along a
    forward pass (:mod:`featviz_report.fields.trace`), else from the gradient, on ``sample`` (1×C×H×W) among others."""

    def __init__(
        self,
        model: nn.Module,
        shape: tuple[int, int, int],
        traced: LayerFields,
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

    def boxes(
        self, module: nn.Module, call: int, positions: Iterable[Position], deadline: Deadline | None = None
    ) -> dict[Position, Box]:
        """Each (row, col) of ``module``'s ``call``-th output maps → its field in input pixels; from the
        gradient only while ``deadline`` allows (:class:`OverBudget` after)."""
        field = self._traced(module, call)
        if field is None:
            if self._probe is None:  # one pair of copies for every layer the tracer left
                if deadline is not None:
                    deadline.allow(0.0)
                self._probe = GradientProbe(self.model, self.shape, self.sample)
            return self._probe.boxes(module, call, positions, deadline)
        return {p: field.box(*p) for p in set(positions)}

    def traces(self, module: nn.Module, call: int) -> bool:
        """Whether the layer's fields were traced (milliseconds) rather than left to the gradient (seconds)."""
        return self.traced.get((module, call)) is not None

    def _traced(self, module: nn.Module, call: int) -> TracedField | None:
        """The layer's traced field, None where the gradient is to give it; :class:`FieldUnknown` where neither can
        (values of the input reach it where autograd does not see and the tracer could not follow them)."""
        field = self.traced.get((module, call))
        if isinstance(field, Blind):
            raise FieldUnknown(field.reason)
        return field

    def peak_boxes(self, module: nn.Module, call: int, top: Peaks, deadline: Deadline | None = None) -> np.ndarray:
        """k×C×4: the field of every channel's top peaks, -1 for an empty slot."""
        kept = top.sample >= 0
        field = self._traced(module, call)
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
        found = self.boxes(module, call, {(int(r), int(c)) for r, c in zip(top.row[kept], top.col[kept])}, deadline)
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
    progress: Progress,
    seconds: float,
) -> tuple[LayerSection, ...]:
    """``sections`` (each made for the (module, call) in ``keys``) with every map layer's top peaks given
    their receptive fields; a layer they cannot be given for gets none, the reason in ``field_unknown``,
    and one warning. Fields from the gradient take at most ``seconds`` (:mod:`featviz_report.fields.budget`): the layers
    left after are :data:`~featviz_report.fields.budget.OVER_BUDGET`, all in one warning; ``progress``
    counts those layers as they are done."""
    mapped = [i for i, (s, (m, _)) in enumerate(zip(sections, keys)) if _has_fields(s, m)]
    slow = [i for i in mapped if fields is not None and not fields.traces(*keys[i])]
    deadline, over = Deadline(seconds), []
    done = list(sections)
    for index in sorted(set(mapped) - set(slow)):  # traced: milliseconds each
        done[index] = _with_boxes(sections[index], keys[index], fields, deadline, progress.warn)
    with ThreadPolicy() as threads:  # torch's threads held to the cores free now (see .threads)
        for count, index in enumerate(slow, 1):
            threads.refresh()
            try:
                done[index] = _with_boxes(sections[index], keys[index], fields, deadline, progress.warn)
            except OverBudget:
                over.append(sections[index].name)
                done[index] = dataclasses.replace(sections[index], field_unknown=OVER_BUDGET)
            progress.rate("fields", count, len(slow), max(deadline.spent(), 1e-9))
    if over:
        progress.warn(
            f"receptive fields not computed for {len(over)} of the {len(slow)} layers whose fields come from the "
            f"gradient, over their time budget of {seconds:.1f} s ({first_few(over)}): their top images are shown whole"
        )
    return tuple(done)


def _with_boxes(
    section: LayerSection,
    key: tuple[nn.Module, int],
    fields: ReceptiveFields | None,
    deadline: Deadline,
    warn: Callable[[str], None],
) -> LayerSection:
    """``section`` with its peaks' boxes, or with the reason it has none (and a warning saying it)."""
    try:
        if fields is None:
            raise FieldUnknown("the model ran on no single sample")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the model's own warnings were shown when it ran for the report
            boxes = fields.peak_boxes(*key, section.channels.top, deadline)
    except OverBudget:
        raise
    except Exception as err:  # noqa: BLE001 - the user's model, probed our way: the page stands without them
        reason = first_line(err) if isinstance(err, FieldUnknown) else f"{type(err).__name__}: {first_line(err)}"
        warn(f"no receptive fields for {section.name!r} ({reason}); its top images are shown whole")
        return dataclasses.replace(section, field_unknown=reason)
    top = dataclasses.replace(section.channels.top, box=boxes)
    return dataclasses.replace(section, channels=dataclasses.replace(section.channels, top=top))


def _has_fields(section: LayerSection, module: nn.Module) -> bool:
    """Whether a section's peaks get fields: maps, but not attention maps (query × key)."""
    return section.kind == "maps" and not isinstance(module, nn.MultiheadAttention)


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
        self.pass_seconds = 0.0  # what the last backward pass took: the next one's estimate

    def boxes(
        self, module: nn.Module, call: int, positions: Iterable[Position], deadline: Deadline | None = None
    ) -> dict[Position, Box]:
        """As :func:`gradient_boxes`; each pass only while ``deadline`` allows it (:class:`OverBudget`)."""
        wanted = sorted(set(positions))
        if not wanted:
            return {}
        if deadline is not None:  # a forward pass to come, and a backward at least after it
            deadline.allow(self.pass_seconds)
        h, w, channels = self._size(module, call)
        weights = torch.randn(channels, generator=torch.Generator().manual_seed(_SEED))
        layer = _Layer(module, call, weights, deadline)
        centre = (h // 2, w // 2)
        found = self.supports(layer, [centre], check=True)  # a miss of the structural copy shows everywhere
        found.update(self._others(layer, [p for p in wanted if p != centre], (h, w)))
        return _known(found, wanted)

    def _others(self, layer: _Layer, positions: list[Position], size: tuple[int, int]) -> dict[Target, Box | None]:
        """The positions' fields, each probed or, when that takes more probes, as the intersection of the
        boxes of the row and the column through each (:meth:`_lines`)."""
        rows, cols = sorted({r for r, _ in positions}), sorted({c for _, c in positions})
        if len(positions) <= len(_line_probes(rows, size[0])) + len(_line_probes(cols, size[1])):
            return self.supports(layer, positions, check=False)
        by_row, by_col = self._lines(layer, 0, rows, size[0]), self._lines(layer, 1, cols, size[1])
        return {(r, c): _intersection(by_row[r], by_col[c]) for r, c in positions}

    def _lines(self, layer: _Layer, axis: int, indices: list[int], length: int) -> dict[int, Box | None]:
        """The boxes of the rows (``axis`` 0) or columns (1) at ``indices`` of maps ``length`` long along
        ``axis``: computed at a few probes and, where those are a clipped shift of each other, the others
        by shifting; otherwise each computed."""
        probes = _line_probes(indices, length)
        found = self._line_supports(layer, axis, probes)
        step = _stepped(found, self.shape) if probes != indices else None
        if step is None:
            found.update(self._line_supports(layer, axis, [i for i in indices if i not in found]))
            return {i: found[i] for i in indices}
        return {i: found[i] if i in found else step(i) for i in indices}

    def _line_supports(self, layer: _Layer, axis: int, indices: list[int]) -> dict[int, Box | None]:
        targets: list[Target] = [(i, None) if axis == 0 else (None, i) for i in indices]
        found = self.supports(layer, targets, check=False)
        return {i: found[t] for i, t in zip(indices, targets)}

    def _size(self, module: nn.Module, call: int) -> tuple[int, int, int]:
        """The height, width and channels of the layer's maps."""
        own, copies, inputs = self.copies[1]
        with Truncated(own, copies[id(module)], call) as truncated, torch.no_grad():
            output = _maps(truncated, torch.stack([inputs[0]] * (self.batch or 1)).to(self.dtype))
        if output.ndim != 4:
            raise FieldUnknown(f"the layer's output is {output.ndim}-D, not maps")
        return output.shape[2], output.shape[3], output.shape[1]

    def supports(self, layer: _Layer, targets: Sequence[Target], check: bool) -> dict[Target, Box | None]:
        """Each target's field (None: no pixel) from the structural copy and, where ``check`` is set or an
        earlier check found a pixel the structural copy missed, the model's own weights too; an empty
        field is computed again in float64 before it counts as empty."""
        found = self._supports(layer, targets, check)
        empty = [t for t in targets if found[t] is None]
        if empty and self.dtype == torch.float32:
            self.dtype = torch.float64  # underflow: e.g. a sigmoid gate closed to exactly 0 in float32
            for model, _, _ in self.copies:
                model.to(torch.float64)
            found.update(self._supports(layer, empty, check))
        return found

    def _supports(self, layer: _Layer, targets: Sequence[Target], check: bool) -> dict[Target, Box | None]:
        found = self._copy_supports(self.copies[0], layer, targets)
        if check or layer.suspect:
            own = self._copy_supports(self.copies[1], layer, targets)
            layer.suspect = layer.suspect or any(_union(found[t], own[t]) != found[t] for t in targets)
            found = {t: _union(found[t], own[t]) for t in targets}
        return found

    def _copy_supports(
        self,
        copied: tuple[nn.Module, dict[int, nn.Module], list[torch.Tensor]],
        layer: _Layer,
        targets: Sequence[Target],
    ) -> dict[Target, Box | None]:
        """Each target's field over one copy and all its inputs: one forward pass of the inputs (in batches of
        the model's fixed size, if it has one), then one backward pass per target."""
        model, copies, inputs = copied
        found: dict[Target, Box | None] = dict.fromkeys(targets)
        size = self.batch or len(inputs)
        with Truncated(model, copies[id(layer.module)], layer.call) as truncated:
            for start in range(0, len(inputs), size):
                group = inputs[start : start + size]
                self._allow(layer)
                x = torch.stack(group + [group[-1]] * (size - len(group))).to(self.dtype).requires_grad_(True)
                with torch.enable_grad(), OpenPaths():
                    out = _maps(truncated, x)
                if not out.requires_grad:  # the layer does not depend on the input
                    continue
                generator = torch.Generator().manual_seed(_SEED)
                for target in targets:
                    self._allow(layer)
                    began = time.monotonic()
                    seed = _seed(out, target, layer.weights, generator)
                    (grad,) = torch.autograd.grad(out, x, seed, retain_graph=True)
                    for box in _support_boxes(grad[: len(group)]):
                        found[target] = _union(found[target], box)
                    self.pass_seconds = time.monotonic() - began
        return found

    def _allow(self, layer: _Layer) -> None:
        """Go on only if a pass as long as the last one fits in the layer's deadline."""
        if layer.deadline is not None:
            layer.deadline.allow(self.pass_seconds)


@dataclasses.dataclass
class _Layer:
    """One layer being probed: its channels' random signed weights, the deadline its passes are held to, and
    whether a check found a pixel that the structural copy missed (then every position takes the model's own
    weights too)."""

    module: nn.Module
    call: int
    weights: torch.Tensor
    deadline: Deadline | None = None
    suspect: bool = False


def _seed(out: torch.Tensor, target: Target, weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The gradient to send back from maps ``out`` (n×C×h×w) for ``target``: the channels' ``weights`` at a
    position, or along a line each position with its own random signed factor; the same for every input."""
    row, col = target
    line = slice(None) if row is None else row, slice(None) if col is None else col
    picked = torch.zeros(out.shape[2:], dtype=out.dtype)
    picked[line] = torch.randn(picked[line].shape, generator=generator, dtype=out.dtype)
    return (weights.to(out.dtype)[:, None, None] * picked).expand_as(out)


def _support_boxes(grad: torch.Tensor) -> list[Box | None]:
    """The bounding box of each input's gradient support (None: no pixel), from ``grad`` (n×C×H×W)."""
    reached = grad.ne(0).any(1)  # n × H × W; NaN counts as reached
    rows_hit, cols_hit = reached.any(2), reached.any(1)
    y0, x0 = rows_hit.int().argmax(1), cols_hit.int().argmax(1)
    y1, x1 = rows_hit.shape[1] - rows_hit.flip(1).int().argmax(1), cols_hit.shape[1] - cols_hit.flip(1).int().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).tolist()
    return [tuple(b) if hit else None for b, hit in zip(boxes, rows_hit.any(1).tolist())]  # type: ignore[misc]


def _maps(truncated: Truncated, x: torch.Tensor) -> torch.Tensor:
    """The layer's output on ``x``, 4-D as the report shows it (:func:`.capture.maps_order`)."""
    out = truncated(x)
    return out.permute(maps_order(truncated.module)) if out.ndim == 4 else out


def _intersection(a: Box | None, b: Box | None) -> Box | None:
    """The box two boxes share, None when either is None or they do not overlap."""
    if a is None or b is None:
        return None
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a or b
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _known(found: dict[Target, Box | None], wanted: Sequence[Position]) -> dict[Position, Box]:
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


def _line_probes(indices: list[int], length: int) -> list[int]:
    """The lines probed along an axis ``length`` long for the lines at ``indices``: those when they are
    few, else eight spread over the axis (both ends, the middle, the quarters)."""
    middle, last = length // 2, length - 1
    spread = sorted(
        {i for i in (0, 1, length // 4, middle, middle + 1, 3 * length // 4, last - 1, last) if 0 <= i <= last}
    )
    return indices if len(indices) <= len(spread) else spread


def _stepped(found: dict[int, Box | None], shape: tuple[int, int, int]) -> Callable[[int], Box] | None:
    """A function giving any line's box from the probed lines' boxes ``found`` (by index), when each of
    their four sides is one straight function of the index clipped to the image (a translation-equivariant
    layer: a stride per line, or none); None when a probe reads nothing or does not fit."""
    if any(box is None for box in found.values()):
        return None
    indices = sorted(found)
    limits = (shape[2], shape[1], shape[2], shape[1])
    sides = []
    for side, limit in enumerate(limits):
        values = {i: found[i][side] for i in indices}  # type: ignore[index]
        free = [i for i in indices if 0 < values[i] < limit]  # not clipped: where the step shows
        pairs = [(i, i + 1) for i in free if i + 1 in values and 0 < values[i + 1] < limit]
        step = values[pairs[0][1]] - values[pairs[0][0]] if pairs else 0
        anchor = free[len(free) // 2] if free else indices[len(indices) // 2]
        sides.append((anchor, values[anchor], step, limit))

    def box(index: int) -> Box:
        x0, y0, x1, y1 = (min(max(value + step * (index - anchor), 0), limit) for anchor, value, step, limit in sides)
        return (x0, y0, x1, y1)

    return box if all(box(i) == found[i] for i in indices) else None
