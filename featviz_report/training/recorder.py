"""Record a training run as a static site: one report per step and an index over them
(:mod:`featviz_report.training.index`).

``Recorder(site_dir, samples).record(model, step)`` writes ``site_dir/step-000012/`` (a folder report
with its JSON sidecar ``report.json``) and rewrites ``site_dir/index.html`` and ``index.json``. The model
is left exactly as it was found: device, training flags, ``requires_grad``, weights, buffers, gradients,
hooks, and torch's random number generators (recording does not change what training draws next).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..capture.changes import relative_change
from ..capture.hooks import select_layers
from ..capture.samples import SamplesArg
from ..config import ReportConfig
from ..errors import OutputError, UsageError
from ..pipelines.compare import compare_checkpoints
from ..pipelines.core import finish
from ..pipelines.report import build_report
from ..render.outputs import api_inputs, check_apart, check_api_outputs
from ..report_data import Report, TrainingStep
from ..runtime.heap import old_objects_frozen
from ..runtime.progress import Progress
from .index import COMPARE_DIR, STEP_JSON, check_site
from .page import write_site

__all__ = ["Recorder", "step_folder"]


def step_folder(step: int) -> str:
    """The folder of a step's report: ``step-000012`` (sorted by name is sorted by step)."""
    return f"step-{step:06d}"


class _Recorded(NamedTuple):
    """What a Recorder keeps of the step it recorded last: its number, the captured layers' own
    parameters (for the weight change) and, with ``compare``, the whole state_dict (for the comparison)."""

    step: int
    weights: dict[str, list[torch.Tensor]]
    state: dict[str, object] | None


class Recorder:
    """Writes one report per recorded step into ``site_dir``, on the same ``samples``, and the index.

    ``config`` is the reports' (its ``format`` is always ``dir``; default: quiet, every Conv2d and
    Linear, no graph after the first step, as the graph does not change during training). With
    ``compare`` each step also gets a comparison with the step before (``step-…/compare/``), which
    costs a copy of the model and a second pass over the samples."""

    def __init__(
        self, site_dir: str | Path, samples: SamplesArg, config: ReportConfig | None = None, *, compare: bool = False
    ) -> None:
        self.site = Path(site_dir)
        self.samples = samples
        self.config = dataclasses.replace(config or ReportConfig(), format="dir")
        self.compare = compare
        self._previous: _Recorded | None = None

    def record(self, model: nn.Module, step: int) -> Report:
        """Write ``model``'s report as step ``step`` and update the index; returns the report."""
        if type(step) is not int or step < 0:
            raise UsageError(f"a step is a whole number of at least 0, got {step!r}")
        out = self.site / step_folder(step)
        check_apart(out, api_inputs(self.samples))  # before the site folder is made
        try:
            self.site.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot make the site folder {str(self.site)!r}: {err.strerror or err}") from None
        check_site(self.site)
        check_api_outputs(out, out / STEP_JSON, "dir", self.samples)
        with untouched(model), old_objects_frozen():
            layers = {name: module for name, module in select_layers(model, self.config.layers, self.config.featviz)}
            weights = {
                name: [p.detach().cpu().clone() for p in m.parameters(recurse=False)] for name, m in layers.items()
            }
            config = self.config if self._previous is None else dataclasses.replace(self.config, graph=False)
            report = build_report(model, self.samples, None, config)
            before = self._previous
            changes = {
                n: relative_change(before.weights[n], w) if before and n in before.weights else None
                for n, w in weights.items()
            }
            training = TrainingStep(step, before.step if before else None, changes)
            report = finish(
                dataclasses.replace(report, training=training), out, out / STEP_JSON, config, Progress(False)
            )
            state = {k: _kept(v) for k, v in model.state_dict().items()} if self.compare else None
            if before is not None and before.state is not None:
                self._compare(model, before.state, out / COMPARE_DIR, before.step, step)
            self._previous = _Recorded(step, weights, state)
        write_site(self.site)
        return report

    def _compare(self, model: nn.Module, state: dict[str, object], out: Path, a: int, b: int) -> None:
        earlier = copy.deepcopy(model)
        earlier.load_state_dict(state)
        config = dataclasses.replace(self.config, graph=False, featviz=(), title=f"step {a} → step {b}")
        compare_checkpoints(earlier, model, self.samples, out, config, names=(f"step {a}", f"step {b}"))


def _kept(value: object) -> object:
    """A copy of a state_dict entry that training cannot change: a tensor on the CPU, or a module's extra
    state (``get_extra_state()``, any object)."""
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Whatever the block does, ``model``'s gradients and torch's random number generators are as they
    were after (the reports restore device, modes, ``requires_grad`` and hooks themselves)."""
    grads = [(p, p.grad) for p in model.parameters()]
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        for p, grad in grads:
            p.grad = grad
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
