"""Feature visualisation (--featviz): real reports, images read back from the JSON and fed to the model."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featviz_report import ReportConfig, build_report
from featviz_report.errors import ModelError
from featviz_report.featvis import optimise as fv
from featviz_report.featvis import stage as visualise
from featviz_report.featvis.cache import VisCache
from featviz_report.models.resolve import load_model
from featviz_report.pipelines.scan import scan_dataset
from tests.conftest import hooks_left, read_page
from tests.trained_nets import ONET_NORMALIZE, ONET_SIZE, natural_images, onet, onet_weights

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "samples" / "digits"


def _images(layer: dict) -> tuple[list[int], torch.Tensor, list[float]]:
    """A JSON layer's feature visualisations as stored: channels, uint8 N×C×H×W pixels, activations."""
    entries = layer["feature_visualization"]
    pixels = []
    for entry in entries:
        image = np.array(Image.open(io.BytesIO(base64.b64decode(entry["png"]))))
        pixels.append(torch.from_numpy(image[..., None] if image.ndim == 2 else image).permute(2, 0, 1))
    return [e["channel"] for e in entries], torch.stack(pixels), [e["activation"] for e in entries]


def _layer(report: dict, name: str) -> dict:
    return next(layer for layer in report["layers"] if layer["name"] == name)


