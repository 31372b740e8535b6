"""Feature visualisation by optimisation: for each channel of a layer, the image that excites it most.

Every channel of the layer is optimised at once, one image per batch row, and the forward pass stops at
the layer (a hook raises once it has the output), so nothing past it runs and only the input gets a
gradient (the parameters' ``requires_grad`` is off for the block and restored after).

The image is parameterised as in Lucid (Olah et al., "Feature Visualization", Distill 2017): a Fourier
spectrum scaled by 1/frequency (so every frequency learns at a similar rate: natural-image statistics
instead of high-frequency noise), ImageNet's colour correlation undone (three-channel inputs), and a
sigmoid into [0, 1] pixel space. Each step sees it through a random transformation per row (jitter,
scale, rotation, padded with grey), so the image must excite the channel robustly rather than through
one fragile pixel pattern. Normalisation is the report's, applied after, so images live in pixel space.

For a layer of maps the objective, the channel's mean over positions, is estimated each step on a
random window of the image (half its side, at least 64 px; the whole image for a vector layer or a model
that takes no other size): every part of the image is optimised over the steps at a quarter of the
cost per step (and a step size four times Lucid's, as each step sees a quarter of the image: at the same
number of steps it reaches higher activations than optimising the whole image at Lucid's step size, in
a quarter of the time). Convolutions run channels-last and, where the hardware computes bfloat16 natively (a
CUDA GPU, or a CPU with AVX-512 BF16 or AMX), under bfloat16 autocast; the activation reported for
each image is measured after, in the model's own precision, on the whole 8-bit image.

A row's result depends only on its own seed (drawn from ``seed`` and the channel) and not on the rest of
the batch, so results can be cached per channel (:mod:`featviz_report.featvis.cache`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..capture.truncated import Truncated
from ..runtime.device import evaluating
from ..runtime.threads import ThreadPolicy

__all__ = [
    "VisSettings",
    "ChannelImage",
    "StepTicker",
    "optimise_channels",
    "activations_of",
    "frozen_parameters",
    "eta_ticker",
]

# ImageNet's colour correlation, square root of its covariance (Lucid's ``color_correlation_svd_sqrt``)
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()
POLISH_ROUNDS = 3  # at most; each re-optimises only the channels another image still excites more
MAX_PIXELS_PER_CHUNK = 64 * 3 * 224 * 224  # rows optimised together: 64 RGB images of 224² (about 1 GB on resnet18)


@dataclass(frozen=True)
class VisSettings:
    """How the images are optimised; everything here is part of a cached image's key.

    ``steps`` of Adam at ``lr`` on the spectrum (scaled by the image's area over the window's);
    ``jitter`` (fraction of the image side), ``scale`` (± relative) and ``rotate`` (± degrees) bound each
    step's random transformation; ``window`` is the side of the window a step sees, as a fraction of the
    image's (see :func:`window_side`)."""

    steps: int = 512
    lr: float = 0.075  # Lucid uses 0.05; 0.075 reaches higher activations in the same steps (measured: ONet, resnet18)
    seed: int = 0
    decay: float = 1.0
    jitter: float = 0.05
    scale: float = 0.1
    rotate: float = 10.0
    window: float = 0.5
    method: str = "lucid-fourier-v1"


@dataclass(frozen=True)
class ChannelImage:
    """One channel's optimised image (H×W×C uint8, pixel space) and the channel's mean activation on it."""

    channel: int
    pixels: np.ndarray
    activation: float


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Every parameter's ``requires_grad`` off for the block (only the input needs a gradient), restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _channel_means(output: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Per row ``i``, the mean of channel ``channels[i]`` over the positions of maps, or a vector's feature."""
    picked = output[torch.arange(output.shape[0], device=output.device), channels]
    return picked.float().flatten(1).mean(1) if picked.ndim > 1 else picked.float()


class _Fourier:
    """Lucid's decorrelated Fourier parameterisation of ``rows`` images of ``channels``×``h``×``w``."""

    def __init__(self, spectra: torch.Tensor, h: int, w: int, decay: float) -> None:
        self.spectrum = spectra.requires_grad_(True)  # rows × C × h × (w//2+1) × 2
        fy = torch.fft.fftfreq(h, device=spectra.device)[:, None]
        fx = torch.fft.rfftfreq(w, device=spectra.device)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        self.scale = (1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay)[None, None, :, :, None]
        self.size = (h, w)

    def image(self) -> torch.Tensor:
        """The images in [0, 1], rows × C × h × w."""
        image = torch.fft.irfft2(torch.view_as_complex(self.scale * self.spectrum), s=self.size, norm="ortho") / 4
        if image.shape[1] == 3:
            image = torch.einsum("nchw,dc->ndhw", image, _COLOUR.to(image.device))
        return torch.sigmoid(image)


def window_side(side: int, settings: VisSettings) -> int:
    """The side of the window each step shows the model: ``settings.window`` of the image's, at least 64 px."""
    return min(side, max(64, round(side * settings.window)))


