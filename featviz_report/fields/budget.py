"""How long receptive fields from the gradient may take, and the clock their probes are held to.

Fields traced along the forward pass (:mod:`featviz_report.fields.trace`) cost milliseconds for a whole
model. Those from the gradient (:mod:`featviz_report.fields.receptive`) cost a forward and a backward pass of the
model up to the layer for every batch of probes: seconds per layer of a large model, and a model the tracer
does not follow has hundreds of such layers (timm's convnext_tiny: 126 channels-last layers). They get a
share of the report's time: a tenth of what it took before them (samples, capture, feature visualisation,
sections), at least :data:`FLOOR_SECONDS`. A probe starts a pass only when the pass, at the time per slot
of the last one, fits in what is left; past the budget the layers left get no fields, and the page and
the JSON say so (:data:`OVER_BUDGET`).
"""

from __future__ import annotations

import time

__all__ = ["FLOOR_SECONDS", "SHARE", "OVER_BUDGET", "OverBudget", "Deadline", "field_seconds"]

FLOOR_SECONDS = 2.0
SHARE = 0.1
OVER_BUDGET = "fields not computed: over the time budget"


class OverBudget(Exception):
    """The next pass of a probe would end past the deadline."""

    def __init__(self) -> None:
        super().__init__(OVER_BUDGET)


def field_seconds(elapsed: float, override: float | None = None) -> float:
    """The seconds the gradient's fields may take after a report's first ``elapsed`` seconds
    (``override``, when given, instead)."""
    return override if override is not None else max(FLOOR_SECONDS, SHARE * elapsed)


class Deadline:
    """``seconds`` from now; :meth:`allow` refuses work that would end after."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def spent(self) -> float:
        return time.monotonic() - self.start

    def allow(self, estimate: float) -> None:
        """Raise :class:`OverBudget` unless work of ``estimate`` seconds ends before the deadline."""
        if self.spent() + estimate >= self.seconds:
            raise OverBudget()
