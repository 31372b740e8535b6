"""The circuits stage the pipelines call: one probing pass over the first few samples (:mod:`.trace`), then
each captured Conv2d and Linear call's strongest inputs (:mod:`.strength`), within a time budget.

Attribution averages over the first :data:`SAMPLES` samples (a scan's first readable images): a whole extra
pass over every sample would cost about a third of a report (resnet18, 8 samples, a 2-core CPU), and the
gates it measures (which ReLUs are on, which maximum a pool takes) settle over few samples. Expanded
weights need no sample at all.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain

import numpy as np
import torch
from torch import nn

from ..capture.layer_record import LayerRecord
from ..capture.samples import SampleSet
from ..capture.weights import Computed, weight_of
from ..errors import first_line
from ..fields.budget import Deadline, OverBudget
from .routes import Route
from .rules import Key
from .stash import Stash
from .strength import ATTRIBUTION, EXPANDED, Inputs, attributed_gains, route_gains, strongest_inputs
from .trace import Target, Traced, is_target, trace_circuits

__all__ = [
    "SAMPLES",
    "NO_SOURCE",
    "OVER_BUDGET",
    "circuit_inputs",
    "probe",
    "measure",
    "circuit_seconds",
    "shown_channels",
    "first_samples",
    "IN_PLACE_SAVED",
]

SAMPLES = 2
FLOOR_SECONDS = 2.0
SHARE = 0.1
NO_SOURCE = (
    "no captured layer's output reaches its input along a path the gradient follows (it reads the model's input, "
    "or what it reads was detached or came out of a module that returns no tensor, such as attention's tuple)"
)
OVER_BUDGET = "inputs not computed: over the time budget"


def circuit_seconds(elapsed: float) -> float:
    """How long the gradient's attribution may take after a report's first ``elapsed`` seconds: a tenth of
    them, at least 2 s (the share receptive fields from the gradient get too)."""
    return max(FLOOR_SECONDS, SHARE * elapsed)


def shown_channels(records: Mapping[Key, LayerRecord], limit: int | None) -> dict[Key, tuple[int, ...]]:
    """Per layer call, the output channels the page shows: a map's tiles, a vector's first ``limit``
    features (all without one); a sequence has none."""
    shown = {}
    for key, record in records.items():
        if record.kind == "maps":
            shown[key] = record.channel_ids
        elif record.kind == "vector":
            shown[key] = tuple(range(min(limit or record.shape[0], record.shape[0])))
    return shown


def first_samples(sample_set: SampleSet, batch_size: int) -> Iterator[torch.Tensor]:
    """What the probing pass runs on: the first :data:`SAMPLES` samples, else (a model exported for whole
    batches) the first batch. Decoded from a copy of the sample set, whose list of skipped files is the
    report's and must not change."""
    samples = copy.copy(sample_set)
    for size in dict.fromkeys((SAMPLES, batch_size)):
        batch = next(samples.batches(size), None)
        if batch is not None:
            yield batch.inputs


def probe(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    candidates: Iterable[torch.Tensor],
    stash: Stash | None = None,
) -> Traced | str:
    """The probing pass (:mod:`.trace`): replaying the ``stash`` of the report's capture pass where there is one,
    else on the first of ``candidates`` (batches on the model's device, in its dtype) the model takes; or why
    it failed. The only step that runs (and hooks) the model."""
    reason = "no sample could be used"
    tries = [(stash.inputs.clone(), stash)] if stash is not None and stash.inputs is not None else []
    for inputs, replay in chain(tries, ((batch, None) for batch in candidates)):
        try:
            return trace_circuits(model, layers, inputs, replay)
        except Exception as err:  # noqa: BLE001 - the user's model, run with probes: name what failed, go on
            reason = f"the probing pass failed ({type(err).__name__}: {first_line(err)})"
    return reason


