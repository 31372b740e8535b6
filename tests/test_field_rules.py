"""The field tracer's rule tables (fields/rules.py, fields/calls.py): a rule registered for an operation is the
one the tracer applies to it, a name takes one rule a table, the operands' kinds of field pick the table
(tokens, then a box, then maps), and every name a rule is registered for is one the tracer can meet."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featviz_report.fields.calls import Call, Operand, Rules
from featviz_report.fields.kinds import Axis, Field, Known, Tokens, Whole
from featviz_report.fields.rules import MAPS, SAME_AS, TOKENS, WHOLE, field_of, op_name
from featviz_report.fields.trace import TracedField, trace_fields


class Flip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, [-1])


def _mirrored(call: Call) -> Known | None:
    """A rule the tracer does not have: ``torch.flip`` along the columns, each reading its mirror image's."""
    field = call.maps
    if field is None or list(call.arg(1, "dims", ())) != [-1]:
        return None
    return Field(field.rows, Axis(field.cols.dim, field.cols.lo[::-1], field.cols.hi[::-1]))


def test_a_rule_registered_for_a_new_operation_is_the_one_the_tracer_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, (1, 3)), Flip()).eval()
    inputs = torch.zeros(1, 1, 4, 8)
    assert trace_fields(model, inputs)[(model[1], 0)] is None  # not known yet

    monkeypatch.setattr(MAPS, "by_name", dict(MAPS.by_name))
    MAPS.rule("flip")(_mirrored)
    field = trace_fields(model, inputs)[(model[1], 0)]
    assert isinstance(field, TracedField)
    assert field.box(0, 0) == (5, 0, 8, 1)  # the first column is the convolution's last: input columns 5-7
    assert field.box(3, 5) == (0, 3, 3, 4)


def test_a_name_takes_one_rule_a_table() -> None:
    table = Rules("maps")
    table.rule("flip")(_mirrored)
    table.rule("flip", "fliplr")(_mirrored)  # the same rule again: nothing to choose between
    with pytest.raises(ValueError, match="'flip' already has a rule on maps: _mirrored"):
        table.rule("flip")(lambda call: None)
    assert table.by_name == {"flip": _mirrored, "fliplr": _mirrored}


_AXIS = Axis(-1, np.arange(2), np.arange(2))
_KINDS = {"maps": Field(Axis(-2, np.arange(2), np.arange(2)), _AXIS), "box": Whole((0, 1), (0, 1))}
_KINDS["tokens"] = Tokens(-1, _AXIS, _AXIS)


@pytest.mark.parametrize(
    ("kinds", "table"),
    [
        (("maps",), "maps"),
        (("maps", "box"), "a box"),
        (("box", "maps"), "a box"),
        (("maps", "tokens"), "tokens"),
        (("box", "tokens", "maps"), "tokens"),
    ],
)
def test_the_operands_kinds_of_field_pick_the_table(
    monkeypatch: pytest.MonkeyPatch, kinds: tuple[str, ...], table: str
) -> None:
    tags = {MAPS: 1, WHOLE: 2, TOKENS: 3}
    for rules, tag in tags.items():  # each answers "probe" with a box that says which table it is
        monkeypatch.setattr(rules, "by_name", {"probe": lambda call, tag=tag: Whole((tag, tag), (tag, tag))})
    operands = [Operand(torch.zeros(2, 2), True, _KINDS[kind], False) for kind in kinds]
    answer = field_of(None, "probe", (), {}, operands, torch.zeros(2, 2))
    tag = next(tag for rules, tag in tags.items() if rules.reads == table)
    assert answer == Whole((tag, tag), (tag, tag))


@functools.cache
def _torch_names() -> frozenset[str]:
    """What the tracer calls each function of torch, torch.Tensor and torch.nn.functional (dunders included)."""
    names = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated attributes
        for namespace in (torch, torch.Tensor, F):
            for attribute in dir(namespace):
                func = getattr(namespace, attribute, None)
                if callable(func):
                    name = op_name(func)
                    names.add(SAME_AS.get(name, name))
    return frozenset(names)


@pytest.mark.parametrize("rules", [MAPS, WHOLE, TOKENS], ids=lambda rules: rules.reads)
def test_every_name_a_rule_is_registered_for_is_one_the_tracer_meets(rules: Rules) -> None:
    assert sorted(set(rules.by_name) - _torch_names()) == []


def test_a_log_sigmoid_is_pointwise() -> None:  # F.logsigmoid is torch's log_sigmoid
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.LogSigmoid()).eval()
    found = trace_fields(model, torch.zeros(1, 1, 5, 5))
    field = found[(model[1], 0)]
    assert isinstance(field, TracedField) and field.box(2, 1) == (1, 2, 4, 5)


class ChannelsLastGate(nn.Module):
    """A gate computed from the whole image (a box) multiplied into channels-last maps (axes -3, -2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.conv(x).permute(0, 2, 3, 1)
        gate = torch.sigmoid(self.fc(maps.mean((1, 2))))[:, None, None, :]
        return self.out(maps * gate)


def test_a_gate_on_channels_last_maps_keeps_the_maps_field() -> None:
    model = ChannelsLastGate().eval()
    found = trace_fields(model, torch.rand(1, 3, 8, 8))
    gated = found[(model.out, 0)]
    assert isinstance(gated, TracedField)  # the gate reads the whole image: every position's box is the image
    assert gated.rows.lo.min() == 0 and gated.rows.hi.max() == 7 and gated.cols.hi.max() == 7
