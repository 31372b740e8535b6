"""featviz-report's feature visualisation against two PyPI peers, torch-lucent and horama, side by side.

Times :func:`featviz_report.featvis.optimise.optimise_channels` (every channel in one batched call, under
``low_precision``'s autocast: bfloat16 where the CPU computes it natively, else float32) against torch-lucent 0.1.8
(``lucent.optvis.render.render_vis``, Lucid's Fourier image and transforms, Adam at 0.05) and horama 0.3.0
(``horama.fourier``, NAdam at 1.0 on random crops), which optimise one channel per call, so they run one channel
after another, and against torch-lucent's batched mode (``lucent-batch``: one ``render_vis`` call optimising
``--channels`` images at once, ``param.image(side, batch=N)`` and the sum of ``objectives.channel(layer, C,
batch=i)``; lucent draws one transformation per step for the whole batch, and row ``i``'s loss depends on its own
image only). Four workloads: featviz's demo model (a digits CNN, 1×28×28 grey, no normalisation), layer ``conv2``
(32 channels); ``torchvision.models.resnet18(weights=None).eval()`` (random weights: the timing does not depend on
them), layer ``layer2`` (128 channels, ``resnet18``) or ``layer3`` (256 channels, ``resnet18-layer3``), at 3×224×224
with ImageNet normalisation; and ``onet``: a real trained network, MTCNN's ONet face detector as
``tests/trained_nets.py`` declares it (facenet-pytorch's weights), layer ``conv3`` (64 channels), at 3×48×48 with
facenet-pytorch's normalisation ``(x - 0.5) / 0.50196`` on every colour channel. Every contender gets the same
model, image size, ``--steps``, channels (``0 .. --channels - 1``), ``torch.set_num_threads(2)`` and
``torch.manual_seed(0)`` (and ``numpy`` seed 0: lucent draws its transforms from numpy).

Each measurement is a fresh process: the peers run in ``bench/.venv-peers`` (``bench/peers_env.sh`` makes it: lucent
pins kornia<=0.4.1 and an old torch, so it shares this venv's torch through a ``.pth``), featviz in the Python that
runs this script. A run's time is in-process: from the start of the optimisation to the final images, all channels,
divided by the channel count (interpreter start-up, imports and the model excluded); featviz optimises every channel
of the layer in one call, as a report does, lucent and horama the first ``--channels`` one after another (their time
per channel does not depend on which) and lucent-batch the first ``--channels`` in one call (its time per channel
falls as the batch grows: ``--channels 64`` is ONet's whole layer); activations are compared on those same first
channels; the table shows the median over ``--repeat`` runs, interleaved round-robin (featviz, lucent, lucent-batch,
horama, featviz, ...). Each final image is quantised to 8 bits in pixel space ([0, 1] → 0..255, rounded) and
measured after the run, untimed, by :func:`featviz_report.featvis.optimise.activations_of` (the channel's mean over
positions of the layer's output, the model's normalisation applied): the table shows the mean over channels. Other
processes spoil CPU timings (two threads on a shared machine stall far more than their share), so each run also
records how many cores the rest of the machine kept busy meanwhile (``/proc/stat`` less the run's own CPU time); the
table warns above 0.2 core. ``--wait-quiet N`` waits up to N s before each run for the machine to fall quiet (under
0.1 core busy elsewhere), and runs a run that shared it again (up to 3 times).

How each peer is driven:

- lucent: objective ``"conv2:C"`` / ``"layer2:C"`` / ``"layer3:C"`` / ``"conv3:C"`` (its ``hook_model`` names
  modules by their path joined with ``_``: ``conv2``, ``layer2``, ``layer3``, ``conv3``); lucent-batch the same
  with ``batch=N`` and one ``channel`` objective per row, summed; ``param.image(side)`` (``channels=1`` for the
  grey digits, which also turns its colour decorrelation off), its standard transforms, ``preprocess=True`` on
  resnet18 (ImageNet normalisation) and ``False`` on the demo and ONet; ``fixed_image_size=side`` on the demo
  (28) and ONet (48), or lucent would upsample the image to 224² before the model. ``preprocess=True`` can
  only mean ImageNet's normalisation, so ONet's goes in as one more transform after lucent's standard ones,
  ``(x - 0.5) / 0.50196``: the place and order ``preprocess=True`` gives ImageNet's (after jitter, scale and
  rotation, before the upsampling back to 48²), with the model and so ``hook_model``'s names untouched (a
  normalising wrapper module would rename ``conv3`` to ``<attribute>_conv3``). It runs the whole model each
  step and computes the weights' gradients too (so does horama with this objective: neither freezes the
  parameters).
- horama: objective = mean of channel C of the layer's output, taken by a forward hook (the whole model
  runs); ``image_size = model_input_size`` = the model's input side; ``crops_per_iteration=2`` (1 crashes in
  horama 0.3.0: ``optimization_step`` squeezes the crop axis away and ``F.interpolate`` then fails). horama's
  image is hard-wired to 3 channels: on the demo the objective sees ``x.mean(1, keepdim=True)`` and the final
  grey image is that mean. The objective gets horama's image in its ``values_range`` with no normalisation of
  ours: on resnet18 its default (-2.5, 2.5), standing in for a normalised input; on the demo (0, 1), the
  digits CNN's own pixel range; on ONet, whose normalisation is the same on every colour channel, exactly the
  normalised image of [0, 1] pixels, ((0 - 0.5) / 0.50196, (1 - 0.5) / 0.50196) ≈ (-0.996, 0.996), so what
  horama optimises is what the 8-bit image measures (up to rounding). Its final image is a sigmoid scaled
  into that range, so pixels are ``(image - low) / (high - low)``, and the 8-bit image is measured with the
  model's normalisation like the others: on resnet18 the model sees about 0.87 × what horama optimised
  (+0.07), as (-2.5, 2.5) maps onto [0, 1] and ImageNet's normalisation then spans about (-2.1, 2.6). Its
  crops are 25-30 % of the image's side, resized to the model's input (its default ``box_size``), so with
  ``image_size`` equal to the input side each step sees a magnified part of the image.
- featviz: ``optimise_channels(..., VisSettings(steps=--steps), autocast=low_precision(...))``; its forward
  pass stops at the layer, and each step sees a random half-side window of every image (at four times the
  step size, as a step sees a quarter of the image).

ONet's ``forward`` returns a tuple (box, landmarks, probability): lucent's and horama's forward hooks only need
``conv3``'s output, and featviz's forward pass stops at the layer. ``tests/trained_nets.py`` is loaded by its
path, not as ``tests.trained_nets``: horama 0.3.0's wheel installs a top-level ``tests`` package of its own
into ``bench/.venv-peers``, which shadows the repository's ``tests`` (a namespace package, no
``__init__.py``) whatever the order on ``sys.path``. It needs only torch, numpy and PIL (shared from
``.venv``), and finds ONet's weights in ``.venv``'s facenet-pytorch through the same ``.pth``.

``--save DIR`` also keeps the pictures: each run writes its final 8-bit images of channels
``0 .. --channels - 1`` as one strip, ``DIR/<workload>-<contender>.png`` (left to right, each ×3 nearest
neighbour, 2 px white gaps; the last of ``--repeat`` runs), and after each workload the parent composes
``DIR/<workload>-side-by-side.png``: one labelled row per contender, channel numbers above the columns.

The demo's ReLUs are inplace, so the tensor a forward hook on ``conv2`` keeps is rewritten by ``relu2``:
every contender gets the demo with ``inplace = False`` on its ReLUs, so lucent's and horama's hooks see
``conv2``'s own output, the one featviz optimises and measures.

Run from the repository root, after ``bench/peers_env.sh`` (a benchmark, not a test; numbers vary):
``.venv/bin/python -m bench.featvis_compare [--steps 64] [--channels 8] [--repeat 1] [--workloads demo,resnet18]
[--skip lucent,lucent-batch,horama] [--wait-quiet 600] [--save DIR]`` (``--workloads onet`` for ONet,
``resnet18-layer3`` for layer3; the default leaves them out). The README's ``docs/featviz-peers.png``:
``--workloads onet --steps 512 --channels 8 --save DIR``. A single run, which prints its ``name=value`` figures:
``bench/.venv-peers/bin/python -m bench.featvis_compare --worker lucent --workload resnet18`` (``.venv``'s
Python for ``--worker featviz``).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "bench" / ".venv-peers" / "bin" / "python"
OURS, LUCENT, LUCENT_BATCH, HORAMA = "featviz", "lucent", "lucent-batch", "horama"
CONTENDERS = (OURS, LUCENT, LUCENT_BATCH, HORAMA)
PEERS = (LUCENT, LUCENT_BATCH, HORAMA)  # run in bench/.venv-peers
VERSIONS = {OURS: "featviz-report", LUCENT: "torch-lucent", LUCENT_BATCH: "torch-lucent", HORAMA: "horama"}
FIGURE = re.compile(r"(\w+)=(\S+)")
QUIET = 0.1  # cores busy elsewhere under which the machine counts as quiet (--wait-quiet)
NOISY = 0.2  # cores busy elsewhere on average during a run above which the table warns
RETRIES = 3  # with --wait-quiet, runs done again (after waiting) when they shared the machine
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's, and lucent's transform.normalize
ONET_NORM = ((0.5,) * 3, (0.50196,) * 3)  # tests/trained_nets.py's ONET_NORMALIZE: (x·255 − 127.5) / 128
Norm = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per colour channel, after [0, 1] pixels
SCALE, GAP = 3, 2  # --save: each image enlarged ×3 (nearest neighbour), 2 px white between images


@dataclass(frozen=True)
class Workload:
    """A model, the layer visualised and its input: what every contender is given."""

    name: str
    model: str  # "demo", "onet" or a torchvision architecture (random init)
    layer: str  # the module's qualified name, also lucent's name for it
    shape: tuple[int, int, int]  # C×H×W in pixels
    norm: Norm | None  # the normalisation the model expects after [0, 1] pixels
    label: str
    width: int  # the layer's channels: featviz optimises all of them in one call, as a report does


WORKLOADS = {
    "demo": Workload(
        "demo", "demo", "conv2", (1, 28, 28), None, "featviz demo digits CNN, conv2 (32 channels), 1×28² grey", 32
    ),
    "resnet18": Workload(
        "resnet18",
        "resnet18",
        "layer2",
        (3, 224, 224),
        IMAGENET,
        "resnet18 (random init), layer2 (128 channels), 3×224², ImageNet norm",
        128,
    ),
    "resnet18-layer3": Workload(
        "resnet18-layer3",
        "resnet18",
        "layer3",
        (3, 224, 224),
        IMAGENET,
        "resnet18 (random init), layer3 (256 channels), 3×224², ImageNet norm",
        256,
    ),
    "onet": Workload(
        "onet",
        "onet",
        "conv3",
        (3, 48, 48),
        ONET_NORM,
        "MTCNN ONet (facenet-pytorch's trained weights), conv3 (64 channels), 3×48², norm (x − 0.5) / 0.50196",
        64,
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# One run, in its own process: --worker NAME --workload W


def build(workload: Workload) -> tuple[Any, Any]:
    """The model (eval mode) and the layer's module, the same in every process."""
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    if workload.model == "demo":
        from featviz_report.models.resolve import load_model

        model = load_model(None).module.eval()
        for module in model.modules():  # a hook must keep conv2's own output, not relu2's rewrite of it
            if isinstance(module, nn.ReLU):
                module.inplace = False
    elif workload.model == "onet":
        model = trained_nets().onet()  # eval mode; forward returns a tuple, only conv3's output is used
    else:
        model = getattr(torchvision.models, workload.model)(weights=None).eval()
    return model, model.get_submodule(workload.layer)


