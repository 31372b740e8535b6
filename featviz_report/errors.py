"""Errors a user can cause and fix: each carries a one-line message for the command line (and the way
those messages name a long list)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "FeatvizError",
    "UsageError",
    "InputError",
    "SampleError",
    "ModelError",
    "OutputError",
    "first_few",
    "first_line",
]


def first_few(items: Sequence[str], shown: int = 3, sep: str = ", ") -> str:
    """``a, b, c (+4 more)``: how messages and notes name a long list."""
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


class FeatvizError(Exception):
    """Base of every user-facing failure. ``str(err)`` is the one-line message; CLI exit code 2."""

    exit_code = 2


class UsageError(FeatvizError):
    """An option or combination of options that cannot work."""


class InputError(FeatvizError):
    """A sample file, folder, label file or tensor that cannot be used."""


class SampleError(InputError):
    """One sample file that cannot be used; skipped with a warning unless ``--strict``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"sample {name!r}: {reason}")
        self.name = name
        self.reason = reason


class ModelError(FeatvizError):
    """A model spec, weights file or model behaviour that prevents a report."""


class OutputError(FeatvizError):
    """The report cannot be written where the user asked."""


def first_line(err: BaseException) -> str:
    """An exception's message in one line (its first), or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
