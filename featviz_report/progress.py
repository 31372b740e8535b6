"""Progress on stderr: a redrawn counter on a terminal, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Report ``done/total`` for named stages; lines when stderr is not a terminal."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self._last_line = ""
        self._last_time = time.monotonic()

    def update(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        line = _bar(stage, done, total)
        if self.tty:
            self._redraw(line, done >= total)
        elif done >= total and line != self._last_line:
            self.stream.write(line + "\n")
        self._last_line = line

    def rate(self, stage: str, done: int, total: int, elapsed: float) -> None:
        """Like ``update``, with items per second and the time left; off a terminal, a line every 10 s."""
        if not self.enabled or elapsed <= 0:
            return
        speed = done / elapsed
        left = (total - done) / speed if speed > 0 else 0.0
        finished = done >= total
        line = f"{_bar(stage, done, total)} · {speed:,.0f}/s · {'done in' if finished else 'ETA'} "
        line += _clock(elapsed if finished else left)
        now = time.monotonic()
        if self.tty:
            self._redraw(line, finished)
        elif finished or now - self._last_time >= 10:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_time = now

    def _redraw(self, line: str, finished: bool) -> None:
        self.stream.write("\r" + line + ("\n" if finished else ""))
        self.stream.flush()

    def warn(self, text: str) -> None:
        """Warnings are printed even when progress is off: they name inputs the report leaves out."""
        self.stream.write(f"featviz-report: warning: {text}\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


def _bar(stage: str, done: int, total: int, width: int = 24) -> str:
    filled = round(width * done / total) if total else width
    return f"{stage:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
