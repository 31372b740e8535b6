"""One operation as the field rules see it, and the tables that give each operation its rule.

:mod:`featviz_report.fields.trace` hands each operation on a followed tensor over as a :class:`Call`: the
function, the name the rules know it by, its arguments (read by position or name with :meth:`Call.arg`), each
tensor it reads as an :class:`Operand` (its field as the tracer knows it) and its first output. A rule
(:data:`Rule`) returns that output's field, or None where it does not understand the arguments. A
:class:`Rules` table maps operation names to rules, one rule a name, filled by its :meth:`Rules.rule`
decorator; :mod:`featviz_report.fields.rules` holds the tables and their rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .kinds import Field, Known, Tokens

__all__ = ["Args", "Kwargs", "arg", "Operand", "fields_of", "Call", "Rule", "Rules"]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]

ALIASES = {  # torch takes numpy's names too
    "dim": ("dim", "axis"), "keepdim": ("keepdim", "keepdims"), "dim0": ("dim0", "axis0"), "dim1": ("dim1", "axis1"),
}  # fmt: skip


def arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    """An argument given by keyword (``name`` or numpy's alias of it), else at position ``index``, else ``default``."""
    for key in ALIASES.get(name, (name,)):
        if key in kwargs:
            return kwargs[key]
    return args[index] if len(args) > index else default


class Operand(NamedTuple):
    """A tensor an operation reads, as the tracer knew it when the operation ran."""

    tensor: torch.Tensor
    followed: bool  # its values depend on the input
    field: Known | None  # None: not followed, or followed where no rule understood it (unknown)
    opaque: bool  # a map neither followed nor a constant, made where the tracer did not see: not vouched for


def fields_of(operands: Iterable[Operand]) -> list[Known] | None:
    """The followed operands' fields; None when one is unknown or an operand is opaque: nothing can be vouched
    for then."""
    fields = []
    for operand in operands:
        if (operand.followed and operand.field is None) or operand.opaque:
            return None
        if operand.field is not None:
            fields.append(operand.field)
    return fields


@dataclass(frozen=True)
class Call:
    """``func(*args, **kwargs)``, known to the rules as ``name`` (:func:`.rules.op_name`, with
    :data:`.rules.SAME_AS`), reading ``operands`` (the tensors among its arguments whose values it reads, in
    order; at least one followed) and making ``out`` (its first output)."""

    func: Any
    name: str
    args: Args
    kwargs: Kwargs
    operands: tuple[Operand, ...]
    out: torch.Tensor

    @property
    def first(self) -> Operand:
        return self.operands[0]

    @property
    def maps(self) -> Field | None:
        """The first operand's field when it is maps'."""
        field = self.operands[0].field
        return field if isinstance(field, Field) else None

    @property
    def tokens(self) -> Tokens | None:
        """The first operand's field when it is tokens."""
        field = self.operands[0].field
        return field if isinstance(field, Tokens) else None

    @property
    def alone(self) -> bool:
        """Whether the first operand is the only one followed (weights, a bias, a mask from the model alone)."""
        return not any(operand.followed for operand in self.operands[1:])

    def arg(self, index: int, name: str, default: Any) -> Any:
        """The argument ``name`` (see :func:`arg`)."""
        return arg(self.args, self.kwargs, index, name, default)

    def operand(self, tensor: torch.Tensor) -> Operand:
        """The operand that is ``tensor``."""
        return next(operand for operand in self.operands if operand.tensor is tensor)

    def fields(self) -> list[Known] | None:
        """The followed operands' fields (see :func:`fields_of`)."""
        return fields_of(self.operands)


Rule = Callable[[Call], Known | None]


class Rules:
    """Which rule gives an operation's output its field, by the operation's name, for operands whose fields are
    of one kind (``reads``: maps, a box, tokens)."""

    def __init__(self, reads: str) -> None:
        self.reads = reads
        self.by_name: dict[str, Rule] = {}

    def rule(self, *names: str) -> Callable[[Rule], Rule]:
        """A decorator registering its rule for the operations ``names``; a name has one rule at most, so a rule
        that shares its names with another refuses to register: one of them decides between the two."""

        def register(rule: Rule) -> Rule:
            for name in names:
                held = self.by_name.setdefault(name, rule)
                if held is not rule:
                    raise ValueError(f"{name!r} already has a rule on {self.reads}: {held.__name__}")
            return rule

        return register

    def apply(self, call: Call) -> Known | None:
        """The field ``call``'s rule gives its output; None where it has no rule or the rule gives none."""
        rule = self.by_name.get(call.name)
        return None if rule is None else rule(call)
