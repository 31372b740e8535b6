"""cli.py: main(argv) end to end — the demo, torchvision models, exit codes, messages, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import read_page

from featviz_report._resources import demo_samples_dir
from featviz_report.cli import main

DEMO_LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside: the thread policy follows the load, and a sum taken in another order can
    change a value's last digit, so builds compared byte for byte (or to 1e-9) run on as many threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo report and its JSON, built on one thread (:func:`one_thread`)."""
    out = tmp_path_factory.mktemp("demo") / "report.html"
    with one_thread():
        assert main(["-o", str(out), "--quiet", "--json", str(out.with_suffix(".json"))]) == 0
    return out


def test_demo_report_has_every_layer_and_real_images(demo_page: Path) -> None:
    page = read_page(demo_page)
    assert [s["data-layer"] for s in page.sections] == DEMO_LAYERS
    assert page.nav == [s["id"] for s in page.sections]
    samples = sorted(demo_samples_dir().glob("*.png"))
    maps = [img for img in page.images if img["_section"] == "layer-conv1" and "channels 0–15" in img["alt"]]
    assert len(maps) == len(samples) >= 10
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)


def test_demo_model_reads_its_own_digits(demo_page: Path) -> None:
    data = json.loads(demo_page.with_suffix(".json").read_text())
    predicted = {s["name"]: s["prediction"]["label"] for s in data["samples"]}
    assert predicted == {f"digit-{d}.png": str(d) for d in range(10)}
    assert all(s["prediction"]["probability"] > 0.5 for s in data["samples"])
    for sample in data["samples"]:
        probabilities = [p["probability"] for p in sample["top_classes"]]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert sample["top_classes"][0] == sample["prediction"] and sum(probabilities) <= 1 + 1e-6


def test_two_builds_on_as_many_threads_are_byte_identical(demo_page: Path, tmp_path: Path) -> None:
    """The promise (README, Limits) is for the same number of torch threads."""
    again = tmp_path / "again.html"
    with one_thread():
        assert main(["-o", str(again), "--quiet"]) == 0
    assert again.read_bytes() == demo_page.read_bytes()


