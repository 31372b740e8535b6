"""outputs.py: outputs are checked before any work, appear together or not at all, and never cost the
user a file: folder reports replace only what they wrote, outputs never overwrite inputs, NaN is data."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_page
from PIL import Image
from torch import nn

from featviz_report.cli import main
from featviz_report.render.outputs import MANIFEST

DIVERGED = """
import torch
from torch import nn

class Diverged(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight[0, 0, 0, 0] = float("nan")
    def forward(self, x):
        y = self.conv(x)
        y = y / (y - y)  # every value NaN or ±Inf
        return self.fc(y.mean((2, 3)))

def build():
    return Diverged()
"""


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a samples folder of three images and a diverging model's factory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "diverged.py").write_text(textwrap.dedent(DIVERGED))
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    return tmp_path


def run(*argv: str) -> tuple[int, str]:
    import sys

    err = sys.stderr
    code = main([*argv, "--quiet"])
    return code, err.getvalue() if hasattr(err, "getvalue") else ""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *culprits: str) -> str:
    code = main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("featviz-report: error: ") and err.count("\n") == 1, err
    for culprit in culprits:
        assert culprit in err, err
    return err


# --- folder reports ----------------------------------------------------------------------------------


def test_a_folder_report_never_touches_files_it_did_not_write(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = here / "site"
    for name, text in {
        "thesis.tex": "mine",
        "data/run.csv": "1,2",
        "img/figure.png": "not ours",
        "a/index.md": "x",
    }.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    theirs = snapshot(site)
    assert main(["--format", "dir", "-o", "site", "--quiet"]) == 0, capsys.readouterr().err
    first = set(json.loads((site / MANIFEST).read_text())["files"])
    assert "index.html" in first and MANIFEST not in first and any(f.startswith("img/") for f in first)
    assert all(snapshot(site)[name] == data for name, data in theirs.items())
    assert main(["--format", "dir", "-o", "site", "--colormap", "magma", "--quiet"]) == 0  # other images
    second = set(json.loads((site / MANIFEST).read_text())["files"])
    now = snapshot(site)
    assert all(now[name] == data for name, data in theirs.items())
    assert set(now) == set(theirs) | second | {MANIFEST}, "the first report's images are gone, nothing else"
    assert (
        not [p for p in site.rglob("*.tmp")] and sorted(p.name for p in here.iterdir() if p.name.startswith(".")) == []
    )


def test_a_folder_whose_index_html_is_someone_elses_is_refused(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "site").mkdir()
    (here / "site" / "index.html").write_text("<h1>my homepage</h1>")
    before = snapshot(here / "site")
    refused(capsys, ["--format", "dir", "-o", "site"], "'site'", "did not write")
    assert snapshot(here / "site") == before


def _forge(site: Path, files: dict[str, list[str]]) -> None:
    (site / MANIFEST).write_text(json.dumps({"generator": "featviz-report", "files": files}))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_forged_manifest_cannot_make_a_user_file_ours(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, outside = here / "site", here / "outside"
    for folder in (site, outside):
        folder.mkdir()
    (site / "notes.txt").write_text("mine")
    (site / "results.json").write_text('{"mine": 1}')
    (outside / "victim.json").write_text("precious")
    (site / "up").symlink_to(outside)  # a path through a link leaves the folder
    (site / "sub").mkdir()
    (site / "sub" / "deep.json").write_text("mine too")
    _forge(site, {
        "notes.txt": [_sha(site / "notes.txt")],  # not a name a report writes
        "results.json": ["0" * 64],  # a sidecar's name, but not the content it wrote
        "up/victim.json": [_sha(outside / "victim.json")],  # through a link
        "sub/deep.json": [_sha(site / "sub" / "deep.json")],  # deeper than a sidecar lives
        "img": [], "../outside/victim.json": [],
    })  # fmt: skip
    before = {**snapshot(site), **{f"outside/{k}": v for k, v in snapshot(outside).items()}}
    assert main(["--format", "dir", "-o", "site", "--quiet"]) == 0, capsys.readouterr().err
    after = {**snapshot(site), **{f"outside/{k}": v for k, v in snapshot(outside).items()}}
    assert all(after.get(name) == data for name, data in before.items() if name != MANIFEST)


def test_a_folder_report_never_writes_through_links_or_into_samples(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "site").mkdir()
    (here / "mine").mkdir()
    (here / "site" / "img").symlink_to(here / "mine")
    refused(capsys, ["--format", "dir", "-o", "site"], "'site/img' is not a folder of the report's own")
    assert list((here / "mine").iterdir()) == []
    refused(capsys, ["--format", "dir", "-o", "imgs", "--samples", "imgs"], "is the samples folder")
    refused(capsys, ["--format", "dir", "-o", "imgs/report", "--samples", "imgs"], "inside the samples folder")
    assert sorted(p.name for p in (here / "imgs").iterdir()) == ["0.png", "1.png", "2.png"]


SPY = """
from pathlib import Path
from torch import nn

def build():
    Path("built").write_text("the model was loaded")
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
"""


@pytest.mark.parametrize(
    ("out", "samples", "how"),
    [
        (".", "imgs", "holds"),  # the report's img/ would be the samples folder itself
        ("./imgs/../imgs/", "imgs", "is"),
        ("{here}/imgs/", "imgs", "is"),
        ("../{name}", "imgs", "holds"),
        ("view/report", "imgs", "is inside"),  # through a link to the samples
        (".", "view", "holds"),  # the samples through a link
        ("{here}", "{here}/imgs/./", "holds"),
    ],
)
@pytest.mark.parametrize("command", [[], ["scan"]])
def test_a_report_folder_that_overlaps_a_samples_folder_is_refused_before_the_model_runs(
    here: Path, capsys: pytest.CaptureFixture[str], command: list[str], out: str, samples: str, how: str
) -> None:
    (here / "spy.py").write_text(SPY)
    (here / "view").symlink_to(here / "imgs")
    out, samples = (s.format(here=here, name=here.name) for s in (out, samples))
    before = snapshot(here)
    argv = ["--samples", samples] if not command else [samples]
    err = refused(capsys, [*command, *argv, "--model", "spy:build", "--format", "dir", "-o", out, "--json", "r.json"],
                  f"{how} the samples folder", "would become samples")  # fmt: skip
    assert f"-o {out.rstrip('/')!r}" in err or out.endswith("/"), err
    assert snapshot(here) == before, "nothing written, the model never built"
    assert sorted(p.name for p in here.iterdir()) == ["diverged.py", "imgs", "spy.py", "view"]


def test_the_python_api_and_a_recorder_refuse_a_folder_that_holds_the_samples(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featviz_report import Recorder, ReportConfig, build_report, compare_checkpoints, scan_dataset
    from featviz_report.errors import UsageError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    config = ReportConfig(format="dir", quiet=True, input_size=16)
    before = snapshot(here)
    for call in (
        lambda: build_report(model, str(here / "imgs"), out=here, config=config),
        lambda: build_report(model, [here / "imgs" / "0.png", "imgs"], out="imgs/../", config=config),
        lambda: compare_checkpoints(model, model, "imgs", out=".", config=config),
        lambda: scan_dataset(model, ["imgs"], out=here, config=config),
    ):
        with pytest.raises(UsageError, match="holds the samples folder"):
            call()
    with pytest.raises(UsageError, match="is inside the samples folder"):
        Recorder(here / "imgs" / "site", here / "imgs", config).record(model, 1)
    assert snapshot(here) == before and not (here / "imgs" / "site").exists(), "not even an empty site folder"
    Recorder(here / "run", here / "run" / "samples", config)  # a site may keep its samples beside its steps


def test_an_output_that_is_a_link_replaces_what_it_points_at(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "reports").mkdir()
    (here / "reports" / "latest.html").write_text("old")
    (here / "r.html").symlink_to(here / "reports" / "latest.html")
    assert main(["-o", "r.html", "--quiet"]) == 0, capsys.readouterr().err
    assert (here / "r.html").is_symlink() and read_page(here / "reports" / "latest.html").sections


def test_a_report_folder_can_be_rebuilt_from_inside_it(here: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (here / "site").mkdir()
    (here / "site" / "notes.txt").write_text("mine")
    monkeypatch.chdir(here / "site")
    for _ in range(2):
        assert main(["--format", "dir", "-o", ".", "--samples", "../imgs", "--quiet"]) == 0, capsys.readouterr().err
    assert (here / "site" / "notes.txt").read_text() == "mine" and (here / "site" / "index.html").is_file()
    assert sorted(p.name for p in here.iterdir()) == ["diverged.py", "imgs", "site"], "no temporary folder left"


def test_a_sidecar_inside_the_folder_belongs_to_the_report(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--format", "dir", "-o", "site", "--json", "site/report.json", "--quiet"]) == 0
    assert "report.json" in json.loads((here / "site" / MANIFEST).read_text())["files"]
    assert main(["--format", "dir", "-o", "site", "--quiet"]) == 0
    assert not (here / "site" / "report.json").exists(), "a stale sidecar of the old report would mislead"
    capsys.readouterr()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_are_created_as_the_umask_says(here: Path, capsys: pytest.CaptureFixture[str], umask: int) -> None:
    old = os.umask(umask)
    try:
        assert main(["-o", "r.html", "--json", "r.json", "--quiet"]) == 0
        assert main(["--format", "dir", "-o", "site", "--quiet"]) == 0
    finally:
        os.umask(old)
    files = [here / "r.html", here / "r.json", *(p for p in (here / "site").rglob("*"))]
    for path in files:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    capsys.readouterr()


# --- a diverged model --------------------------------------------------------------------------------


def _strict_json(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON number {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("fmt", ["html", "dir"])
def test_a_diverged_model_gets_its_report_and_strict_json(
    here: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    out = "r.html" if fmt == "html" else "site"
    argv = ["--model", "diverged:build", "--samples", "imgs", "--input-size", "16", "--format", fmt, "-o", out]
    assert main([*argv, "--json", "r.json", "--quiet"]) == 0, capsys.readouterr().err
    data = _strict_json(here / "r.json")
    conv = data["layers"][0]
    assert conv["stats"]["nan"] == 3 * 14 * 14  # the channel whose weights hold a NaN
    assert data["layers"][1]["stats"]["nan"] == 3 * 3  # every logit
    assert all(s["prediction"] is None or s["prediction"]["probability"] is None for s in data["samples"])
    page_file = here / out if fmt == "html" else here / out / "index.html"
    assert [s["data-layer"] for s in read_page(page_file).sections] == ["conv", "fc"]
    assert "1 non-finite weights (NaN/Inf) drawn as 0" in page_file.read_text()


def test_a_failure_after_the_page_is_rendered_leaves_every_old_output(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (here / "r.html").write_text("old page")
    (here / "r.json").write_text("old json")
    import featviz_report.render.outputs as outputs

    def crash(*args: object) -> None:
        raise RuntimeError("sidecar gremlin")

    monkeypatch.setattr(outputs, "json_text", crash)
    assert main(["-o", "r.html", "--json", "r.json", "--quiet"]) == 1
    assert "sidecar gremlin" in capsys.readouterr().err
    assert (here / "r.html").read_text() == "old page" and (here / "r.json").read_text() == "old json"
    assert sorted(p.name for p in here.iterdir()) == ["diverged.py", "imgs", "r.html", "r.json"]


# --- outputs that are inputs, or not files ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--samples", "imgs", "-o", "imgs/0.png"], "-o 'imgs/0.png' is also an input (--samples)"),
        (["--samples", "imgs/1.png", "imgs/2.png", "-o", "imgs/2.png"], "(--samples)"),
        (["--samples", "imgs", "-o", "imgs/new.png"], "(--samples)"),  # the next run would read it as a sample
        (["--model", "diverged:build", "--samples", "imgs", "--weights", "w.pt", "--json", "w.pt"], "(--weights)"),
        (["--labels", "labels.txt", "--json", "labels.txt"], "(--labels)"),
        (["--samples", "imgs", "-o", "link.png"], "(--samples)"),  # a symlink to a sample
        (["-o", "same.html", "--json", "same.html"], "the same file"),
        (["--format", "dir", "-o", "imgs", "--samples", "imgs/0.png", "--json", "imgs/index.html"], "own file"),
    ],
)
def test_an_output_that_is_an_input_is_refused_before_the_model_runs(
    here: Path, capsys: pytest.CaptureFixture[str], argv: list[str], culprit: str
) -> None:
    torch.save({}, here / "w.pt")
    (here / "labels.txt").write_text("a\nb\n")
    (here / "link.png").symlink_to(here / "imgs" / "1.png")
    (here / "same.html").write_text("keep")
    before = snapshot(here)
    refused(capsys, argv, culprit)
    assert snapshot(here) == before


def test_an_output_that_is_not_a_regular_file_is_refused(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(here / "pipe")
    refused(capsys, ["-o", "pipe"], "'pipe' is not a regular file")
    refused(capsys, ["--json", "/dev/null"], "'/dev/null' is not a regular file")
    (here / "stdout").symlink_to("/dev/stdout")  # whatever stdout is redirected to, even a regular file
    refused(capsys, ["-o", "stdout"], "'stdout' is not a regular file")
    refused(capsys, ["-o", "/dev/stdout"], "'/dev/stdout' is not a regular file")
    assert os.path.islink("/dev/stdout")
    assert stat.S_ISFIFO((here / "pipe").stat().st_mode)
