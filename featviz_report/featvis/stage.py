"""The feature-visualisation stage, between capture and the sections: for the layers ``--featviz`` names,
each shown channel's optimised image (:mod:`featviz_report.featvis.optimise`), taken from the disk cache
(:mod:`featviz_report.featvis.cache`) where it is there, optimised in one batch per layer where not, and encoded as
PNG."""

from __future__ import annotations

import base64
import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..capture.job import Job
from ..capture.layer_record import LayerRecord
from ..capture.samples import SampleSet, preprocess
from ..config import ReportConfig
from ..errors import ModelError, first_line
from ..render.encode import png_pixels, png_rgb, png_size
from ..report_data import FeatureImage, LayerSection, Png
from ..runtime.progress import Progress
from .cache import VisCache, default_cache_dir, entry_key
from .optimise import ChannelImage, VisSettings, activations_of, eta_ticker, low_precision, optimise_channels

__all__ = ["VisTarget", "vis_targets", "visualise_layers", "settings_record", "with_features"]


@dataclass(frozen=True)
class VisTarget:
    """One layer call to visualise: its name in the report, module, call index and channels, in tile order."""

    name: str
    module: nn.Module
    call: int
    channels: tuple[int, ...]


def vis_targets(
    records: Iterable[tuple[tuple[str, int], LayerRecord]], config: ReportConfig, progress: Progress
) -> list[VisTarget]:
    """The records, keyed by (module name, call), whose module name a ``--featviz`` glob matches, with the
    channels to make images for: the channels the maps show, in their order; a vector's first
    ``max_channels`` features (all by default). A sequence has no channels to optimise: a warning says so."""
    targets = []
    for (module_name, call), record in records:
        if not any(fnmatch.fnmatchcase(module_name, pattern) for pattern in config.featviz):
            continue
        if record.kind == "sequence" or isinstance(record.module, nn.MultiheadAttention):
            what = "attention weights" if record.kind == "maps" else "a sequence"
            progress.warn(f"--featviz: {record.name!r} outputs {what}; only maps and vectors are visualised")
            continue
        features = min(config.max_channels or record.shape[0], record.shape[0])
        channels = record.channel_ids if record.kind == "maps" else tuple(range(features))
        targets.append(VisTarget(record.name, record.module, call, channels))
    return targets


def with_features(
    sections: tuple[LayerSection, ...], images: dict[str, tuple[FeatureImage, ...]]
) -> tuple[LayerSection, ...]:
    """``sections`` with their layers' feature images."""
    return tuple(replace(s, feature_images=images[s.name]) if s.name in images else s for s in sections)


def settings_of(config: ReportConfig) -> VisSettings:
    return VisSettings(steps=config.featviz_steps)


def visualise_layers(job: Job[SampleSet], targets: Sequence[VisTarget]) -> dict[str, tuple[FeatureImage, ...]]:
    """Per target layer (by name), one image per channel at the samples' size, in pixel space; cached ones
    reused, the rest optimised on ``job``'s device and cached."""
    if not targets:
        return {}
    model, device, dtype, config, progress = job.model, job.device, job.dtype, job.config, job.progress
    channels, height, width = job.sample_set.shape
    input_shape, norm = (channels, height, width), preprocess(model, config).norm
    settings = settings_of(config)
    autocast = low_precision(device, dtype)
    cache = VisCache(Path(config.cache_dir) if config.cache_dir else default_cache_dir())
    context = {"input": list(input_shape), "norm": norm, "precision": str(autocast or dtype)}
    keys = {t.name: [entry_key(job.weights, t.name, t.call, c, context, settings) for c in t.channels] for t in targets}
    found = {
        t.name: _verified(
            model,
            t,
            [_from_cache(cache, k, c, input_shape) for k, c in zip(keys[t.name], t.channels)],
            norm,
            device,
            dtype,
        )
        for t in targets
    }
    missing = sum(image is None for images in found.values() for image in images)
    tick = eta_ticker(
        missing * settings.steps, lambda done, total, elapsed: progress.rate("featviz", done, total, elapsed)
    )
    result = {}
    for target in targets:
        images = found[target.name]
        todo = [c for c, image in zip(target.channels, images) if image is None]
        if todo:
            try:
                made = optimise_channels(
                    model, target.module, target.call, todo, input_shape, norm, device, dtype, settings, autocast, tick
                )
            except Exception as err:  # noqa: BLE001 - the user's model, run our way: name the layer
                raise ModelError(
                    f"--featviz {target.name!r}: optimising its images failed ({type(err).__name__}: {first_line(err)})"
                ) from err
            fresh = {image.channel: _encoded(image) for image in made}
            for i, (channel, key) in enumerate(zip(target.channels, keys[target.name])):
                if images[i] is None:
                    images[i] = fresh[channel]
                    cache.put(key, _entry(fresh[channel]))
        result[target.name] = tuple(image for image in images if image is not None)
    return result


def _encoded(image: ChannelImage) -> FeatureImage:
    pixels = image.pixels[..., 0] if image.pixels.shape[-1] == 1 else image.pixels
    png = png_rgb(np.ascontiguousarray(pixels))
    return FeatureImage(image.channel, Png(png, pixels.shape[1], pixels.shape[0]), image.activation)


def _entry(image: FeatureImage) -> dict[str, object]:
    data = image.image.source
    assert isinstance(data, bytes)
    return {"channel": image.channel, "activation": image.activation, "png": base64.b64encode(data).decode("ascii")}


def _from_cache(cache: VisCache, key: str, channel: int, shape: tuple[int, int, int]) -> FeatureImage | None:
    """The cached image under ``key`` when it is a well-formed entry for ``channel`` at the input's size."""
    entry = cache.get(key)
    if entry is None:
        return None
    try:
        data = base64.b64decode(str(entry["png"]), validate=True)
        width, height = png_size(data)
        activation = float(entry["activation"])  # type: ignore[arg-type]
        same = entry["channel"] == channel and (height, width) == shape[1:]
    except (KeyError, ValueError, TypeError, OverflowError):
        return None
    return FeatureImage(channel, Png(data, width, height), activation) if same and math.isfinite(activation) else None


def _verified(
    model: nn.Module,
    target: VisTarget,
    images: list[FeatureImage | None],
    norm: tuple[Sequence[float], Sequence[float]] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> list[FeatureImage | None]:
    """The cached images whose channel the model, as it is now, still brings to the stored activation
    (one batched forward pass): an edited ``forward`` or a hand-made entry is made again instead."""
    cached = [(i, image) for i, image in enumerate(images) if image is not None]
    if not cached:
        return images
    try:
        arrays = [png_pixels(image.image.data) for _, image in cached]
        pixels = torch.stack([torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1) for a in arrays])
        reached = activations_of(model, target.module, target.call, pixels, norm, device, dtype)
    except Exception:  # noqa: BLE001 - an entry that does not even decode or fit: make them all again
        return [None] * len(images)
    checked = list(images)
    for row, (i, image) in enumerate(cached):
        now = float(reached[row, image.channel])
        if not math.isclose(now, image.activation, rel_tol=1e-3, abs_tol=1e-4):
            checked[i] = None
    return checked


def settings_record(config: ReportConfig, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """The settings the images were made with, for the JSON and the page's caption."""
    autocast = low_precision(device, dtype)
    return {**asdict(settings_of(config)), "precision": str(autocast or dtype).replace("torch.", "")}