def test_torchvision_model_through_the_cli(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "r.html"
    code = main(
        [
            "--model",
            "torchvision:resnet18",
            "--samples",
            str(image_folder),
            "-o",
            str(out),
            "--quiet",
            "--layers",
            "conv1",
            "layer4.*.conv2",
            "fc",
            "--max-channels",
            "32",
        ]
    )
    assert code == 0
    page = read_page(out)
    assert [s["data-layer"] for s in page.sections] == ["conv1", "layer4.0.conv2", "layer4.1.conv2", "fc"]
    assert "showing 32 of 512 channels, 0–31 (--max-channels 32; --order keeps the highest by" in page.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--colormap", "rainbow"], "invalid choice: 'rainbow'"),
        (["--max-channels", "0"], "must be at least 1"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--model", "torchvision:resnet18"], "--samples is required with --model"),
        (["--samples", "does/not/exist"], "'does/not/exist' does not exist"),
        (["--model", "torchvision:nope", "--samples", "."], "no such torchvision classification model"),
        (["--layers", "nothing*"], "'nothing*' matches no layer"),
        (["--normalize", "1,2,3"], "--normalize '1,2,3'"),
        (["--weights", "missing.pt"], "--weights 'missing.pt': file not found"),
        (["--model", "resnet18", "--samples", "."], "did you mean torchvision:resnet18 (or timm:resnet18)?"),
        (["--model", "resnt18", "--samples", "."], "did you mean torchvision:resnet18"),
        (["photos/"], "unexpected argument 'photos/': images go after --samples; the commands are scan, site"),
        (["scan"], "the following arguments are required: DATA (see 'featviz-report scan --help')"),
    ],
)
def test_bad_usage_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "r.html"
    out.write_text("keep me")
    assert main([*argv, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featviz-report: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_unwritable_output_fails_before_the_model_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["-o", str(tmp_path / "no" / "such" / "dir" / "r.html"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_internal_errors_exit_1_with_a_debug_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import featviz_report.models.resolve as models

    def broken(*args: object) -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(models, "load_model", broken)
    assert main(["--quiet"]) == 1
    err = capsys.readouterr().err
    assert "internal error (ZeroDivisionError: oops)" in err and "--debug" in err and "Traceback" not in err
    assert main(["--quiet", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import featviz_report.models.resolve as models

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load_model", interrupted)
    assert main(["--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("featviz-report ")
    assert main(["--help"]) == 0
    assert "--samples" in capsys.readouterr().out


def test_python_dash_m_builds_the_same_bytes_with_progress_lines(tmp_path: Path, demo_page: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}  # one thread, as demo_page
    result = subprocess.run(
        [sys.executable, "-m", "featviz_report", "-o", "r.html"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "capture" in result.stderr and "wrote r.html" in result.stderr
    assert (tmp_path / "r.html").read_bytes() == demo_page.read_bytes()  # another PYTHONHASHSEED, same bytes


def test_help_groups_the_options_inputs_first_lists_every_command_and_gives_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    groups = ["inputs:", "what to show:", "feature visualisation:", "comparison and training runs:", "output:"]
    groups += ["performance:", "general:", "other commands:", "examples:"]
    assert [text.index(g) for g in groups] == sorted(text.index(g) for g in groups)
    inputs = text[text.index("inputs:") : text.index("what to show:")]
    assert inputs.split()[1] == "--samples" and "--model" in inputs
    assert "    scan " in text and "    site " in text and "featviz-report scan val/" in text


def test_repeated_samples_are_all_kept_and_a_run_without_model_says_it_uses_the_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digits = sorted(demo_samples_dir().glob("*.png"))
    out, sidecar = tmp_path / "r.html", tmp_path / "r.json"
    argv = ["--samples", str(digits[0]), "--samples", str(digits[1]), str(digits[2]), "--no-graph"]
    assert main([*argv, "-o", str(out), "--json", str(sidecar), "--quiet"]) == 0
    assert [s["name"] for s in json.loads(sidecar.read_text())["samples"]] == [d.name for d in digits[:3]]
    assert "featviz-report: warning: no --model: these samples go through the embedded digits demo" in (
        capsys.readouterr().err
    )


def test_site_without_its_folder_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site"]) == 2
    err = capsys.readouterr().err
    said = "the following arguments are required: DIR (see 'featviz-report site --help')"
    assert err == f"featviz-report: error: {said}\n"


def test_summary_prints_the_layer_table_and_writes_it_as_csv(
    demo_page: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    out, table = tmp_path / "r.html", tmp_path / "layers.csv"
    with one_thread():  # compared with demo_page's JSON to 1e-9
        assert main(["-o", str(out), "--quiet", "--no-graph", "--summary", "--summary-csv", str(table)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("featviz demo: digits CNN: 5 layers shown") and printed[1].split()[:4] == [
        "Layer", "Type", "Output", "Params"
    ]  # fmt: skip
    assert [line.split()[0] for line in printed[3:8]] == DEMO_LAYERS
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    numbers = {
        layer["name"]: layer["stats"] for layer in json.loads(demo_page.with_suffix(".json").read_text())["layers"]
    }
    assert [r["layer"] for r in rows] == DEMO_LAYERS
    for row in rows:  # the same numbers as the JSON, unrounded
        for key in ("mean", "max", "zero_fraction", "nonpositive_fraction"):
            assert float(row[key]) == pytest.approx(numbers[row["layer"]][key], rel=1e-9)
    assert printed[1].split()[8:12] == ["Exact", "zeros", "<=", "0"]
    before_relu = next(r for r in rows if r["layer"] == "conv1")  # the demo's conv1 runs before its ReLU
    assert float(before_relu["zero_fraction"]) == 0 < float(before_relu["nonpositive_fraction"])
    page = read_page(out)
    assert page.text.count("Exact zeros") == 1 and "≤ 0" in page.text
    assert rows[0]["flags"] == "2 dead channels" and rows[0]["output"] == "16×28×28"
