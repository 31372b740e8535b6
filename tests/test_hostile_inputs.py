"""The failure contract, case by case: hostile models, files, options and outputs through ``main(argv)``.

Every failing case asserts the exact exit code, one ``featviz-report: error:`` line that names the
culprit, no traceback, an untouched pre-existing report and no stray files. Succeeding cases with bad
parts assert what the report says about them; XSS cases assert that no attacker markup is live.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_page
from PIL import Image

from featviz_report.cli import main
from featviz_report.demo.model import DigitsCNN

SENTINEL = "previous report, must survive"

FACTORIES = """
import torch
from torch import nn

class FourChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3)
    def forward(self, x):
        return self.conv(x)

class FixedSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16 * 16, 3)
    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))

class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
    def forward(self, x):
        y = self.conv(x)
        raise ValueError("custom failure in forward")

class NaNChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.after = nn.Conv2d(3, 3, 1)
    def forward(self, x):
        y = self.conv(x)
        y[:, 1] = float("nan")
        return self.after(y)

class Heads(nn.Module):
    # a face detector's three heads, each N×K: box (4), landmarks (10), face probability (2)
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.box = nn.Linear(4, 4)
        self.landmarks = nn.Linear(4, 10)
        self.face = nn.Linear(4, 2)
    def forward(self, x):
        f = self.conv(x).mean((2, 3))
        return self.box(f), self.landmarks(f), self.face(f)

class DictOut(Heads):
    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.face.bias.copy_(torch.tensor([-30.0, 30.0]))  # logits say "face", whatever the weights
    def forward(self, x):
        box, marks, face = super().forward(x)
        return {"box": box, "logits": face, "marks": marks}

class Noisy(FixedSize):
    def forward(self, x):
        import warnings
        warnings.warn("first line" + chr(10) + chr(27) + "[31msecond line in red" + chr(27) + "[0m")
        return super().forward(x)

class PageNames(nn.Sequential):
    def __init__(self):
        super().__init__()
        for name in ("search", "find", "main", "top", "zoom", "summary", "fv-data", "layer-search", "h"):
            self.add_module(name, nn.Conv2d(3, 3, 1))