def _channel_means(model: nn.Module, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Per sample and channel, the mean of ``module``'s output (read before any inplace op that follows)."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone().mean((2, 3))))
    with torch.no_grad():
        model(inputs)
    handle.remove()
    return seen[0]


@pytest.mark.slow
@pytest.mark.skipif(onet_weights() is None, reason="facenet-pytorch (dev set-up) is not installed")
def test_each_image_from_the_json_excites_its_channel_most_on_a_trained_face_detector(tmp_path: Path) -> None:
    """MTCNN's ONet (trained by others): every conv3 channel's image, decoded from the JSON exactly as
    stored, excites that channel more than any other channel's image and more than any natural photo."""
    samples = tmp_path / "photos"
    samples.mkdir()
    natural_images(samples, ONET_SIZE)
    model = onet()
    config = ReportConfig(
        featviz=("conv3",), featviz_steps=256, input_size=ONET_SIZE, normalize=ONET_NORMALIZE, output="2",
        cache_dir=str(tmp_path / "cache"), graph=False,
    )  # fmt: skip
    build_report(model, samples, tmp_path / "r.html", config, json_out=tmp_path / "r.json")
    layer = _layer(json.loads((tmp_path / "r.json").read_text()), "conv3")
    channels, pixels, activations = _images(layer)
    assert channels == list(range(64)) and pixels.shape == (64, 3, ONET_SIZE, ONET_SIZE)
    norm = ((0.5,) * 3, (0.50196,) * 3)
    reached = fv.activations_of(model, model.conv3, 0, pixels, norm, torch.device("cpu"), torch.float32)
    np.testing.assert_allclose(reached[range(64), channels].numpy(), activations, rtol=1e-4, atol=1e-5)
    own = reached[range(64), channels]
    others = reached.clone()
    others[range(64), channels] = -torch.inf
    assert bool((own > others.amax(0)[channels]).all()), (own - others.amax(0)[channels]).min()
    photos = torch.stack(
        [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in sorted(samples.iterdir())]
    )
    natural = _channel_means(model, model.conv3, (photos.float() / 255 - 0.5) / 0.50196)
    assert bool((own > natural.amax(0)[channels]).all())


def _demo_report(tmp_path: Path, name: str, cache: Path, **options: object) -> dict:
    settings: dict[str, object] = {"featviz": ("conv2", "fc2"), "featviz_steps": 48, "input_size": 28, **options}
    config = ReportConfig(cache_dir=str(cache), graph=False, **settings)  # type: ignore[arg-type]
    model = load_model("demo").module
    build_report(model, DIGITS, tmp_path / f"{name}.html", config, json_out=tmp_path / f"{name}.json")
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_images_are_deterministic_cached_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _demo_report(tmp_path, "a", tmp_path / "cache-a")
    again = _demo_report(tmp_path, "b", tmp_path / "cache-b")  # from nothing, in another cache: same images
    for name in ("conv2", "fc2"):  # the same images; their measured activation to float32's last bits (the
        # thread policy may run the two with different thread counts, which sums in another order)
        images, repeat = _layer(first, name)["feature_visualization"], _layer(again, name)["feature_visualization"]
        assert [{**e, "activation": None} for e in images] == [{**e, "activation": None} for e in repeat]
        assert [e["activation"] for e in images] == pytest.approx([e["activation"] for e in repeat], rel=1e-5)
    assert len(list((tmp_path / "cache-a").rglob("*.json"))) == 32 + 10
    assert first["feature_visualization_settings"]["steps"] == 48

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("optimised again although every image is cached")

    monkeypatch.setattr(visualise, "optimise_channels", refuse)
    cached = _demo_report(tmp_path, "c", tmp_path / "cache-a")
    assert _layer(cached, "conv2")["feature_visualization"] == _layer(first, "conv2")["feature_visualization"]
    with pytest.raises(ModelError, match="optimised again"):  # other settings: another key
        _demo_report(tmp_path, "d", tmp_path / "cache-a", max_channels=8, featviz_steps=49)


def test_json_images_are_pixel_space_at_the_input_size_and_their_activation_is_measured_on_them(
    tmp_path: Path,
) -> None:
    report = _demo_report(tmp_path, "a", tmp_path / "cache", max_channels=8)
    model = load_model("demo").module
    for name, count in (("conv2", 8), ("fc2", 8)):
        layer = _layer(report, name)
        channels, pixels, activations = _images(layer)
        assert channels == list(range(count)) and pixels.shape == (count, 1, 28, 28) and pixels.dtype == torch.uint8
        reached = fv.activations_of(model, getattr(model, name), 0, pixels, None, torch.device("cpu"), torch.float32)
        np.testing.assert_allclose(reached[range(count), channels].numpy(), activations, rtol=1e-4, atol=1e-5)
    page = read_page(tmp_path / "a.html")
    shown = [img for img in page.images if "the image optimised to excite it" in img.get("alt", "")]
    assert len(shown) == 16
    png = base64.b64decode(_layer(report, "conv2")["feature_visualization"][3]["png"])
    assert any(img["src"].endswith(base64.b64encode(png).decode()) and "channel 3:" in img["alt"] for img in shown)


class StopsEarly(nn.Module):
    """A layer after the visualised one that fails if it ever runs: the optimisation must stop before it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.after = nn.Conv2d(5, 2, 3, padding=1)
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.armed:
            raise RuntimeError("ran past the visualised layer")
        return self.after(x).mean((2, 3))


def test_the_forward_pass_stops_at_the_layer_and_the_model_is_left_as_found(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = StopsEarly().train()
    model.after.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.armed = True
    images = fv.optimise_channels(
        model,
        model.conv,
        0,
        [0, 1, 2, 3, 4],
        (3, 32, 32),
        None,
        torch.device("cpu"),
        torch.float32,
        fv.VisSettings(steps=8),
    )
    assert [i.channel for i in images] == [0, 1, 2, 3, 4] and images[0].pixels.shape == (32, 32, 3)
    assert model.training and model.conv.weight.requires_grad and not model.after.weight.requires_grad
    assert all(p.grad is None for p in model.parameters()) and not hooks_left(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_interrupt_leaves_only_whole_cache_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = VisCache(tmp_path / "cache")
    real_dump = json.dump

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put("ab" * 32, {"png": "", "activation": 1.0})
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    monkeypatch.setattr(json, "dump", real_dump)
    cache.put("ab" * 32, {"png": "", "activation": 1.0})
    assert cache.get("ab" * 32) == {"png": "", "activation": 1.0, "key": "ab" * 32}
    (tmp_path / "cache" / "ab" / f"{'ab' * 32}.json").write_text('{"png": "not base64!", "activation": 1')
    assert cache.get("ab" * 32) is None  # a broken entry is ignored and made again


def test_cli_featviz_in_reports_and_scans_and_a_glob_that_matches_nothing(tmp_path: Path) -> None:
    env_cache = ["--cache-dir", str(tmp_path / "cache")]
    common = [
        sys.executable,
        "-m",
        "featviz_report",
        "--featviz",
        "conv3",
        "--featviz-steps",
        "16",
        *env_cache,
        "--quiet",
    ]
    done = subprocess.run([*common, "-o", str(tmp_path / "r.html")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'class="featviz"' in (tmp_path / "r.html").read_text(encoding="utf-8")
    scan = [sys.executable, "-m", "featviz_report", "scan", str(DIGITS), "--featviz", "conv3", "--featviz-steps", "16"]
    scan += [*env_cache, "--quiet", "-o", str(tmp_path / "s.html"), "--json", str(tmp_path / "s.json")]
    done = subprocess.run(scan, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(_layer(json.loads((tmp_path / "s.json").read_text()), "conv3")["feature_visualization"]) == 64
    bad = subprocess.run(
        [*common[:3], "--featviz", "nope*", "-o", str(tmp_path / "x.html")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--featviz 'nope*' matches no layer of the model" in bad.stderr
    assert not (tmp_path / "x.html").exists()


def test_scan_feature_images_match_a_reports_for_the_same_model_and_settings(tmp_path: Path) -> None:
    config = ReportConfig(
        featviz=("conv2",), featviz_steps=16, cache_dir=str(tmp_path / "cache"), graph=False, max_channels=4
    )
    model = load_model("demo").module
    scan_dataset(model, [DIGITS], tmp_path / "s.html", replace(config, input_size=28), json_out=tmp_path / "s.json")
    layer = _layer(json.loads((tmp_path / "s.json").read_text()), "conv2")
    assert [e["channel"] for e in layer["feature_visualization"]] == [0, 1, 2, 3]
    html = (tmp_path / "s.html").read_text(encoding="utf-8")
    for channel in range(4):  # each card shows the channel's optimised image first, then its top images
        card = html.split(f'id="layer-conv2-channel-{channel}"')[1].split("</article>")[0]
        assert card.index('class="fv"') < card.index("Top image 1")


class NoGradients(nn.Module):
    """Runs for the report, but refuses inputs that need a gradient, as optimising an image does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise RuntimeError("this model is inference-only\nsecond line")
        return self.conv(x).mean((2, 3))


def test_a_model_that_cannot_be_optimised_through_is_a_one_line_model_error(tmp_path: Path) -> None:
    config = ReportConfig(featviz=("conv",), featviz_steps=4, input_size=16, cache_dir=str(tmp_path / "c"), graph=False)
    with pytest.raises(
        ModelError,
        match=r"^--featviz 'conv': optimising its images failed \(RuntimeError: this model is inference-only\)$",
    ):
        build_report(NoGradients(), DIGITS, tmp_path / "r.html", config)
    assert not (tmp_path / "r.html").exists()


class Normed(nn.Module):
    """A convolution with BatchNorm (a 0-d buffer, num_batches_tracked), then a head."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.act = act
        self.out = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.norm(self.conv(x)))).mean((2, 3))


def test_cached_images_are_checked_against_the_model_as_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BatchNorm model works; the same weights in another architecture, or a hand-edited entry, are
    not served from the cache: they are made again."""
    config = ReportConfig(featviz=("out",), featviz_steps=8, input_size=16, cache_dir=str(tmp_path / "c"), graph=False)
    torch.manual_seed(0)
    relu = Normed(nn.ReLU())
    build_report(relu, DIGITS, None, config)
    calls = []
    real = visualise.optimise_channels

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args[3])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(visualise, "optimise_channels", counted)
    build_report(relu, DIGITS, None, config)
    assert calls == []  # all cached
    tanh = Normed(nn.Tanh())
    tanh.load_state_dict(relu.state_dict())
    build_report(tanh, DIGITS, None, config)
    assert calls == [[0, 1]]  # another architecture: made again
    entry = next((tmp_path / "c").rglob("*.json"))
    forged = json.loads(entry.read_text())
    entry.write_text(json.dumps({**forged, "activation": forged["activation"] + 1.0}), encoding="utf-8")
    build_report(tanh, DIGITS, None, config)
    assert len(calls) == 2 and len(calls[1]) == 1  # the edited entry's channel only