def trained_nets() -> Any:
    """``tests/trained_nets.py``, loaded by its path: horama's wheel puts a ``tests`` package of its own in
    ``bench/.venv-peers``, which would shadow the repository's (a namespace package) as ``tests.trained_nets``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("trained_nets", ROOT / "tests" / "trained_nets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ours(model: Any, module: Any, workload: Workload, channels: list[int], steps: int) -> tuple[Any, str]:
    import torch

    from featviz_report.featvis.optimise import VisSettings, low_precision, optimise_channels

    cpu = torch.device("cpu")
    autocast = low_precision(cpu, torch.float32)
    images = optimise_channels(
        model,
        module,
        0,
        channels,
        workload.shape,
        workload.norm,
        cpu,
        torch.float32,
        VisSettings(steps=steps),
        autocast=autocast,
    )
    pixels = torch.stack([torch.from_numpy(image.pixels).permute(2, 0, 1) for image in images])
    return pixels, str(autocast or torch.float32).removeprefix("torch.")


def run_lucent(model: Any, module: Any, workload: Workload, channels: list[int], steps: int) -> tuple[Any, str]:
    """torch-lucent, one ``render_vis`` call per channel (objective ``"layer:C"``)."""
    import torch

    finals = [lucent_render(model, workload, f"{workload.layer}:{channel}", 1, steps)[0] for channel in channels]
    return quantised(torch.stack(finals)), "float32"


def run_lucent_batch(model: Any, module: Any, workload: Workload, channels: list[int], steps: int) -> tuple[Any, str]:
    """torch-lucent's batched mode: one ``render_vis`` call for every channel, ``param.image(..., batch=N)`` and
    the sum of ``objectives.channel(layer, C, batch=i)``, row ``i`` for channel ``C``."""
    import torch
    from lucent.optvis import objectives

    objective = sum(objectives.channel(workload.layer, c, batch=i) for i, c in enumerate(channels))
    return quantised(torch.stack(lucent_render(model, workload, objective, len(channels), steps))), "float32"


def lucent_render(model: Any, workload: Workload, objective: Any, batch: int, steps: int) -> list[Any]:
    """``render_vis`` on ``batch`` images at the workload's side with lucent's standard transforms and the
    workload's normalisation; the final images as C×H×W tensors in [0, 1]."""
    import torch
    from lucent.optvis import param, render, transform

    grey, side = workload.shape[0] == 1, workload.shape[1]
    preprocess = workload.norm == IMAGENET  # lucent's preprocess=True is transform.normalize(): ImageNet's
    transforms = None  # lucent's standard transforms
    if workload.norm is not None and not preprocess:  # any other normalisation: a transform where lucent's goes
        mean, std = (torch.tensor(values).view(1, -1, 1, 1) for values in workload.norm)
        transforms = [*transform.standard_transforms, lambda image: (image - mean) / std]
    images = render.render_vis(
        model,
        objective,
        param_f=lambda: param.image(side, channels=1 if grey else None, batch=batch),
        transforms=transforms,
        thresholds=(steps,),
        preprocess=preprocess,
        progress=False,
        show_image=False,
        fixed_image_size=side if side < 224 else None,
    )
    return [torch.from_numpy(image).permute(2, 0, 1) for image in images[-1]]  # each C×H×W in [0, 1]


