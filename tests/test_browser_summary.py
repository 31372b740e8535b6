"""conftest.browser_summary: the line that ends ``make test`` saying whether the browser suite ran, and why not."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import BROWSER_SUITE, browser_summary

AXE = "tests/browser/node_modules/axe-core/axe.min.js is missing (npm install --prefix tests/browser)"


def _report(test: str, when: str, outcome: str, file: str = BROWSER_SUITE) -> pytest.TestReport:
    """A report as pytest makes it; a skip carries (path, line, 'Skipped: reason') as pytest.skip does."""
    longrepr = (file, 40, f"Skipped: {AXE}") if outcome == "skipped" else None
    return pytest.TestReport(f"{file}::{test}", (file, 40, test), {}, outcome, longrepr, when)


def _stats(*reports: pytest.TestReport) -> dict[str, list[Any]]:
    """Reports filed under the terminal reporter's categories ('' for passing set-ups and teardowns)."""
    stats: dict[str, list[Any]] = {}
    for report in reports:
        key = report.outcome if report.when == "call" or not report.passed else ""
        stats.setdefault("error" if report.failed and report.when != "call" else key, []).append(report)
    return stats


def test_a_skipped_suite_says_why() -> None:
    stats = _stats(_report("test_a", "setup", "skipped"), _report("test_b[x]", "setup", "skipped"))
    assert browser_summary(stats, 2) == f"browser tests: skipped — {AXE}"


def test_a_suite_that_ran_counts_each_test_once_by_its_worst_outcome() -> None:
    stats = _stats(
        *(_report("test_a", when, "passed") for when in ("setup", "call", "teardown")),
        _report("test_b", "setup", "passed"),
        _report("test_b", "call", "failed"),
        _report("test_c", "setup", "failed"),
        _report("test_d", "setup", "passed"),
        _report("test_d", "call", "skipped"),
        _report("test_other", "call", "failed", file="tests/test_cli.py"),
    )
    assert browser_summary(stats, 4) == "browser tests: ran 3 (1 error, 1 failed, 1 passed, 1 skipped)"


def test_deselected_stopped_early_or_not_in_the_run() -> None:
    class Item:
        nodeid = f"{BROWSER_SUITE}::test_a"

    deselected = {"deselected": [Item(), Item()]}
    assert browser_summary(deselected, 0) == "browser tests: not run — all 2 deselected (-k or -m)"
    assert browser_summary({}, 3) == "browser tests: not run — the session stopped before them (3 collected)"
    assert browser_summary(_stats(_report("test_x", "call", "passed", file="tests/test_cli.py")), 0) is None
