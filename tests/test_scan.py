"""Dataset scans: merged shards equal one process's scan, Ctrl-C then re-run resumes, torchrun with gloo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch import nn

from featviz_report import ReportConfig
from featviz_report.capture.accumulate import ChannelAccumulator
from featviz_report.capture.job import open_job
from featviz_report.capture.samples import find_images, preprocess
from featviz_report.errors import InputError
from featviz_report.models.resolve import load_model
from featviz_report.runtime.device import on_device
from featviz_report.runtime.progress import Progress
from featviz_report.scan.dataset import ImageFiles
from featviz_report.scan.run import ScanResult, run_scan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 digit images: the ten shipped ones shifted and flipped, plus one that is not an image."""
    folder = tmp_path_factory.mktemp("digits")
    for path in sorted((ROOT / "samples" / "digits").glob("*.png")):
        pixels = np.asarray(Image.open(path))
        for shift in range(3):
            for flip in (False, True):
                moved = np.roll(pixels, shift - 1, axis=1)
                Image.fromarray(moved[:, ::-1] if flip else moved).save(folder / f"{path.stem}-{shift}{'f' * flip}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _run(paths: list[Path], state: Path | None = None, top_k: int = 3) -> ScanResult:
    """The demo model's scan of ``paths``, as one process."""
    model = load_model("demo").module
    config = ReportConfig(top_k=top_k, batch_size=7, input_size=28)
    job = open_job(model, ImageFiles(paths, preprocess(model, config)), config, Progress(enabled=False))
    with on_device(model, job.device):
        return run_scan(job, state)


def _scan(folder: Path, state: Path | None = None, top_k: int = 3) -> dict[str, ChannelAccumulator]:
    result = _run(find_images([folder]), state, top_k)
    assert result.images == 60 and result.skipped == 1
    return result.accumulators


def _same(a: dict[str, ChannelAccumulator], b: dict[str, ChannelAccumulator]) -> None:
    assert list(a) == list(b) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for name in a:
        np.testing.assert_array_equal(a[name].top.sample, b[name].top.sample, err_msg=name)
        np.testing.assert_array_equal(a[name].top.position, b[name].top.position, err_msg=name)
        np.testing.assert_allclose(a[name].top.value, b[name].top.value, rtol=1e-5, err_msg=name)
        for key in ("count", "zeros", "positives", "minimum", "maximum"):
            np.testing.assert_allclose(getattr(a[name], key), getattr(b[name], key), rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(a[name].mean, b[name].mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a[name].m2, b[name].m2, rtol=1e-4, atol=1e-4)


def test_merged_shards_equal_one_scan_whatever_the_split(digits: Path) -> None:
    whole = _scan(digits)
    paths = find_images([digits])
    halves = []
    for rank in range(2):  # what two torchrun ranks compute, then merge
        part = _run([p for i, p in enumerate(paths) if i % 2 == rank])
        for accumulator in part.accumulators.values():  # shard positions → dataset indices
            accumulator.top.sample = np.where(accumulator.top.sample >= 0, accumulator.top.sample * 2 + rank, -1)
        halves.append(part.accumulators)
    for name, accumulator in halves[0].items():
        accumulator.merge(halves[1][name])
    _same(whole, halves[0])


def test_ctrl_c_saves_the_shard_and_a_rerun_resumes_to_the_same_result(
    digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featviz_report.scan import run as scan

    fold, batches = scan._fold, []

    def interrupted_after_two(*args: object) -> None:
        fold(*args)  # type: ignore[arg-type]
        batches.append(1)
        if len(batches) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: handled between batches

    monkeypatch.setattr(scan, "_fold", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        _scan(digits, tmp_path)
    monkeypatch.setattr(scan, "_fold", fold)
    saved = np.load(tmp_path / "rank-0-of-1.npz")
    assert json.loads(bytes(saved["meta"]).decode())["done"] == 14  # two batches of 7
    _same(_scan(digits), _scan(digits, tmp_path))
    with pytest.raises(InputError, match="state of a different scan"):
        _scan(digits, tmp_path, top_k=5)


def test_a_scan_places_the_model_once_and_hashes_its_weights_once(
    digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One way through (issue #28): the saved state and the feature-visualisation cache both key on the weights,
    hashed once; the model goes to the device for the scan, the fields, the graph and the images, and back once."""
    from featviz_report.capture import job
    from featviz_report.pipelines.scan import scan_dataset

    hashed: list[str] = []
    digest = job.weights_digest

    def hashing(*args: Any) -> str:
        hashed.append(digest(*args))
        return hashed[-1]

    monkeypatch.setattr(job, "weights_digest", hashing)
    model = load_model("demo").module
    moves: list[tuple[object, ...]] = []
    to = model.to

    def moving(*args: Any, **kwargs: Any) -> nn.Module:
        moves.append(args)
        return to(*args, **kwargs)

    monkeypatch.setattr(model, "to", moving)
    config = ReportConfig(top_k=3, batch_size=7, input_size=28, featviz=("conv1",), featviz_steps=2, quiet=True)
    config = replace(config, cache_dir=str(tmp_path / "cache"), loader_workers=0)
    report = scan_dataset(model, [digits], config=config, state=tmp_path / "state")
    assert len(hashed) == 1 and len(moves) == 2, (hashed, moves)  # there and back
    assert report is not None and report.graph is not None and report.graph.overview is not None
    conv1 = next(layer for layer in report.layers if layer.name == "conv1")
    assert conv1.feature_images and conv1.channels.top.box is not None


@pytest.mark.slow
def test_torchrun_two_ranks_with_gloo_equal_one_process(digits: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    common = ["scan", str(digits), "--model", "demo", "--top-k", "3", "--batch-size", "7", "--device", "cpu"]
    common += ["--loader-workers", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher in (
        ("one", [sys.executable, "-m", "featviz_report"]),
        ("two", [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "featviz_report"]),
    ):
        argv = [*launcher, *common, "-o", str(tmp_path / f"{name}.html"), "--json", str(tmp_path / f"{name}.json")]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["dataset"]["processes"] == 1 and two["dataset"]["processes"] == 2
    assert two["dataset"]["images"] == one["dataset"]["images"] == 60 and two["dataset"]["skipped"] == 1
    assert two["dataset"]["files"] == one["dataset"]["files"]
    for a, b in zip(one["layers"], two["layers"]):
        tops = [[(p["sample"], p["row"], p["col"]) for p in channel] for channel in a["channels"]["top"]]
        assert tops == [[(p["sample"], p["row"], p["col"]) for p in channel] for channel in b["channels"]["top"]]
        np.testing.assert_allclose(a["channels"]["mean"], b["channels"]["mean"], rtol=1e-4, atol=1e-6)
        assert a["stats"]["dead_channels"] == b["stats"]["dead_channels"]
    assert "the 3 images where it peaked highest" in (tmp_path / "two.html").read_text(encoding="utf-8")
