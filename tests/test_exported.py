"""exported.py: torch.export archives give a full report with the defaults, and hostile ones run nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from archives import EVIL, GRAPH_EVIL, export_demo, planted, rewrite
from conftest import read_page
from torch import nn

from featviz_report._resources import demo_samples_dir
from featviz_report.cli import main
from featviz_report.errors import ModelError
from featviz_report.models.exported import _check_graph, load_exported

PHOTOS = Path(__file__).resolve().parent.parent / "samples" / "photos"

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
    from featviz_report.models.exported import _sinks_guarded

    with _sinks_guarded("--model 'x.pt2'"):
        with pytest.raises(ModelError, match="pickled Python object"):
            pickle.loads(pickle.dumps(1))
        with pytest.raises(ModelError, match="not arithmetic"):
            sympy.sympify("__import__('os').system('true')")
        assert sympy.sympify("Max(2, s0) + 2*s1").free_symbols  # shapes still parse
    assert pickle.loads(pickle.dumps(1)) == 1 and sympy.sympify("1+1") == 2  # and everything is back after


@pytest.fixture(scope="module")
def victim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("victim")


@pytest.mark.parametrize("case", sorted(GRAPH_EVIL))
def test_a_graph_that_reaches_files_or_memory_is_refused_before_anything_runs(
    plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    plan, culprit = GRAPH_EVIL[case]
    victim = tmp_path / "id_ed25519"
    victim.write_bytes(b"A" * 64)
    evil = planted(plain, tmp_path / "evil.pt2", victim, plan)
    out, sidecar = tmp_path / "r.html", tmp_path / "r.json"
    code, err = _run(["--model", str(evil), "--samples", str(demo_samples_dir()), "-o", str(out),
                      "--json", str(sidecar)], capsys)  # fmt: skip
    assert code == 2, err
    assert err.startswith("featviz-report: error: --model ") and err.count("\n") == 1, err
    assert culprit in err and "refused" in err
    assert victim.read_bytes() == b"A" * 64 and not out.exists() and not sidecar.exists()


@pytest.mark.parametrize("case", sorted(GRAPH_EVIL))
def test_the_graph_torch_built_is_checked_again_whatever_the_file_said(plain: Path, tmp_path: Path, case: str) -> None:
    """The second line: the operator and write checks on the loaded program, as if the JSON check missed."""
    plan, culprit = GRAPH_EVIL[case]
    evil = planted(plain, tmp_path / "evil.pt2", tmp_path / "victim", plan)
    program = torch.export.load(str(evil))  # loading builds the graph; it runs none of it
    with pytest.raises(ModelError, match="refused") as refused:
        _check_graph(program, "--model 'evil.pt2'")
    assert culprit in str(refused.value)


def test_the_planted_archive_is_truly_hostile_to_torch_alone(plain: Path, tmp_path: Path) -> None:
    """Without featviz-report's checks, torch runs the planted graph and overwrites the user's file."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"A" * 64)
    evil = planted(plain, tmp_path / "evil.pt2", victim, GRAPH_EVIL["file write by fill_"][0])
    torch.export.load(str(evil)).module()(torch.zeros(1, 1, 28, 28))
    assert victim.read_bytes() == b"B" * 64


def _exports() -> dict[str, tuple[Callable[[], nn.Module], int]]:
    import timm
    import torchvision

    tv = torchvision.models
    return {
        "resnet18": (tv.resnet18, 64), "mobilenet_v3_small": (tv.mobilenet_v3_small, 64),
        "efficientnet_b0": (tv.efficientnet_b0, 64), "convnext_tiny": (tv.convnext_tiny, 64),
        "vit_b_16": (lambda: tv.vit_b_16(image_size=64), 64),
        "timm:regnetx_002": (lambda: timm.create_model("regnetx_002"), 64),
        "timm:ghostnet_100": (lambda: timm.create_model("ghostnet_100"), 64),
        "timm:vit_tiny": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=64), 64),
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_exports()))
def test_exports_of_real_models_pass_the_allow_list(name: str, tmp_path: Path) -> None:
    make, size = _exports()[name]
    torch.manual_seed(0)
    archive = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(make().eval(), (torch.randn(1, 3, size, size),)), str(archive))
    loaded = load_exported(archive)
    assert (loaded.batch, loaded.channels, loaded.size) == (1, 3, size)


@pytest.mark.slow
def test_an_export_of_a_torchvision_model_still_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision

    archive = tmp_path / "mobilenet.pt2"
    model = torchvision.models.mobilenet_v3_small().eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 96, 96),)), str(archive))
    out = tmp_path / "r.html"
    code, err = _run(["--model", str(archive), "--samples", str(PHOTOS / "chelsea.jpg"), "-o", str(out), "--quiet"],
                     capsys)  # fmt: skip
    assert code == 0, err
    assert len(read_page(out).sections) > 10