class Twins(nn.Module):
    """Channels 0 and 1 compute the same thing from different seeds: whichever image ends lower is beaten
    by the other's, so at least one polishing round runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight[1], self.conv.bias[1] = self.conv.weight[0], self.conv.bias[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _counts(text: str) -> list[tuple[int, int]]:
    return [(int(d), int(t)) for d, t in re.findall(r"^featviz +\[[#.]+\] (\d+)/(\d+)", text, re.MULTILINE)]


def test_featviz_progress_counts_the_polishing_in_its_total_and_ends_at_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The counter's total includes each polishing round as it is decided: it never runs past the total
    (the demo's conv3 at 16 steps ended at 1688/1536) and ends exactly at total/total."""
    config = ReportConfig(featviz=("conv",), featviz_steps=16, input_size=16, graph=False, quiet=False)
    build_report(Twins(), DIGITS, None, replace(config, cache_dir=str(tmp_path / "a")))
    plain = _counts(capsys.readouterr().err)  # stderr is not a terminal: plain lines
    assert plain and all(done <= total for done, total in plain), plain
    assert plain[-1][0] == plain[-1][1] > 4 * 16, plain  # polishing ran and was counted in the total
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    build_report(Twins(), DIGITS, None, replace(config, cache_dir=str(tmp_path / "b")))
    lines = terminal.getvalue().replace("\r", "\n")
    redrawn = _counts(lines)  # a terminal redraws every count
    assert len(redrawn) > 16 and all(done <= total for done, total in redrawn), redrawn
    assert [done for done, _ in redrawn] == sorted(done for done, _ in redrawn)
    assert redrawn[-1] == plain[-1] and lines.count("done in") == 1


