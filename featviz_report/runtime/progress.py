"""Progress on stderr: a redrawn counter on a terminal, plain lines otherwise, nothing when quiet.

Off a terminal a counter writes a line when its stage ends and whenever :data:`EVERY` seconds have passed
since the last line, so a log never stays silent longer than that plus one step. A stage with no steps to
count (writing a page, waiting for the graph's layout) runs inside :meth:`Progress.working`, which says how
long it has been at it every :data:`EVERY` seconds once it takes longer than that.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress", "EVERY"]

EVERY = 5.0  # seconds between lines off a terminal, at most (a step or a check later)


class Progress:
    """Report ``done/total`` for named stages; lines when stderr is not a terminal. ``warnings`` off: no
    warnings either (a torchrun process other than rank 0, whose warnings rank 0 gives)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, *, warnings: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.warnings = warnings
        self.tty = enabled and self.stream.isatty()
        self._last_line = ""
        self._last_time = time.monotonic()
        self._lock = threading.Lock()  # a stage being timed by :meth:`working` writes from its own thread

    def update(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        line = _bar(stage, done, total)
        if self.tty:
            self._redraw(line, done >= total)
        elif line != self._last_line and (done >= total or self._due()):
            self._write(line + "\n")
        self._last_line = line

    def rate(self, stage: str, done: int, total: int, elapsed: float) -> None:
        """Like ``update``, with items per second and the time left."""
        if not self.enabled or elapsed <= 0:
            return
        speed = done / elapsed
        left = (total - done) / speed if speed > 0 else 0.0
        finished = done >= total
        line = f"{_bar(stage, done, total)} · {speed:,.0f}/s · {'done in' if finished else 'ETA'} "
        line += _clock(elapsed if finished else left)
        if self.tty:
            self._redraw(line, finished)
        elif finished or self._due():
            self._write(line + "\n")

    @contextmanager
    def working(self, stage: str, what: str) -> Iterator[None]:
        """Around a stage with no steps to count: once it has run :data:`EVERY` seconds, a line saying
        ``what`` it is doing and for how long, again every :data:`EVERY` seconds, and one when it ends."""
        if not self.enabled:
            yield
            return
        start, done = time.monotonic(), threading.Event()

        def tick() -> None:
            while not done.wait(EVERY):
                self._say(f"{stage:<10} {what} · {_clock(time.monotonic() - start)}", False)

        ticker = threading.Thread(target=tick, name="progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            took = time.monotonic() - start
            if took >= EVERY:
                self._say(f"{stage:<10} {what} · done in {_clock(took)}", True)

    def _say(self, line: str, finished: bool) -> None:
        if self.tty:
            self._redraw(line, finished)
        else:
            self._write(line + "\n")

    def _due(self) -> bool:
        return time.monotonic() - self._last_time >= EVERY

    def _redraw(self, line: str, finished: bool) -> None:
        self._write("\r" + line + ("\n" if finished else ""))

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()
            self._last_time = time.monotonic()

    def warn(self, text: str) -> None:
        """Warnings are printed even when progress is off (not with ``warnings`` off): they name inputs the
        report leaves out."""
        if self.warnings:
            self._write(f"featviz-report: warning: {text}\n")

    def message(self, text: str) -> None:
        if self.enabled:
            self._write(text + "\n")


def _bar(stage: str, done: int, total: int, width: int = 24) -> str:
    filled = round(width * done / total) if total else width
    return f"{stage:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