def _transformed(
    images: torch.Tensor, draws: torch.Tensor, settings: VisSettings, window: tuple[int, int]
) -> torch.Tensor:
    """Per row, a ``window`` of its image through its own random affine transformation (one resampling);
    ``draws`` is rows × 6, uniform in [0, 1). Outside the image is grey."""
    u = draws * 2 - 1
    fy, fx = window[0] / images.shape[2], window[1] / images.shape[3]
    scale = 1 + settings.scale * u[:, 0]
    angle = math.radians(settings.rotate) * u[:, 1]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    x = 2 * settings.jitter * u[:, 2] + (1 - fx) * u[:, 4]
    y = 2 * settings.jitter * u[:, 3] + (1 - fy) * u[:, 5]
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, x], 1), torch.stack([sin * fx, cos * fy, y], 1)], 1)
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], *window], align_corners=False)
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


def _seeds(settings: VisSettings, channel: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The channel's own starting spectrum and per-step transformation draws: the same for a seed and
    channel, whatever else is in the batch."""
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + channel)
    spectrum = torch.randn((*shape, 2), generator=generator) * 0.01
    draws = torch.rand((settings.steps, 6), generator=generator)
    return spectrum, draws


def low_precision(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """bfloat16 where ``device`` computes it natively and the model is in float32; else ``None`` (as is)."""
    if dtype != torch.float32:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        native = [
            getattr(torch.cpu, name, lambda: False)()
            for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        ]
        return torch.bfloat16 if any(native) else None
    return None


def optimise_channels(
    model: nn.Module,
    module: nn.Module,
    call: int,
    channels: Sequence[int],
    input_shape: tuple[int, int, int],
    norm: tuple[Sequence[float], Sequence[float]] | None,
    device: torch.device,
    dtype: torch.dtype,
    settings: VisSettings,
    autocast: torch.dtype | None = None,
    tick: StepTicker | None = None,
) -> list[ChannelImage]:
    """One optimised image per channel of ``module``'s ``call``-th output, in ``channels``' order.

    ``input_shape`` is C×H×W in pixels; ``norm`` the (mean, std) the model expects after [0, 1] pixels;
    ``autocast`` the dtype the steps run in (:func:`low_precision`); ``tick`` counts the channel-steps
    (one step of one channel's image) for progress: ``steps`` per channel, which its total holds, and each
    polishing round's, added to its total as the round is decided and before its steps are counted (so
    the count reaches the total only once the last step of the last round is done).

    Gradient ascent can stop on a local maximum below another channel's image (two channels that like
    similar patterns): a channel whose image excites it less than another image of the batch does is
    optimised again for a quarter of the steps from that image, and keeps whichever of its two images
    excites it more (up to ``POLISH_ROUNDS`` times, as one channel's new image can beat another's)."""
    c, h, w = input_shape
    tick = tick or StepTicker()
    per_chunk = max(1, MAX_PIXELS_PER_CHUNK // (c * h * w))
    scaler = _Normaliser(norm, device, dtype)
    results: list[ChannelImage] = []
    with (
        evaluating(model),
        frozen_parameters(model),
        Truncated(model, module, call) as truncated,
        ThreadPolicy() as threads,
    ):
        window = _window(truncated, scaler, input_shape, settings, device)
        ascent = _Ascent(truncated, scaler, window, settings, tick, threads)
        for start in range(0, len(channels), per_chunk):
            chunk = list(channels[start : start + per_chunk])
            seeds = [_seeds(settings, ch, (c, h, w // 2 + 1)) for ch in chunk]
            draws = torch.stack([d for _, d in seeds], 1).to(device)  # steps × rows × 6
            wanted = torch.tensor(chunk, device=device)
            with torch.autocast(device.type, dtype=autocast or dtype, enabled=autocast is not None):
                spectra, pixels = ascent(torch.stack([s for s, _ in seeds]).to(device), wanted, draws, (h, w))
            held = len(chunk) if len(draws) else 0  # the last step's count, sent once any polishing is counted in
            reached = ascent.reached(pixels)
            for _ in range(POLISH_ROUNDS):
                rows = torch.arange(len(chunk), device=device)
                own = reached[rows, wanted]
                beaten = (reached[:, wanted].amax(0) > own).nonzero().flatten()
                if not len(beaten):
                    break
                start_from = spectra[reached[:, wanted[beaten]].argmax(0)].clone()
                polish = draws[: settings.steps // 4, beaten]
                tick.expect(len(beaten) * len(polish))
                tick(held)
                with torch.autocast(device.type, dtype=autocast or dtype, enabled=autocast is not None):
                    again_spectra, again = ascent(start_from, wanted[beaten], polish, (h, w))
                held = len(beaten) if len(polish) else 0
                again_reached = ascent.reached(again)
                better = again_reached[torch.arange(len(beaten), device=device), wanted[beaten]] > own[beaten]
                improved = beaten[better]
                pixels[improved], reached[improved], spectra[improved] = (
                    again[better],
                    again_reached[better],
                    again_spectra[better],
                )
            tick(held)
            for i, ch in enumerate(chunk):
                results.append(ChannelImage(ch, pixels[i].permute(1, 2, 0).cpu().numpy(), float(reached[i, ch])))
    return results


class _Ascent:
    """Gradient ascent of each row's channel mean through the truncated model, from given spectra."""

    def __init__(
        self,
        truncated: Truncated,
        scaler: _Normaliser,
        window: tuple[int, int],
        settings: VisSettings,
        tick: StepTicker,
        threads: ThreadPolicy,
    ) -> None:
        self.truncated, self.scaler, self.window, self.settings, self.tick = truncated, scaler, window, settings, tick
        self.threads = threads

    def __call__(
        self,
        spectra: torch.Tensor,
        wanted: torch.Tensor,
        draws: torch.Tensor,
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The spectra after ``len(draws)`` steps, and their images as uint8 pixels (rows × C × H × W).
        Every step but the last is passed to the progress ``tick`` as it is done: the caller passes the
        last once it knows whether more steps follow (:func:`optimise_channels`)."""
        param = _Fourier(spectra, *size, self.settings.decay)
        optimiser = torch.optim.Adam([param.spectrum], lr=self.settings.lr * size[0] * size[1] / math.prod(self.window))
        with torch.enable_grad():
            for step, step_draws in enumerate(draws, 1):
                self.threads.refresh()
                optimiser.zero_grad(set_to_none=True)
                seen = self.scaler(_transformed(param.image(), step_draws, self.settings, self.window))
                output = self.truncated(seen.contiguous(memory_format=torch.channels_last))
                (-_channel_means(output, wanted).sum()).backward()
                optimiser.step()
                if step < len(draws):
                    self.tick(len(wanted))
        with torch.no_grad():
            pixels = (param.image().float() * 255).round().clamp(0, 255).to(torch.uint8)
        return param.spectrum.detach(), pixels

    def reached(self, pixels: torch.Tensor) -> torch.Tensor:
        """Every channel's mean activation (rows × channels) on uint8 ``pixels``, in full precision."""
        with torch.no_grad(), torch.autocast(pixels.device.type, enabled=False):
            return _means(self.truncated(self.scaler(pixels / 255)).float())


class _Normaliser:
    """[0, 1] pixels to what the model expects: ``(x - mean) / std`` and its dtype."""

    def __init__(self, norm: tuple[Sequence[float], Sequence[float]] | None, device: torch.device, dtype: torch.dtype):
        self.dtype = dtype
        self.mean = self.std = None
        if norm is not None:
            self.mean = torch.tensor(norm[0], device=device, dtype=dtype).view(1, -1, 1, 1)
            self.std = torch.tensor(norm[1], device=device, dtype=dtype).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.dtype)
        return images if self.mean is None or self.std is None else (images - self.mean) / self.std


