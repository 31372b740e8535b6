"""Where the model looks: Grad-CAM and Grad-CAM++ maps for one convolution, and their overlays.

For each batch, a forward hook swaps the chosen layer's output for a copy of it that is the leaf of a
small autograd graph; ``torch.autograd.grad`` then gives the target score's gradient with respect to
that activation alone. No parameter gradient is computed or stored, ``requires_grad`` flags are never
touched, and gradients are enabled only inside :func:`class_activation_maps` (even when the caller runs
under ``torch.no_grad``). The hook is removed and every module's mode restored on the way out.

Grad-CAM (Selvaraju et al. 2017) weights each channel by its mean gradient; Grad-CAM++ (Chattopadhay et
al. 2018) by positive gradients with the closed-form alphas of an exponential score. Both are ReLU'd,
upsampled to the input and scaled to [0, 1] per sample (an all-zero map stays zero).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import CAM_METHODS
from ..errors import ModelError, UsageError
from ..render.colormaps import palette
from ..runtime.device import evaluating
from .logits import class_scores

__all__ = ["CamBatch", "class_activation_maps", "default_cam_layer", "overlay"]

OVERLAY_ALPHA = 0.55  # heat over a greyed input
OVERLAY_COLORMAP = "magma"


def default_cam_layer(model: nn.Module) -> str:
    """The last ``Conv2d`` in module order: the usual Grad-CAM layer."""
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise UsageError("Grad-CAM needs a Conv2d layer and the model has none")
    return convs[-1]


@dataclass(frozen=True)
class CamBatch:
    """Maps of one batch: ``maps`` N×H×W in [0, 1] at input resolution, and the class each explains."""

    maps: np.ndarray
    targets: tuple[int, ...]


@contextmanager
def _leaf_output(module: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """While inside, ``module``'s (tensor) output is replaced by a clone of a grad-requiring leaf; the leaf
    of the latest call is appended to the yielded list."""
    leaves: list[torch.Tensor | None] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            leaves.append(None)
            return output
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf.clone()  # a non-leaf, so an inplace op downstream (ReLU(inplace=True)) is allowed

    handle = module.register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()


def class_activation_maps(
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    target: int | None = None,
    method: str = "gradcam",
    output: str | None = None,
) -> CamBatch:
    """Maps for ``inputs`` (on the model's device) explaining ``target``, or each sample's top class;
    ``output`` picks the class scores from a model that returns several tensors
    (:mod:`featviz_report.capture.logits`)."""
    if method not in CAM_METHODS:
        raise UsageError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    module = dict(model.named_modules()).get(layer) if layer else None
    if module is None:
        raise UsageError(f"--cam-layer {layer!r} is not a layer of the model")
    with evaluating(model), torch.inference_mode(False), torch.enable_grad(), _leaf_output(module) as leaves:
        scores = class_scores(model(inputs), inputs.shape[0], output)
        if scores.tensor is None:
            raise ModelError(f"Grad-CAM needs N×K class scores: {scores.note or 'the model gives none'}")
        logits = scores.tensor
        if not leaves:
            raise ModelError(f"layer {layer} did not run in the forward pass")
        if target is not None and not 0 <= target < logits.shape[1]:
            raise UsageError(f"--target-class {target} is out of range: the model has {logits.shape[1]} classes")
        activation = leaves[-1]
        if activation is None:
            raise UsageError(f"--cam-layer {layer} does not output a floating-point tensor")
        if activation.ndim != 4:
            shape = "×".join(map(str, activation.shape))
            raise UsageError(f"--cam-layer {layer} gives a {shape} output; class activation maps need N×C×H×W")
        classes = logits.argmax(1) if target is None else torch.full_like(logits[:, 0], target, dtype=torch.long)
        score = logits.gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activation)
    weights = _channel_weights(grad.detach(), activation.detach(), method)
    cam = torch.relu((weights[:, :, None, None] * activation.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam.float(), size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(torch.finfo(cam.dtype).tiny)
    maps = (cam / peak[:, None, None]).cpu().numpy()
    return CamBatch(maps, tuple(int(c) for c in classes.cpu()))


def _channel_weights(grad: torch.Tensor, activation: torch.Tensor, method: str) -> torch.Tensor:
    """N×C importance of each channel for the score."""
    if method == "gradcam":
        return grad.mean((2, 3))
    # Grad-CAM++ with an exponential score: alpha = g² / (2g² + ΣA·g³), weights = Σ alpha·relu(g)
    squared, cubed = grad.pow(2), grad.pow(3)
    denominator = 2 * squared + activation.sum((2, 3), keepdim=True) * cubed
    alpha = squared / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * torch.relu(grad)).sum((2, 3))


def overlay(thumbnail: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The heat map over a greyed copy of the input thumbnail, as H×W×3 uint8 at the thumbnail's size."""
    height, width = thumbnail.shape[:2]
    source = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    heat = F.interpolate(source, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    heat = np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0)  # a diverged model's map shows nothing
    colours = np.frombuffer(palette(OVERLAY_COLORMAP), np.uint8).reshape(256, 3)
    coloured = colours[np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8)].astype(np.float32)
    grey = thumbnail.astype(np.float32) if thumbnail.ndim == 2 else thumbnail.astype(np.float32).mean(2)
    base = np.repeat(grey[:, :, None], 3, axis=2)
    alpha = OVERLAY_ALPHA * np.clip(heat, 0, 1)[:, :, None] ** 0.5  # faint where the map is low
    return np.clip(base * (1 - alpha) + coloured * alpha, 0, 255).round().astype(np.uint8)