def run_horama(model: Any, module: Any, workload: Workload, channels: list[int], steps: int) -> tuple[Any, str]:
    import horama
    import torch

    grey, side = workload.shape[0] == 1, workload.shape[1]
    values_range = horama_range(workload.norm)
    kept: list[Any] = []
    hook = module.register_forward_hook(lambda _module, _inputs, output: kept.append(output))
    finals = []
    try:
        for channel in channels:

            def objective(x: Any, channel: int = channel) -> Any:
                kept.clear()
                model(x.mean(1, keepdim=True) if grey else x)
                return kept[0][:, channel].mean()

            image, _ = horama.fourier(
                objective,
                total_steps=steps,
                image_size=side,
                model_input_size=side,
                crops_per_iteration=2,
                values_range=values_range,
                device="cpu",
            )
            pixels = (image.detach() - values_range[0]) / (values_range[1] - values_range[0])  # the sigmoid, [0, 1]
            finals.append(pixels.mean(0, keepdim=True) if grey else pixels)
    finally:
        hook.remove()
    return quantised(torch.stack(finals)), "float32"


def horama_range(norm: Norm | None) -> tuple[float, float]:
    """horama's ``values_range`` (one range for all colour channels): (0, 1) pixels without normalisation, the
    normalised image of [0, 1] where every colour channel has the same mean and std, else horama's default."""
    if norm is None:
        return 0.0, 1.0
    (mean, *means), (std, *stds) = norm
    if set(means) <= {mean} and set(stds) <= {std}:
        return (0.0 - mean) / std, (1.0 - mean) / std
    return -2.5, 2.5