def _window(
    truncated: Truncated,
    scaler: _Normaliser,
    input_shape: tuple[int, int, int],
    settings: VisSettings,
    device: torch.device,
) -> tuple[int, int]:
    """The window each step shows: :func:`window_side` when the layer gives maps on it, else the whole image."""
    c, h, w = input_shape
    window = (window_side(h, settings), window_side(w, settings))
    if window == (h, w):
        return window
    try:
        with torch.no_grad():
            output = truncated(scaler(torch.full((1, c, *window), 0.5, device=device)))
    except Exception:  # noqa: BLE001 - a model that takes one input size only: show it the whole image
        return h, w
    return window if output.ndim == 4 else (h, w)


def activations_of(
    model: nn.Module,
    module: nn.Module,
    call: int,
    pixels: torch.Tensor,
    norm: tuple[Sequence[float], Sequence[float]] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Every channel's mean activation (rows × channels) of ``module``'s ``call``-th output on uint8
    ``pixels`` (rows × C × H × W), normalised as the model expects: what an 8-bit image really reaches."""
    images = _Normaliser(norm, device, dtype)(pixels.to(device) / 255)
    with evaluating(model), torch.no_grad(), Truncated(model, module, call) as truncated:
        return _means(truncated(images).float())


def _means(output: torch.Tensor) -> torch.Tensor:
    """Rows × channels: maps averaged over their positions, a vector as it is."""
    return output.mean((2, 3)) if output.ndim == 4 else output


class StepTicker:
    """Channel-steps done out of a total that grows as polishing rounds are decided (:func:`optimise_channels`);
    each count is passed to ``report`` with the total as it stands, as (done, total, elapsed seconds)."""

    def __init__(self, total: int = 0, report: Callable[[int, int, float], None] | None = None) -> None:
        self.done, self.total, self.report = 0, total, report
        self.start = time.monotonic()

    def __call__(self, steps: int) -> None:
        """``steps`` more channel-steps done."""
        self.done += steps
        if self.report is not None and steps:
            self.report(self.done, self.total, time.monotonic() - self.start)

    def expect(self, steps: int) -> None:
        """``steps`` more channel-steps to do than the total said (a polishing round)."""
        self.total += steps


def eta_ticker(total: int, report: Callable[[int, int, float], None]) -> StepTicker:
    """A ``tick`` that counts channel-steps done out of ``total`` (and the polishing rounds' steps, as
    they are decided) and passes (done, total, elapsed) on."""
    return StepTicker(total, report)