class _Blocks(nn.Module):
    """A stem, a Sequential container ending in a ReLU (so its output is no captured layer's), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_featviz_naming_a_container_captures_and_visualises_its_output(tmp_path: Path) -> None:
    """--featviz block, where block is a Sequential (not captured by default): its output is captured and
    visualised; the images read back from the JSON raise the container's own output as stored."""
    torch.manual_seed(0)
    model = _Blocks()
    config = ReportConfig(featviz=("block",), featviz_steps=32, cache_dir=str(tmp_path / "cache"), graph=False)
    report = build_report(model, torch.rand(2, 3, 32, 32), tmp_path / "r.html", config, json_out=tmp_path / "r.json")
    assert [layer.name for layer in report.layers] == ["stem", "block.0", "block.2", "block", "head"]  # as they ran
    data = json.loads((tmp_path / "r.json").read_text())
    assert [layer["name"] for layer in data["layers"] if "feature_visualization" in layer] == ["block"]
    layer = _layer(data, "block")
    assert layer["type"] == "Sequential" and layer["output_shape"] == [5, 32, 32]
    channels, pixels, activations = _images(layer)
    assert channels == list(range(5)) and pixels.shape == (5, 3, 32, 32)
    reached = _channel_means(model, model.block, pixels.float() / 255)[range(5), channels]
    np.testing.assert_allclose(reached.numpy(), activations, rtol=1e-4, atol=1e-5)
    grey = _channel_means(model, model.block, torch.full((1, 3, 32, 32), 0.5))[0, channels]
    assert bool((reached > grey).all()), (reached, grey)  # optimised: each above what a grey image gives
    section = read_page(tmp_path / "r.html").text.split('data-layer="block"', 1)[1].split("<section", 1)[0]
    assert 'class="featviz"' in section
