"""progress.py: off a terminal a counter writes a line every few seconds and at its end, a stage without
steps says what it is doing while it runs; quiet, nothing."""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace

import pytest

from featviz_report.runtime import progress as progress
from featviz_report.runtime.progress import EVERY, Progress


def test_a_counter_off_a_terminal_writes_a_line_every_few_seconds_and_when_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    stream = io.StringIO()
    counter = Progress(stream=stream)
    for done, at in ((1, 0.0), (2, EVERY - 0.1), (3, EVERY), (4, EVERY + 1), (5, 2 * EVERY + 1), (6, 2 * EVERY + 1)):
        clock[0] = 100.0 + at
        counter.update("capture", done, 6)
    assert [line.split("] ")[1] for line in stream.getvalue().splitlines()] == ["3/6", "5/6", "6/6"]
    clock[0] += EVERY - 1
    counter.warn("a warning is a line too")
    clock[0] += 2
    counter.rate("fields", 1, 4, 1.0)  # EVERY + 1 s after the counter's last line, but 2 s after the warning's
    assert "fields" not in stream.getvalue()


def test_a_stage_without_steps_says_what_it_does_while_it_runs_and_when_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "EVERY", 0.01)
    stream = io.StringIO()
    with Progress(stream=stream).working("page", "writing report.html"):
        deadline = time.monotonic() + 30
        while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the stage has said twice what it is doing
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("page       writing report.html · 0:00") and len(lines) >= 3
    assert lines[-1].startswith("page       writing report.html · done in")
    assert all(t.name != "progress" for t in threading.enumerate())  # the ticker ended with the stage


def test_quiet_progress_writes_nothing_and_starts_no_thread() -> None:
    stream = io.StringIO()
    quiet = Progress(enabled=False, stream=stream)
    with quiet.working("page", "writing report.html"):
        assert all(t.name != "progress" for t in threading.enumerate())
    quiet.update("capture", 1, 1)
    assert stream.getvalue() == ""
