"""Warnings from torch, numpy or the user's model as one plain line each on stderr.

Python prints a warning with its source line, and some libraries colour theirs; on a command line
that is noise around the one line that matters. Inside :func:`one_line_warnings`, each warning is
``PROG: warning: Category: first line of the message``, ANSI codes removed.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["one_line_warnings", "one_line"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def one_line(text: str) -> str:
    """The first non-empty line of ``text`` without terminal escape codes."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[0] if lines else ""


@contextmanager
def one_line_warnings(prog: str) -> Iterator[None]:
    """Within the block, warnings print as one line each (the usual filters still decide which)."""
    original = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        stream = file or sys.stderr
        try:
            stream.write(f"{prog}: warning: {category.__name__}: {one_line(str(message))}\n")
        except (OSError, ValueError):
            pass  # stderr closed: a warning is not worth failing for

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