def quantised(images: Any) -> Any:
    """[0, 1] images to uint8, rounded, as featviz quantises its own."""
    import torch

    return (images * 255).round().clamp(0, 255).to(torch.uint8)


RUNNERS = {OURS: run_ours, LUCENT: run_lucent, LUCENT_BATCH: run_lucent_batch, HORAMA: run_horama}


def save_strip(pixels: Any, path: Path) -> None:
    """uint8 images (N × C × H × W, C = 1 or 3) side by side in one PNG: each ×``SCALE``, ``GAP`` px white
    between them."""
    from PIL import Image

    n, c, h, w = pixels.shape
    side_h, side_w = h * SCALE, w * SCALE
    strip = Image.new("RGB", (n * side_w + (n - 1) * GAP, side_h), "white")
    for i, image in enumerate(pixels):
        array = image.permute(1, 2, 0).numpy()
        tile = Image.fromarray(array[..., 0] if c == 1 else array).convert("RGB")
        strip.paste(tile.resize((side_w, side_h), Image.NEAREST), (i * (side_w + GAP), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)


def worker(name: str, workload: Workload, steps: int, count: int, save: Path | None = None) -> None:
    """Time one contender on every channel and print ``seconds=... activation=...`` (its mean over channels);
    with ``save``, also write its images of the first ``count`` channels as ``save/<workload>-<name>.png``."""
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")  # kornia 0.4.1 and lucent on torch 2.x: deprecation warnings every step
    torch.set_num_threads(2)
    model, module = build(workload)
    channels = list(range(count))
    optimised = list(range(workload.width)) if name == OURS else channels  # ours: the whole layer at once
    torch.manual_seed(0)
    np.random.seed(0)
    t0 = time.perf_counter()
    pixels, precision = RUNNERS[name](model, module, workload, optimised, steps)
    seconds = time.perf_counter() - t0

    from featviz_report.featvis.optimise import activations_of

    reached = activations_of(model, module, 0, pixels, workload.norm, torch.device("cpu"), torch.float32)
    per_channel = [float(reached[i, channel]) for i, channel in enumerate(channels)]  # the first ``count``
    print(
        f"seconds={seconds:.3f} channels={len(optimised)} steps={steps} activation={statistics.mean(per_channel):.4f} "
        f"min={min(per_channel):.4f} max={max(per_channel):.4f} precision={precision} "
        f"version={version(name)} pixels={'x'.join(map(str, pixels.shape))}"
    )
    if save is not None:
        save_strip(pixels[: len(channels)], save / f"{workload.name}-{name}.png")


def version(name: str) -> str:
    from importlib.metadata import version as installed

    return installed(VERSIONS[name])


# ---------------------------------------------------------------------------------------------------------------
# The comparison: every run in a fresh process, round-robin, one table per workload


@dataclass
class Runs:
    """One contender's runs on one workload: seconds per channel of each, and the figures of its last."""

    name: str
    per_channel: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)  # cores other processes kept busy, per run
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.per_channel)


