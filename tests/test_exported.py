"""exported.py: torch.export archives give a full report with the defaults, and hostile ones run nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from archives import EVIL, export_demo, rewrite
from conftest import read_page

from featviz_report.cli import main
from featviz_report.resources import demo_samples_dir

DEMO_LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_demo(tmp_path_factory.mktemp("export") / "digits.pt2")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("batch", [1, None], ids=["static-batch", "dynamic-batch"])
def test_a_plain_export_gives_a_full_report_with_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], batch: int | None
) -> None:
    archive = export_demo(tmp_path / "digits.pt2", batch)
    out, sidecar = tmp_path / "r.html", tmp_path / "r.json"
    code, err = _run(["--model", str(archive), "--samples", str(demo_samples_dir()), "-o", str(out),
                      "--json", str(sidecar), "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    page = read_page(out)
    assert [s["data-layer"] for s in page.sections] == DEMO_LAYERS
    data = json.loads(sidecar.read_text())
    assert [layer["type"] for layer in data["layers"]] == ["Conv2d"] * 3 + ["Linear"] * 2
    assert data["input_shape"] == [1, 28, 28] and len(data["samples"]) == 10
    assert all(s["prediction"] is not None for s in data["samples"])
    assert "filters" in out.read_text()  # the convolutions' weights are drawn, like any model's


def test_a_batch_the_export_cannot_take_is_refused_up_front(
    plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["--model", str(plain), "--samples", str(demo_samples_dir()), "--batch-size", "4",
                      "-o", str(tmp_path / "r.html")], capsys)  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "exported for batches of exactly 1" in err and "torch.export.Dim" in err


@pytest.mark.parametrize("case", sorted(EVIL))
def test_a_hostile_archive_is_refused_by_name_and_runs_nothing(
    plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    make, culprit = EVIL[case]
    marker = tmp_path / "pwned"
    evil = rewrite(plain, tmp_path / "evil.pt2", make(marker))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # even when torch is told to unpickle
    out = tmp_path / "r.html"
    code, err = _run(["--model", str(evil), "--samples", str(demo_samples_dir()), "-o", str(out)], capsys)
    assert code == 2, err
    assert err.startswith("featviz-report: error: --model ") and err.count("\n") == 1, err
    assert culprit in err
    assert not marker.exists() and not out.exists()


def test_while_torch_reads_an_archive_the_calls_that_would_run_code_refuse() -> None:
    """The second line of defence, for layouts the entry checks did not foresee."""
    import pickle

    import sympy

    from featviz_report.errors import ModelError
    from featviz_report.exported import _sinks_guarded

    with _sinks_guarded("--model 'x.pt2'"):
        with pytest.raises(ModelError, match="pickled Python object"):
            pickle.loads(pickle.dumps(1))
        with pytest.raises(ModelError, match="not arithmetic"):
            sympy.sympify("__import__('os').system('true')")
        assert sympy.sympify("Max(2, s0) + 2*s1").free_symbols  # shapes still parse
    assert pickle.loads(pickle.dumps(1)) == 1 and sympy.sympify("1+1") == 2  # and everything is back after
