"""Sample images: find them, decode them with Pillow, preprocess them and hand them out in batches.

Folders are searched recursively and sorted, so the same inputs always give the same order. A
``N×C×H×W`` tensor is also accepted, used as it is (already preprocessed).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from ..config import IMAGE_SUFFIXES, ReportConfig
from ..errors import InputError, SampleError, UsageError

__all__ = [
    "IMAGE_SUFFIXES",
    "Preprocess",
    "preprocess",
    "Batch",
    "SampleSet",
    "FileSamples",
    "TensorSamples",
    "find_images",
    "parse_normalize",
    "read_labels",
    "open_samples",
    "decode_image",
    "to_inputs",
    "thumbnail",
    "display_names",
    "readable_name",
]

SamplesArg = str | Path | Sequence[str | Path] | torch.Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
THUMBNAIL_SIZE = 128


@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes model input: square ``size``, ``channels`` (1 or 3), then
    ``(x - mean) / std`` when ``mean`` is set. Pixels are first scaled to [0, 1]."""

    size: int
    channels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) when the model expects normalised inputs, else ``None``."""
        return (self.mean, self.std) if self.mean is not None and self.std is not None else None


@dataclass(frozen=True)
class Batch:
    """Model input for a few samples and what the page shows of each (uint8, H×W or H×W×3)."""

    inputs: torch.Tensor
    thumbnails: list[np.ndarray]
    names: list[str]


class SampleSet(ABC):
    """A sized, named, deterministic sequence of samples that yields batches.

    ``skipped`` lists (name, reason) of samples that could not be used, as batches reveal them.
    """

    names: list[str]
    shape: tuple[int, ...]
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.names)

    @abstractmethod
    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Model inputs and thumbnails, ``batch_size`` samples at a time, in order."""