def four_channels(): return FourChannels()
def heads(): return Heads()
def dict_out(): return DictOut()
def noisy(): return Noisy()
def page_names(): return PageNames()
def needs_arguments(size): return FixedSize()
def fixed_size(): return FixedSize()
def raises(): return Raises()
def nan_channel(): return NaNChannel()
def bfloat16(): return FixedSize().to(torch.bfloat16)
def not_a_model(): return "a string"
"""


@dataclass
class World:
    """A tmp folder with good and bad inputs, and an output folder holding a previous report."""

    root: Path
    out: Path

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    def image(self, name: str, size: tuple[int, int] = (20, 20)) -> Path:
        path = self.root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, "PNG")
        return path

    def file(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    (tmp_path / "hostile_factories.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text(SENTINEL)
    w = World(tmp_path, out)
    w.image("good.png")
    return w


def fails(world: World, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, *culprits: str) -> str:
    """Run and check the failure contract; return stderr."""
    result = main([*argv, "-o", str(world.report), "--quiet"])
    err = capsys.readouterr().err
    assert result == code, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("featviz-report: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("featviz-report: warning: ") for line in lines[:-1]), err
    assert "Traceback" not in err
    for culprit in culprits:
        assert culprit in errors[0], errors[0]
    assert world.report.read_text() == SENTINEL
    assert sorted(p.name for p in world.out.iterdir()) == ["report.html"], "stray or temporary files left"
    return errors[0]


def succeeds(world: World, capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[str, str]:
    result = main([*argv, "-o", str(world.report), "--quiet"])
    err = capsys.readouterr().err
    assert result == 0, err
    assert "Traceback" not in err
    assert sorted(p.name for p in world.out.iterdir()) == ["report.html"]
    return world.report.read_text(), err


IMAGES = ["--samples", "images"]

# --- models -------------------------------------------------------------------------------------------


def test_unknown_torchvision_model(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--model", "torchvision:resnet_999", *IMAGES], 2, "torchvision:resnet_999")


def test_pickled_model_is_refused_with_the_reason(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(DigitsCNN(), world.root / "whole.pt")
    error = fails(world, capsys, ["--model", "whole.pt", *IMAGES], 2, "'whole.pt'", "arbitrary code")
    assert "--trust-pickled-model" in error


def test_pickled_model_loads_with_the_explicit_opt_in(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(DigitsCNN(), world.root / "whole.pt")
    page, _ = succeeds(world, capsys, ["--model", "whole.pt", "--trust-pickled-model", *IMAGES, "--input-size", "28"])
    assert 'data-layer="conv1"' in page


@pytest.mark.parametrize("option", ["--weights", "--compare"])
def test_malicious_checkpoints_never_run_even_when_torch_is_told_to_unpickle(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    marker = world.root / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, world.root / "evil.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    fails(world, capsys, [option, "evil.pt"], 2, f"{option} 'evil.pt'", "not a loadable state_dict")
    assert not marker.exists()


def test_weights_file_missing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--weights", "nowhere.pt"], 2, "'nowhere.pt'", "file not found")


def test_weights_file_is_garbage(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file("garbage.pt", b"\x00\x01 not a checkpoint")
    fails(world, capsys, ["--weights", "garbage.pt"], 2, "'garbage.pt'")


def test_weights_with_wrong_keys_list_them(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    state = DigitsCNN().state_dict()
    state["bogus.weight"] = state.pop("fc2.weight")
    torch.save(state, world.root / "keys.pt")
    fails(
        world,
        capsys,
        ["--weights", "keys.pt"],
        2,
        "'keys.pt'",
        "missing in the file: fc2.weight",
        "only in the file: bogus.weight",
    )


def test_weights_with_wrong_shapes_name_them(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    state = DigitsCNN().state_dict()
    state["conv2.weight"] = torch.zeros(8, 16, 3, 3)
    torch.save(state, world.root / "shape.pt")
    fails(world, capsys, ["--weights", "shape.pt"], 2, "'shape.pt'", "wrong shape: conv2.weight")


def test_factory_module_missing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--model", "no_such_pkg.models:build", *IMAGES], 2, "'no_such_pkg.models'")


def test_factory_attribute_missing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--model", "hostile_factories:nope", *IMAGES], 2, "'nope'")


@pytest.mark.parametrize(
    ("spec", "culprit"),
    [
        ("torch.nn:Conv2d", "calling Conv2d() failed (TypeError"),
        ("hostile_factories:needs_arguments", "with no arguments"),
        (":", "expected package.module:callable"),
        ("hostile_factories:", "expected package.module:callable"),
        (":build", "expected package.module:callable"),
        ("a b:c", "expected package.module:callable"),
    ],
)
def test_factory_specs_that_cannot_build_a_model_are_usage_errors(
    world: World, capsys: pytest.CaptureFixture[str], spec: str, culprit: str
) -> None:
    fails(world, capsys, ["--model", spec, *IMAGES], 2, f"--model {spec!r}", culprit)


def test_a_pickled_model_finds_its_classes_in_the_working_directory(tmp_path: Path) -> None:
    """Like a factory, without any sys.path set-up by the caller: a fresh process in the user's folder."""
    (tmp_path / "mynet.py").write_text("from torch import nn\nclass Net(nn.Sequential):\n    pass\n")
    script = "import torch, mynet; torch.save(mynet.Net(torch.nn.Conv2d(3, 2, 3)), 'whole.pt')"
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    argv = ["--model", "whole.pt", "--trust-pickled-model", "--samples", "x.png", "--input-size", "16", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "featviz_report", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 'data-layer="0"' in (tmp_path / "report.html").read_text()


def test_factory_returns_no_module(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--model", "hostile_factories:not_a_model", *IMAGES], 2, "returned str")


def test_corrupt_export_archive(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file("broken.pt2", b"PK\x03\x04 truncated zip")
    fails(world, capsys, ["--model", "broken.pt2", *IMAGES], 2, "'broken.pt2'")


def test_wrong_input_channels_say_what_the_model_expects(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--model", "hostile_factories:four_channels", *IMAGES], 2,
          "layer conv (Conv2d) expects 4 input channels but gets 3", "3×224×224")  # fmt: skip


def test_wrong_input_size_points_at_input_size(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--model", "hostile_factories:fixed_size", *IMAGES, "--input-size", "20"], 2,
          "layer fc (Linear) expects 512 input features but gets 800", "--input-size")  # fmt: skip


def test_forward_that_raises_names_where(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--model", "hostile_factories:raises", *IMAGES], 2,
          "after layer conv (Conv2d)", "custom failure in forward")  # fmt: skip


def test_an_ambiguous_output_gives_no_predictions_and_says_how_to_choose(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", "hostile_factories:heads", *IMAGES, "--input-size", "16"]
    page, err = succeeds(world, capsys, [*argv, "--json", "r.json"])
    assert "3 N×K tensors (0, 1, 2)" in err and "--output" in err
    assert "3 N×K tensors" in page and "class 1" not in page
    assert all(s["prediction"] is None for s in json.loads((world.root / "r.json").read_text())["samples"])
    (world.root / "r.json").unlink()
    page, err = succeeds(world, capsys, [*argv, "--output", "2"])
    assert "N×K tensors" not in err and "class 1" in page
    world.report.write_text(SENTINEL)
    fails(world, capsys, [*argv, "--output", "3"], 2, "--output '3'", "no such entry", "'0', '1', '2'")
    fails(world, capsys, [*argv, "--cam", "gradcam"], 2, "Grad-CAM needs N×K class scores", "--output")


def test_a_dict_output_uses_its_logits(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file("labels.txt", b"\xef\xbb\xbfnot a face\nface\n")  # a BOM, as Windows editors write
    argv = ["--model", "hostile_factories:dict_out", *IMAGES, "--input-size", "16", "--labels", "labels.txt"]
    page, err = succeeds(world, capsys, [*argv, "--cam", "gradcam", "--json", "r.json"])
    assert err == "" and "\ufeff" not in page
    predictions = [s["prediction"] for s in json.loads((world.root / "r.json").read_text())["samples"]]
    assert predictions and all(
        p["index"] == 1 and p["label"] == "face" and p["probability"] > 0.999 for p in predictions
    )


def test_labels_that_do_not_match_the_classes_are_warned_about(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.file("labels.txt", b"cat\ndog\n")
    _, err = succeeds(world, capsys, ["--model", "hostile_factories:fixed_size", *IMAGES, "--input-size", "16",
                                      "--labels", "labels.txt"])  # fmt: skip
    assert "featviz-report: warning: 2 labels for a model with 3 classes" in err


def test_warnings_are_one_plain_line_each(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    _, err = succeeds(world, capsys, ["--model", "hostile_factories:noisy", *IMAGES, "--input-size", "16"])
    assert err.splitlines() == ["featviz-report: warning: UserWarning: first line"]


def test_layers_named_like_parts_of_the_page_keep_every_id_unique(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    page, _ = succeeds(world, capsys, ["--model", "hostile_factories:page_names", *IMAGES, "--input-size", "8"])
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(read_page(world.report).sections) == 9


def test_nan_channels_are_counted_and_said(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    page, _ = succeeds(world, capsys, ["--model", "hostile_factories:nan_channel", *IMAGES, "--input-size", "16"])
    assert "non-finite" in page and "NaN" in page


def test_bfloat16_models_are_reduced_in_float32(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    page, _ = succeeds(world, capsys, ["--model", "hostile_factories:bfloat16", *IMAGES, "--input-size", "16"])
    assert 'data-layer="fc"' in page


# --- samples ------------------------------------------------------------------------------------------


def test_missing_samples_path(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--samples", "nope/dir"], 2, "'nope/dir'", "does not exist")


def test_an_unreadable_folder_is_named(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.image("locked/inside.png")
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:  # what a folder without read permission does (tests run as root)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    fails(world, capsys, IMAGES, 2, "cannot read folder", "locked'", "Permission denied")


def test_a_file_name_that_is_not_utf8_is_shown_with_replacement_characters(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = os.fsencode(world.root / "images") + b"/caf\xe9.png"
    with open(raw, "wb") as handle:
        Image.new("RGB", (12, 12)).save(handle, "PNG")
    page, _ = succeeds(world, capsys, [*IMAGES, "--json", "r.json"])
    assert "caf\ufffd.png" in page
    assert "caf\ufffd.png" in [s["name"] for s in json.loads((world.root / "r.json").read_text())["samples"]]


def test_empty_samples_folder(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (world.root / "empty").mkdir()
    fails(world, capsys, ["--samples", "empty"], 2, "'empty'", "no image files")


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("zero.png", b"", "empty file"),
        ("notes.png", b"this is text, not pixels", "not an image"),
        ("cut.png", None, "unreadable image"),
    ],
)
def test_bad_files_are_skipped_by_name_and_listed_in_the_report(
    world: World, capsys: pytest.CaptureFixture[str], name: str, data: bytes | None, reason: str
) -> None:
    if data is None:
        full = world.image("whole.png", (64, 64)).read_bytes()
        (world.root / "images" / "whole.png").unlink()
        data = full[: len(full) // 2]
    world.file(f"images/{name}", data)
    page, err = succeeds(world, capsys, IMAGES)
    assert f"featviz-report: warning: skipped sample '{name}': {reason}" in err
    assert name in page and "could not be used" in page
    assert 'alt="Input sample 0: good.png"' in page


def test_only_bad_files_is_an_error_naming_them(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file("bad/a.png", b"")
    world.file("bad/b.jpg", b"nope")
    fails(world, capsys, ["--samples", "bad"], 2, "none of the 2 sample files", "'a.png'", "'b.jpg'")


def test_strict_turns_a_bad_file_into_an_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file("images/zero.png", b"")
    fails(world, capsys, [*IMAGES, "--strict"], 2, "'zero.png'", "empty file")


def test_decompression_bomb_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.image("huge.png", (100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    fails(world, capsys, [*IMAGES, "--strict"], 2, "'huge.png'", "decompression bomb")


def test_labels_file_missing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--labels", "labels.txt"], 2, "'labels.txt'")


def test_labels_file_bad_json(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file("labels.json", b"[1, 2,")
    fails(world, capsys, ["--labels", "labels.json"], 2, "'labels.json'", "not valid JSON")


def test_labels_json_not_a_list_of_strings(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file("labels.json", b'{"0": "cat"}')
    fails(world, capsys, ["--labels", "labels.json"], 2, "'labels.json'", "JSON list of strings")


# --- options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["--normalize", "0.5"], "--normalize '0.5'"),
        (["--layers", "conv9*"], "--layers 'conv9*'"),
        (["--max-channels", "0"], "--max-channels"),
        (["--input-size", "big"], "--input-size"),
        (["--colormap", "jet"], "--colormap"),
        (["--format", "pdf"], "--format"),
        (["--model", "torchvision:resnet18"], "--samples is required"),
        (["--frobnicate"], "--frobnicate"),
        (["--normalize", "0,0"], "--normalize '0,0'"),
        (["--normalize", "nan,1"], "--normalize 'nan,1'"),
        (["--normalize", "0.5,inf"], "--normalize '0.5,inf'"),
        (["--normalize", "0,-1"], "stds finite and above 0"),
        (["--top-k", "99999999999"], "top-k must be at most 1,000"),
        (["--input-size", "1000000"], "input-size must be at most 8,192"),
        (["--batch-size", "1000000000"], "batch-size must be at most"),
    ],
)
def test_bad_options(world: World, capsys: pytest.CaptureFixture[str], argv: list[str], culprit: str) -> None:
    fails(world, capsys, argv, 2, culprit)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--device", "cuda"], 2, "--device cuda", "no CUDA device")


# --- outputs ------------------------------------------------------------------------------------------


def test_output_folder_missing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", "no/such/folder/r.html", "--quiet"]) == 2
    assert "'no/such/folder/r.html'" in capsys.readouterr().err
    assert not (world.root / "no").exists()


def test_json_folder_missing_fails_before_the_model_runs(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--json", "no/such/r.json"], 2, "'no/such/r.json'", "does not exist")


def test_html_output_onto_a_folder(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", str(world.out), "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert world.report.read_text() == SENTINEL


def test_unwritable_output_location(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", "/proc/featviz-report.html", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'/proc/featviz-report.html'" in err and "Traceback" not in err


def test_ctrl_c_during_the_run_leaves_nothing_behind(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import featviz_report.pipelines.core as pipeline

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_predictions", interrupt)
    assert main(["-o", str(world.report), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert world.report.read_text() == SENTINEL
    assert [p.name for p in world.out.iterdir()] == ["report.html"]


def test_failure_while_writing_leaves_no_partial_file(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import featviz_report.render.outputs as outputs

    real = outputs.render_html

    def half_then_crash(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        stream = real(*args, **kwargs)  # type: ignore[arg-type]
        yield next(stream)
        raise RuntimeError("disk gremlin")

    monkeypatch.setattr(outputs, "render_html", half_then_crash)
    fails(world, capsys, [], 1, "internal error", "disk gremlin", "--debug")


# --- untrusted text in the page -----------------------------------------------------------------------

XSS = "<img src=x onerror=alert(1)>\"'\u2028"


def test_hostile_file_names_labels_and_title_are_inert(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.image(f"{XSS}.png")
    world.file("labels.txt", "\n".join(f"{XSS}{i}</script>" for i in range(10)).encode())
    page_text, _ = succeeds(world, capsys, [*IMAGES, "--labels", "labels.txt", "--title", f"</title>{XSS}"])
    page = read_page(world.report)
    assert "<img src=x" not in page_text and "</script>0" not in page_text
    assert any(img["alt"].startswith(f"Input sample 0: {XSS}.png") for img in page.images)
    data = [text for attrs, text in page.scripts if attrs.get("type") == "application/json"][0]
    assert "<" not in data and "\u2028" not in data


def test_hostile_layer_names_get_unique_safe_ids(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file(
        "xss_model.py",
        textwrap.dedent(
            """
            from torch import nn
            def build():
                net = nn.Sequential()
                net.add_module('<svg onload=alert(1)>', nn.Conv2d(3, 2, 3))
                net.add_module('<svg onload=alert(2)>', nn.Conv2d(2, 2, 3))
                net.add_module('"><b>x</b>', nn.Conv2d(2, 2, 3))
                return net
            """
        ).encode(),
    )
    page_text, _ = succeeds(world, capsys, ["--model", "xss_model:build", *IMAGES, "--input-size", "12"])
    page = read_page(world.report)
    assert "<svg onload" not in page_text and "<b>x</b>" not in page_text
    ids = [s["id"] for s in page.sections]
    assert ids == [
        "layer-~3Csvg~20onload~3Dalert~281~29~3E",
        "layer-~3Csvg~20onload~3Dalert~282~29~3E",
        "layer-~22~3E~3Cb~3Ex~3C~2Fb~3E",
    ]
    assert [s["data-layer"] for s in page.sections][2] == '"><b>x</b>'


# --- determinism --------------------------------------------------------------------------------------


def test_file_creation_order_does_not_change_the_report(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    names = ["b.png", "a.png", "sub/c.png", "A.png"]
    pixels = {n: np.random.default_rng(i).integers(0, 255, (12, 12), dtype=np.uint8) for i, n in enumerate(names)}
    reports = []
    for order, folder in ((names, "one"), (names[::-1], "two")):
        for name in order:
            (world.root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[name]).save(world.root / folder / name)
        out = world.root / f"{folder}.html"
        assert main(["--samples", folder, "-o", str(out), "--quiet"]) == 0
        reports.append(out.read_bytes())
    assert reports[0] == reports[1]


def test_a_skipped_file_is_warned_about_once_even_with_a_ranking_pass(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.file("images/zero.png", b"")
    _, err = succeeds(world, capsys, [*IMAGES, "--order", "mean"])
    assert err.count("skipped sample 'zero.png'") == 1


# --- comparisons and scans ----------------------------------------------------------------------------


def test_compare_checkpoint_missing_or_of_another_model(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    fails(world, capsys, ["--compare", "nowhere.pt"], 2, "--compare 'nowhere.pt'", "file not found")
    state = DigitsCNN().state_dict()
    state["fc2.weight"] = torch.zeros(3, 64)
    torch.save(state, world.root / "three.pt")
    fails(world, capsys, ["--compare", "three.pt"], 2, "wrong shape: fc2.weight (10×64 in", "3×64 in three.pt)")


@pytest.mark.parametrize(
    ("argv", "culprits"),
    [
        (["scan", "nowhere"], ("'nowhere'", "does not exist")),
        (["scan", "images", "--state", "state-file"], ("'state-file'", "state folder")),
        (["scan", "images", "--model", "torchvision:nonexistent_net"], ("nonexistent_net",)),
        (["scan", "images", "--cam", "gradcam"], ("--cam",)),  # report-only options are refused
    ],
)
def test_scan_failures_are_one_line(
    world: World, capsys: pytest.CaptureFixture[str], argv: list[str], culprits: tuple[str, ...]
) -> None:
    world.file("state-file", b"not a folder")
    fails(world, capsys, argv, 2, *culprits)


def test_scan_with_only_unreadable_files_names_the_problem(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (world.root / "images" / "good.png").unlink()
    world.file("images/broken.png", b"\x89PNG broken")
    fails(world, capsys, ["scan", "images", "--loader-workers", "0"], 2, "none of the 1 image files could be read")


def test_scan_state_of_another_scan_is_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    succeeds(world, capsys, ["scan", "images", "--state", "st", "--top-k", "2", "--loader-workers", "0"])
    world.report.write_text(SENTINEL)
    fails(world, capsys, ["scan", "images", "--state", "st", "--top-k", "3"], 2, "state of a different scan")


def test_output_selector_errors_are_one_short_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.file(
        "many_keys.py",
        textwrap.dedent(
            """
            import torch
            from torch import nn
            class ManyKeys(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(3, 2, 3)
                def forward(self, x):
                    y = self.conv(x).mean((2, 3))
                    out = {f"key{i}": y for i in range(3000)}
                    out["line\\nbreak"] = y
                    out["scalar"] = y.sum()
                    return out
            def build(): return ManyKeys()
            """
        ).encode(),
    )
    argv = ["--model", "many_keys:build", *IMAGES, "--input-size", "8"]
    error = fails(world, capsys, [*argv, "--output", "nope"], 2, "--output 'nope'", "'key0'", "more)")
    assert len(error) < 300
    fails(world, capsys, [*argv, "--output", "scalar"], 2, "--output 'scalar' is a scalar")
