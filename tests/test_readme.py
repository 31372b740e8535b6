"""Every example in the README runs as written, so none can rot.

The shell and Python blocks are read from README.md itself. They run in a folder laid out as a user's:
the shipped photos under each folder name an example uses (``photos/``, ``val/``, ``imgs/``...), the
repository's ``samples/``, random-weights files under the names the examples give (``resnet50.pth``,
``convnext_tiny.safetensors``...), an exported archive, a ``mypackage.models:build_net``. The stand-ins
that keep this fast: images of 64 px (``--input-size 64``; the demo and the exported digits model keep their
28 px), 8 feature-visualisation steps, ``torchrun`` on 2 processes, and in Python the names an example
leaves to the reader (``model_a``, ``detector``, ``train_one_epoch``) defined as small real things. The
set-up commands (``make``, ``pip install``) are what runs this file and are not run again.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from archives import export_demo
from torch import nn

from featviz_report.cli import main

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "samples" / "photos"
SETUP = ("make ", "pip install ")
FOLDERS = ("photos", "val", "imgs", "val_samples")
WEIGHTS = {  # the README's file name → the architecture it must fit, made with random weights
    "resnet50.pth": "torchvision:resnet50",
    "r50.pth": "torchvision:resnet50",
    "r18.pth": "torchvision:resnet18",
    "old.pth": "torchvision:resnet18",
    "new.pth": "torchvision:resnet18",
    "convnext_tiny.safetensors": "timm:convnext_tiny",
}
BUILD_NET = """
from torch import nn


def build_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
"""


def _blocks(language: str) -> Iterator[tuple[int, str]]:
    """Each fenced ``language`` block of the README: (its first line's number, its text)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == f"```{language}":
            start = number
        elif start is not None and line.strip() == "```":
            yield start + 1, "\n".join(lines[start : number - 1])
            start = None


def shell_commands() -> list[tuple[str, list[str]]]:
    """Every command of the README's shell blocks as words (continued lines joined, comments dropped)."""
    commands = []
    for first, text in _blocks("sh"):
        for offset, line in enumerate(text.replace("\\\n", " ").splitlines()):
            words = shlex.split(line, comments=True)
            if words and not line.startswith(SETUP):
                commands.append((f"line {first + offset}: {' '.join(words)[:70]}", words))
    return commands


def _weights(spec: str, path: Path) -> None:
    from featviz_report.models.resolve import load_model

    torch.manual_seed(0)
    state = load_model(spec).module.state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything the README's examples name, made once."""
    folder = tmp_path_factory.mktemp("inputs")
    for name in FOLDERS:
        shutil.copytree(PHOTOS, folder / name)
    shutil.copytree(ROOT / "samples", folder / "samples")
    for name, spec in WEIGHTS.items():
        _weights(spec, folder / name)
    export_demo(folder / "exported.pt2")
    (folder / "mypackage").mkdir()
    (folder / "mypackage" / "__init__.py").write_text("")
    (folder / "mypackage" / "models.py").write_text(BUILD_NET)
    photos = sorted(PHOTOS.iterdir())
    shutil.copy(photos[0], folder / "a.png")
    shutil.copy(photos[1], folder / "b.jpg")
    return folder


@pytest.fixture
def home(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder of their own for each example, linking to the inputs, as the working directory."""
    for entry in inputs.iterdir():
        (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _small(words: list[str]) -> list[str]:
    """The stand-ins' options: 64 px images for models of natural images, 8 feature-visualisation steps."""
    extra = []
    model = words[words.index("--model") + 1] if "--model" in words else ""
    if model and not model.endswith(".pt2"):
        extra += ["--input-size", "64"]
    if "--featviz" in words:
        extra += ["--featviz-steps", "8"]
    return extra


def _output(words: list[str]) -> Path:
    return Path(words[words.index("-o") + 1])


def test_the_readme_has_examples_to_run() -> None:
    commands = [words for _, words in shell_commands()]
    assert len(commands) >= 10 and all(words[0] in {"featviz-report", "python", "torchrun"} for words in commands)
    assert sum(1 for _ in _blocks("python")) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("words", [w for _, w in shell_commands()], ids=[i for i, _ in shell_commands()])
def test_a_readme_command_runs_as_written(home: Path, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = _output(words)
    if words[0] == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", *words[1:]]
        command[command.index("--nproc-per-node") + 1] = "2"  # this machine's cores
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(command + _small(words), capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        argv = words[1:] if words[0] == "featviz-report" else words[3:]  # python -m featviz_report ...
        assert words[0] == "featviz-report" or words[:3] == ["python", "-m", "featviz_report"], words
        code = main(argv + _small(words))
        assert code == 0, capsys.readouterr().err[-2000:]
    page = out / "index.html" if out.is_dir() else out
    assert "</html>" in page.read_text(encoding="utf-8")


class Detector(nn.Module):
    """A small detector-shaped model: a dict of boxes and class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.boxes, self.logits = nn.Linear(8, 4), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {"boxes": self.boxes(features), "logits": self.logits(features)}


@pytest.mark.slow
@pytest.mark.parametrize("first", [n for n, _ in _blocks("python")], ids=lambda n: f"line {n}")
def test_a_readme_python_example_runs_as_written(home: Path, first: int) -> None:
    import torchvision

    text = dict(_blocks("python"))[first]
    torch.manual_seed(0)
    names = {
        "model_a": torchvision.models.resnet18(),
        "model_b": torchvision.models.resnet18(),
        "detector": Detector(),
        "model": torchvision.models.resnet18(),
        "epochs": 6,
        "train_one_epoch": lambda model: None,
    }
    exec(compile(text, f"README.md line {first}", "exec"), names)  # noqa: S102 - the README's own example
    written = re.findall(r'out="([^"]+)"|Recorder\("([^"]+)"', text)
    assert written
    for groups in written:
        target = home / next(g for g in groups if g)
        page = target / "index.html" if target.is_dir() else target
        assert "</html>" in page.read_text(encoding="utf-8")
