"""Shared fixtures: tiny models built in code, sample images written to tmp folders, an HTML reader; and,
in the run's last lines, whether the browser suite ran (``make test`` must not pass it over silently)."""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featviz_report import ReportConfig

BROWSER_SUITE = "tests/test_browser.py"
_BROWSER_COLLECTED = pytest.StashKey[int]()


class TinyCNN(nn.Module):
    """conv1 (followed by an inplace ReLU) → pool → conv2 → linear head of 3 classes."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        return self.head(torch.relu(self.conv2(x)).flatten(1))


def hooks_left(model: nn.Module) -> list[str]:
    """Every hook still registered on ``model``'s modules (forward, pre-forward, backward) or globally."""
    from torch.nn.modules import module as torch_module

    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    left = [f"{name or 'model'}.{kind}" for name, m in model.named_modules() for kind in kinds if getattr(m, kind)]
    globals_ = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return left + [kind for kind in globals_ if getattr(torch_module, kind, None)]


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def quiet() -> ReportConfig:
    return ReportConfig(quiet=True)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Four small RGB images in a nested folder, written in a shuffled order."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("sub/d.png", "b.png", "a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    return folder


@dataclass
class Page:
    """What tests look at in a rendered report."""

    sections: list[dict[str, str]] = field(default_factory=list)
    nav: list[str] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)
    metas: list[dict[str, str]] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    scripts: list[tuple[dict[str, str], str]] = field(default_factory=list)
    text: str = ""


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._raw: tuple[str, dict[str, str]] | None = None
        self._buffer: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section" and a.get("id", "").startswith("layer-"):
            self.page.sections.append(a)
        elif tag == "a" and a.get("href", "").startswith("#layer-") and a.get("data-slug"):
            self.page.nav.append(a["href"][1:])
        elif tag == "img":
            a["_section"] = self.page.sections[-1]["id"] if self.page.sections else ""
            self.page.images.append(a)
        elif tag == "meta":
            self.page.metas.append(a)
        elif tag in ("style", "script"):
            self._raw = (tag, a)
            self._buffer = []

    def handle_data(self, data: str) -> None:
        if self._raw is not None:
            self._buffer.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._raw is not None and tag == self._raw[0]:
            text = "".join(self._buffer)
            if tag == "style":
                self.page.styles.append(text)
            else:
                self.page.scripts.append((self._raw[1], text))
            self._raw = None


def read_page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    reader = _Reader()
    reader.feed(text)
    reader.page.text = text
    return reader.page


def decode_png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    image.load()
    return image


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_BROWSER_COLLECTED] = sum(item.nodeid.startswith(BROWSER_SUITE) for item in session.items)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    """After pytest's own summary, just above the counts: one line on the browser suite (see
    :func:`browser_summary`)."""
    result = yield
    if terminalreporter.config.option.collectonly:
        return result
    line = browser_summary(terminalreporter.stats, terminalreporter.config.stash.get(_BROWSER_COLLECTED, 0))
    if line:
        terminalreporter.write_line(line, bold=True)
    return result


def browser_summary(stats: dict[str, list[Any]], collected: int) -> str | None:
    """``browser tests: ran N (...)``, ``browser tests: skipped — <why>`` or why they did not run; None
    when the run did not include them at all (a run of other test files)."""
    worst = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    outcome_of: dict[str, str] = {}
    reasons: set[str] = set()
    for report in (r for found in stats.values() for r in found if isinstance(r, pytest.TestReport)):
        if not report.nodeid.startswith(BROWSER_SUITE):
            continue
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        if report.skipped:
            reasons.add(_skip_reason(report))
        if worst[outcome] >= worst[outcome_of.get(report.nodeid, "passed")]:
            outcome_of[report.nodeid] = outcome
    counts = Counter(outcome_of.values())
    ran = sum(n for outcome, n in counts.items() if outcome != "skipped")
    if ran:
        return f"browser tests: ran {ran} ({', '.join(f'{n} {outcome}' for outcome, n in sorted(counts.items()))})"
    if counts:
        return f"browser tests: skipped — {'; '.join(sorted(reasons))}"
    deselected = sum(item.nodeid.startswith(BROWSER_SUITE) for item in stats.get("deselected", ()))
    if deselected:
        return f"browser tests: not run — all {deselected} deselected (-k or -m)"
    if collected:
        return f"browser tests: not run — the session stopped before them ({collected} collected)"
    return None


def _skip_reason(report: pytest.TestReport) -> str:
    """A skipped report's reason, without pytest's 'Skipped: ' prefix."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")