def measure(
    traced: Traced | str,
    layers: Sequence[tuple[str, nn.Module]],
    shown: Mapping[Key, Sequence[int]],
    top: int,
    seconds: float,
    computed: Computed,
) -> tuple[dict[Key, Inputs | str], int]:
    """For each captured Conv2d and Linear call in ``shown`` (its shown output channels), the ``top``
    strongest inputs of each shown channel, or why it has none; and the samples the attribution averaged
    over. Other layers (pools, norms, attention, containers) are left out. Reads the model's weights (those
    layers make in forward from ``computed``, :mod:`featviz_report.capture.weights`), but does not run it: it
    can run beside another pass over the model."""
    modules = dict(layers)
    targets = {key for key in shown if is_target(modules[key[0]])}
    if isinstance(traced, str):
        return {key: traced for key in targets}, 0
    deadline = Deadline(seconds)
    found: dict[Key, Inputs | str] = {}
    measured: dict[tuple[int, int], dict[Key, Route]] = {}  # by what a target read (and along which axis)
    for target in traced.targets:
        if target.key not in targets:
            continue
        if not target.routes:
            found[target.key] = NO_SOURCE
            continue
        weight = weight_of(target.module, target.key[0], computed)
        why = weight if isinstance(weight, str) else _unread(target, weight)
        if why is not None:
            found[target.key] = why
            continue
        assert isinstance(weight, torch.Tensor)
        gains, method = route_gains(target), EXPANDED
        if gains is None and target.changed:
            found[target.key] = "what it read was changed in place after it read it: its gradient is not the layer's"
            continue
        if gains is None:
            method = ATTRIBUTION
            try:
                read = (id(target.inputs), target.axis)
                gains = measured.get(read) or attributed_gains(target, traced.probes, deadline)
                measured[read] = gains
            except OverBudget:
                found[target.key] = OVER_BUDGET
                continue
            except RuntimeError as err:  # an operation without a gradient (or a batched one) on the path
                found[target.key] = _no_gradient(err)
                continue
        found[target.key] = _not_finite(weight, gains) or _strongest(target, weight, gains, shown, top, method)
    for key in targets - found.keys():
        found[key] = "its call was not seen in the probing pass (called inside another captured layer)"
    return found, traced.samples


def _unread(target: Target, weight: torch.Tensor) -> str | None:
    """Why ``weight`` is not what the layer applied to what it was called with, where it is not: a forward
    that reads part of its input (a partial convolution) or reshapes it first."""
    groups = target.module.groups if isinstance(target.module, nn.Conv2d) else 1
    width, expected = target.inputs.shape[target.axis], weight.shape[1] * groups
    if width == expected:
        return None
    called = "×".join(str(n) for n in target.inputs.shape[1:])
    return (
        f"its forward does not apply its weight ({expected} input channels) to what it is called with ({called}, "
        f"{width} along the channels read): it reads part of it, or reshapes it first"
    )


def _strongest(
    target: Target,
    weight: torch.Tensor,
    gains: dict[Key, Route],
    shown: Mapping[Key, Sequence[int]],
    top: int,
    method: str,
) -> Inputs | str:
    """:func:`~.strength.strongest_inputs`, or why they could not be found: a layer no rule foresaw is named as
    unknown, not a failed report."""
    try:
        channels, size = target.inputs.shape[target.axis], tuple(target.inputs.shape[2:])
        return strongest_inputs(target.module, weight, gains, shown[target.key], top, method, channels, size)
    except (RuntimeError, ValueError, IndexError) as err:
        return f"its inputs could not be read off its weight ({type(err).__name__}: {first_line(err)})"


IN_PLACE_SAVED = (
    "the gradient could not be taken: a tensor on its path was changed in place after autograd kept it "
    "(such as x.mul_(x) or relu_ on a value needed later)"
)


def _no_gradient(err: RuntimeError) -> str:
    """Why the attribution failed, in a reader's words where autograd's are known to be obscure."""
    if "modified by an inplace operation" in str(err):
        return IN_PLACE_SAVED
    return f"the gradient could not be taken ({first_line(err)})"


def _not_finite(weight: torch.Tensor, gains: Mapping[Key, Route]) -> str | None:
    """Why no strength can be given where the weights or the measured routes hold a NaN or an infinity (a
    diverged model): the order of the strongest inputs would rest on the values left, or on 0 put in their place."""
    bad = int((~torch.isfinite(weight)).sum())
    if bad:
        return f"{bad:,} non-finite weights (NaN/Inf): no input's strength is known"
    if any(route.gain is not None and not np.isfinite(route.gain).all() for route in gains.values()):
        return "a NaN or an infinity on the path to it (activations, a norm's statistics): no input's strength is known"
    return None


def circuit_inputs(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    shown: Mapping[Key, Sequence[int]],
    candidates: Iterable[torch.Tensor],
    top: int,
    seconds: float,
) -> tuple[dict[Key, Inputs | str], int]:
    """:func:`probe` on ``candidates``, then :func:`measure`, every layer read by its parameter as stored (a
    report reads the weights layers make in forward from its capture pass)."""
    return measure(probe(model, layers, candidates), layers, shown, top, seconds, {})