def command(name: str, workload: str, steps: int, channels: int, save: Path | None = None) -> list[str]:
    python = str(PEERS_PYTHON) if name in PEERS else sys.executable
    args = ["--worker", name, "--workload", workload, "--steps", str(steps), "--channels", str(channels)]
    return [python, "-m", "bench.featvis_compare", *args, *(["--save", str(save)] if save is not None else [])]


def cpu_busy() -> float | None:
    """Seconds of CPU the whole machine has spent busy since boot (``/proc/stat``); ``None`` elsewhere."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    ticks = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks)) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def others_busy(seconds: float = 1.0) -> float | None:
    """Cores kept busy by other processes over ``seconds`` (nothing of ours runs meanwhile)."""
    before = cpu_busy()
    time.sleep(seconds)
    after = cpu_busy()
    return None if before is None or after is None else (after - before) / seconds


def wait_quiet(limit: float) -> None:
    """Wait up to ``limit`` seconds for other processes to leave the machine (under 0.1 core busy)."""
    deadline = time.monotonic() + limit
    while limit > 0 and (busy := others_busy()) is not None and busy > QUIET:
        if time.monotonic() > deadline:
            print(f"note: other processes still keep {busy:.1f} cores busy: running anyway", file=sys.stderr)
            return
        time.sleep(4)


def run(cmd: list[str]) -> tuple[dict[str, str], float]:
    """One measurement in a fresh process: the ``name=value`` figures it printed, and how many cores other
    processes kept busy meanwhile (on average over the process's life; 0 where ``/proc/stat`` is missing)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}  # horama's progress bar
    busy, ours, t0 = cpu_busy(), children_cpu(), time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall, after = time.monotonic() - t0, cpu_busy()
    others = 0.0 if busy is None or after is None else max(0.0, (after - busy - (children_cpu() - ours)) / wall)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("seconds=")]
    if not lines:
        sys.exit(f"no figures printed by: {' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return dict(FIGURE.findall(lines[-1])), others


def measure(workload: str, names: list[str], args: argparse.Namespace) -> dict[str, Runs]:
    results = {name: Runs(name) for name in names}
    for i in range(args.repeat):
        for name in names:
            for attempt in range(1 + RETRIES * (args.wait_quiet > 0)):
                wait_quiet(args.wait_quiet)
                figures, others = run(command(name, workload, args.steps, args.channels, args.save))
                if others <= NOISY or attempt == RETRIES or args.wait_quiet <= 0:
                    break
                print(
                    f"{workload}: {name} shared the machine ({others:.2f} cores busy elsewhere): again", file=sys.stderr
                )
            runs = results[name]
            runs.per_channel.append(float(figures["seconds"]) / int(figures["channels"]))
            runs.others.append(others)
            runs.figures = figures
            print(
                f"{workload} round {i + 1}/{args.repeat}: {name} {figures['seconds']} s "
                f"({runs.per_channel[-1]:.3f} s per channel), activation {figures['activation']}, "
                f"other processes {others:.2f} cores",
                file=sys.stderr,
            )
    return results


def side_by_side(workload: Workload, results: dict[str, Runs], save: Path, channels: int) -> Path:
    """``save/<workload>-side-by-side.png``: the contenders' strips one above another, each labelled on the
    left with its name and version, the channel numbers above the columns (PIL's default font)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font: Any = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        font = ImageFont.load_default()
    rows = []
    for runs in results.values():
        text = VERSIONS[OURS] if runs.name == OURS else f"{runs.name} {runs.figures.get('version', '?')}"
        rows.append((text, Image.open(save / f"{workload.name}-{runs.name}.png").convert("RGB")))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    heading = f"{workload.layer} channel"
    pad = 8
    left = pad + max(probe.textbbox((0, 0), text, font=font)[2] for text, _ in [(heading, None), *rows]) + pad
    top = pad + probe.textbbox((0, 0), "0", font=font)[3] + 4
    width = left + max(strip.width for _, strip in rows) + pad
    height = top + sum(strip.height for _, strip in rows) + GAP * 3 * (len(rows) - 1) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    side_w = workload.shape[2] * SCALE
    draw.text((pad, top - 4), heading, fill="black", font=font, anchor="ls")
    for i in range(channels):
        draw.text((left + i * (side_w + GAP) + side_w / 2, top - 4), str(i), fill="black", font=font, anchor="ms")
    y = top
    for text, strip in rows:
        canvas.paste(strip, (left, y))
        draw.text((pad, y + strip.height / 2), text, fill="black", font=font, anchor="lm")
        y += strip.height + GAP * 3
    path = save / f"{workload.name}-side-by-side.png"
    canvas.save(path)
    return path


def per_channel(value: float) -> str:
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def speed_up(ours: Runs, theirs: Runs) -> str:
    if theirs is ours:
        return "—"
    ratio = theirs.median / ours.median
    return f"{ratio:.1f}×" if ratio < 100 else f"{ratio:,.0f}×"


def label(runs: Runs, channels: int) -> str:
    version = runs.figures.get("version", "?")
    if runs.name == OURS:
        width, precision = runs.figures.get("channels", "?"), runs.figures.get("precision", "?")
        return f"featviz-report {version} (all {width} channels of the layer in one call, {precision})"
    if runs.name == LUCENT:
        return f"torch-lucent {version} render_vis (one channel per call)"
    if runs.name == LUCENT_BATCH:
        return f"torch-lucent {version} render_vis, batched (channels 0-{channels - 1} in one call)"
    return f"horama {version} fourier, 2 crops (one channel per call)"


def table(workload: Workload, results: dict[str, Runs], steps: int, channels: int, repeat: int) -> list[str]:
    ours = results.get(OURS)
    rows = [
        "| contender | s per channel | our speed-up | mean activation on its 8-bit image |",
        "|---|---:|---:|---:|",
    ]
    for runs in results.values():
        rows.append(
            f"| {label(runs, channels)} | {per_channel(runs.median)} | "
            f"{speed_up(ours, runs) if ours else '—'} | {float(runs.figures['activation']):.3f} |"
        )
    heading = (
        f"**{workload.label}**: {steps} steps, channels 0-{channels - 1}, "
        f"median of {repeat} run{'s' if repeat > 1 else ''}, CPU, 2 threads"
    )
    runs_line = "; ".join(
        f"{runs.name}: {' '.join(per_channel(s) for s in runs.per_channel)} per channel "
        f"(others busy: {' '.join(f'{c:.2f}' for c in runs.others)} cores), "
        f"activation min {runs.figures['min']} max {runs.figures['max']}"
        for runs in results.values()
    )
    lines = [heading, "", *rows, "", f"runs: {runs_line}"]
    busiest = max(max(runs.others) for runs in results.values())
    if busiest > NOISY:
        lines.append(f"note: other processes kept up to {busiest:.2f} cores busy during a run: timings suffer")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="optimisation steps, for every contender")
    parser.add_argument("--channels", type=int, default=8, help="channels 0 .. N-1 of the layer")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, interleaved; the table shows the median")
    parser.add_argument("--workloads", default="demo,resnet18", help=f"comma-separated: {', '.join(WORKLOADS)}")
    parser.add_argument("--skip", default="", help=f"peers to leave out, comma-separated: {', '.join(PEERS)}")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each run, wait up to N s for other processes to finish; redo runs that shared the machine",
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="also write each run's images (DIR/<workload>-<contender>.png) and DIR/<workload>-side-by-side.png",
    )
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.channels < 1 or args.repeat < 1:
        parser.error("--steps, --channels and --repeat must be at least 1")
    args.workload_names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(args.workload_names) - set(WORKLOADS):
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(PEERS):
        parser.error(f"--skip: unknown {', '.join(sorted(skip - set(PEERS)))}; choose from {', '.join(PEERS)}")
    args.contenders = [name for name in CONTENDERS if name not in skip]
    if args.save is not None:
        args.save = args.save.resolve()  # the workers run in the repository root
        args.save.mkdir(parents=True, exist_ok=True)
    if args.worker is None and set(args.contenders) & set(PEERS) and not PEERS_PYTHON.is_file():
        parser.error(f"no {PEERS_PYTHON.relative_to(ROOT)}: run bench/peers_env.sh first (or --skip {','.join(PEERS)})")
    return args


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        worker(args.worker, WORKLOADS[args.workload or "demo"], args.steps, args.channels, args.save)
        return
    for name in args.workload_names:
        results = measure(name, args.contenders, args)
        print("\n".join(table(WORKLOADS[name], results, args.steps, args.channels, args.repeat)))
        if args.save is not None:
            print(f"pictures: {side_by_side(WORKLOADS[name], results, args.save, args.channels)}")
        print()


if __name__ == "__main__":
    main()
