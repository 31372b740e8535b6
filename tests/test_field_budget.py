"""The time budget of receptive fields from the gradient: past it, a report's layers say why they have none,
on the page, in the JSON and once on stderr; within it they have their boxes; a probe never starts a pass
that would end after its deadline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.fields.budget import FLOOR_SECONDS, OVER_BUDGET, SHARE, Deadline, OverBudget, field_seconds
from featviz_report.fields.receptive import GradientProbe


class Rolled(nn.Module):
    """conv → roll (the tracer does not know roll) → conv → conv: the last two layers' fields come from the
    gradient, the first's are traced."""

    def __init__(self) -> None:
        super().__init__()
        self.traced = nn.Conv2d(3, 4, 3, padding=1)
        self.after = nn.Conv2d(4, 4, 3, padding=1)
        self.last = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.after(torch.roll(self.traced(x), 1, dims=-1)))


def _report(tmp_path: Path, name: str, seconds: float | None) -> tuple[dict[str, dict], str]:
    torch.manual_seed(0)
    config = ReportConfig(field_seconds=seconds, quiet=False, graph=True)
    page, sidecar = tmp_path / f"{name}.html", tmp_path / f"{name}.json"
    build_report(Rolled().eval(), torch.rand(3, 3, 20, 20), page, config, json_out=sidecar)
    layers = {layer["name"]: layer for layer in json.loads(sidecar.read_text())["layers"]}
    return layers, page.read_text(encoding="utf-8")


def _boxes(layer: dict) -> list[list[int]]:
    return [entry["box"] for channel in layer["channels"]["top"] for entry in channel if "box" in entry]


def test_past_the_budget_layers_say_why_they_have_no_fields_and_within_it_they_have_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layers, html = _report(tmp_path, "none", 0.0)
    err = capsys.readouterr().err
    assert _boxes(layers["traced"]) and "receptive_field_unknown" not in layers["traced"]  # traced: no budget
    for name in ("after", "last"):
        assert layers[name]["receptive_field_unknown"] == OVER_BUDGET
        assert not _boxes(layers[name])
        section = html.split(f'id="layer-{name}"')[1].split("</section>")[0]
        assert f"Receptive fields unknown: {OVER_BUDGET}." in section
    warnings = [line for line in err.splitlines() if "receptive fields" in line]
    assert warnings == [
        "featviz-report: warning: receptive fields not computed for 2 of the 2 layers whose fields come from the "
        "gradient, over their time budget of 0.0 s (after, last): their top images are shown whole"
    ]
    assert re.search(r"^fields +\[#+\] 2/2 ", err, re.MULTILINE)  # progress: the gradient's layers, counted

    layers, html = _report(tmp_path, "default", None)
    assert "fields not computed" not in capsys.readouterr().err + html
    for name in ("traced", "after", "last"):
        assert _boxes(layers[name]) and "receptive_field_unknown" not in layers[name]


def test_a_probe_starts_no_pass_that_would_end_past_its_deadline() -> None:
    model = Rolled().eval()
    probe = GradientProbe(model, (3, 20, 20))
    calls = []
    probe.copies[0][1][id(model.after)].register_forward_hook(lambda *_: calls.append(1))
    positions = [(1, 1), (5, 7)]
    probe.pass_seconds = 3600.0  # as if the last pass took an hour
    with pytest.raises(OverBudget, match=f"^{OVER_BUDGET}$"):
        probe.boxes(model.after, 0, positions, Deadline(60.0))
    assert calls == []
    probe.pass_seconds = 0.0
    assert probe.boxes(model.after, 0, positions, Deadline(60.0)) == probe.boxes(model.after, 0, positions)
    assert calls


def test_the_budget_is_a_share_of_the_time_so_far_with_a_floor() -> None:
    assert field_seconds(1.0) == FLOOR_SECONDS
    assert field_seconds(600.0) == pytest.approx(SHARE * 600.0)
    assert field_seconds(600.0, 0.5) == 0.5