def parse_normalize(spec: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``imagenet``, ``none`` or ``MEAN,STD`` (two numbers, or one mean and one std per channel)."""
    if spec == "none":
        return None
    if spec == "imagenet":
        if channels == 1:
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        numbers = [float(part) for part in spec.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) in (2, 2 * channels):
        if not all(math.isfinite(n) for n in numbers) or any(n <= 0 for n in numbers[len(numbers) // 2 :]):
            raise UsageError(f"--normalize {spec!r}: means must be finite numbers and stds finite and above 0")
        if len(numbers) == 2:
            return (numbers[0],) * channels, (numbers[1],) * channels
        return tuple(numbers[:channels]), tuple(numbers[channels:])
    raise UsageError(
        f"--normalize {spec!r}: expected imagenet, none, MEAN,STD or {channels} means then {channels} stds"
    )


def preprocess(model: nn.Module, config: ReportConfig) -> Preprocess:
    """How samples become this model's input: ``config``'s size and normalisation, and the channels its
    first convolution takes (1 or 3; 3 when it has none or takes another number)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None and first.in_channels in (1, 3) else 3
    norm = parse_normalize(config.normalize or "none", channels)
    mean, std = norm if norm else (None, None)
    return Preprocess(config.input_size or 224, channels, mean, std)


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named or found (recursively, sorted) under ``paths``, in argument order, no repeats.
    A folder that cannot be read, at any depth, is an error naming it (not a silent gap in the samples)."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(_images_in(path), key=lambda p: p.relative_to(path).as_posix())
            if not inside:
                raise InputError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {str(path)!r}")
            found.update(dict.fromkeys(inside))
        elif path.is_file():
            found[path] = None
        else:
            raise InputError(f"sample path {str(path)!r} does not exist")
    if not found:
        raise InputError("no sample images given")
    return list(found)


def _images_in(folder: Path) -> Iterator[Path]:
    def unreadable(err: OSError) -> None:
        raise InputError(f"cannot read folder {readable_name(str(err.filename))!r}: {err.strerror or err}")

    for root, _, files in os.walk(folder, onerror=unreadable):
        for name in files:
            path = Path(root, name)
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield path


def readable_name(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (kept by Python as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names from a JSON list or a text file with one name per line (a UTF-8 BOM is dropped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read labels file {str(path)!r}: {err}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"labels file {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise InputError(f"labels file {str(path)!r} must hold a JSON list of strings")
        return tuple(data)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def decode_image(path: Path, name: str, prep: Preprocess) -> np.ndarray:
    """Decode one file to a ``size×size`` (×3) uint8 array in the channel layout the model expects."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        limit = f"{Image.MAX_IMAGE_PIXELS:,}" if Image.MAX_IMAGE_PIXELS else "the"
        raise SampleError(name, f"refused: more pixels than {limit} limit (decompression bomb?)") from None
    except UnidentifiedImageError:
        reason = "empty file" if path.stat().st_size == 0 else "not an image Pillow can read"
        raise SampleError(name, reason) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise SampleError(name, f"unreadable image ({err})") from None
    image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("L" if prep.channels == 1 else "RGB")
    return np.asarray(_resize_crop(image, prep.size))


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled (not clipped) to 8 bits; float images min-max scaled."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        lo = float(np.nanmin(values))
        scaled = (values - lo) / max(float(np.nanmax(values)) - lo, 1e-12)
    else:
        scaled = values / (255.0 if image.mode == "I" and values.max() <= 255 else 65535.0)
    return Image.fromarray((np.clip(np.nan_to_num(scaled), 0, 1) * 255).round().astype(np.uint8), mode="L")


def _resize_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bilinear, antialiased), then the centre ``size×size`` square."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    target = (max(size, round(width * scale)), max(size, round(height * scale)))
    resized = image.resize(target, Image.Resampling.BILINEAR)
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """At most ``THUMBNAIL_SIZE`` pixels on a side; small inputs stay as they are (shown pixelated)."""
    height, width = pixels.shape[:2]
    if max(height, width) <= THUMBNAIL_SIZE:
        return pixels
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image)


class FileSamples(SampleSet):
    """Image files decoded lazily, one batch at a time, so memory does not grow with their number.

    A file that cannot be decoded is skipped and recorded in ``skipped``, or raises with ``strict``.
    """

    def __init__(self, paths: Sequence[Path], prep: Preprocess, strict: bool = False) -> None:
        self.paths = list(paths)
        self.prep = prep
        self.strict = strict
        self.names = display_names(self.paths)
        self.shape = (prep.channels, prep.size, prep.size)
        self.skipped = []

    def batches(self, batch_size: int) -> Iterator[Batch]:
        self.skipped = []
        named = list(zip(self.paths, self.names))
        for start in range(0, len(named), batch_size):
            pixels, names = [], []
            for path, name in named[start : start + batch_size]:
                try:
                    pixels.append(decode_image(path, name, self.prep))
                except SampleError as err:
                    if self.strict:
                        raise
                    self.skipped.append((err.name, err.reason))
                    continue
                names.append(name)
            if not pixels:
                continue
            yield Batch(to_inputs(np.stack(pixels), self.prep), [thumbnail(p) for p in pixels], names)


def to_inputs(pixels: np.ndarray, prep: Preprocess) -> torch.Tensor:
    """``N×H×W`` or ``N×H×W×3`` uint8 pixels → the model's ``N×C×H×W`` float input."""
    stacked = torch.from_numpy(pixels).float().div_(255)
    inputs = stacked.unsqueeze(1) if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)
    if prep.norm is not None:
        mean, std = (torch.tensor(values).view(1, -1, 1, 1) for values in prep.norm)
        inputs = (inputs - mean) / std
    return inputs.contiguous()


def display_names(paths: list[Path]) -> list[str]:
    """Each file's name, or its path where two samples share a name."""
    counts = Counter(p.name for p in paths)
    return [readable_name(p.name if counts[p.name] == 1 else p.as_posix()) for p in paths]


class TensorSamples(SampleSet):
    """An ``N×C×H×W`` tensor used as model input as it is. Thumbnails are min-max scaled per sample:
    RGB for 3 channels, else the first channel in grey."""

    def __init__(self, tensor: torch.Tensor) -> None:
        if tensor.ndim != 4 or not tensor.is_floating_point():
            raise InputError(
                f"a samples tensor must be a float N×C×H×W tensor, got {tuple(tensor.shape)} {tensor.dtype}"
            )
        self.tensor = tensor.detach()
        self.names = [f"sample {i}" for i in range(tensor.shape[0])]
        self.shape = tuple(tensor.shape[1:])
        self.skipped = []

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self.tensor.shape[0], batch_size):
            inputs = self.tensor[start : start + batch_size]
            flat = inputs.float().flatten(1)
            lo = flat.amin(1).view(-1, 1, 1, 1)
            hi = flat.amax(1).view(-1, 1, 1, 1)
            pixels = ((inputs.float() - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8).cpu()
            thumbs = [p.permute(1, 2, 0).numpy() if p.shape[0] == 3 else p[0].numpy() for p in pixels]
            names = self.names[start : start + batch_size]
            yield Batch(inputs, [thumbnail(np.ascontiguousarray(t)) for t in thumbs], names)


def open_samples(samples: SamplesArg, prep: Preprocess, strict: bool = False) -> SampleSet:
    """Turn the user's samples argument (path, paths or tensor) into a :class:`SampleSet`."""
    if isinstance(samples, torch.Tensor):
        return TensorSamples(samples)
    paths = [samples] if isinstance(samples, (str, Path)) else list(samples)
    return FileSamples(find_images(paths), prep, strict)
