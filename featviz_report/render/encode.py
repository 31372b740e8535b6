"""Arrays → PNG bytes (and back, for cached images): tile atlases, palette images and thumbnails, encoded
in a thread pool; a scan's photographs as WebP.

The only module that encodes with Pillow. Settings are fixed (no metadata, one zlib level and strategy) so
the same array always gives the same bytes. Pillow releases the GIL while compressing, so a thread pool keeps
every core busy while the model runs.

zlib's run-length strategy (``Z_RLE``: matches of one repeated byte only) instead of its default string
matching, which spends its time looking for longer repeats that image rows seldom hold. On resnet18's 160
palette atlases of random inputs (20 MB of pixels) it encodes in 0.18 s instead of 0.37 s on one core, at
18.5 vs 18.6 MB; maps of a photo with ReLU's zeros take half the time at 1.24 vs 1.37 MB, and ten RGB photos
come out at 2.66 vs 2.73 MB. Whole pages over the shipped photos grow a little: 14.4 vs 13.9 MB (resnet18),
36.0 vs 35.1 MB (mobilenet_v2), 0.51 vs 0.50 MB (the demo).

Photographs (a scan's top images, :func:`photo`) are lossy WebP, quality 85: at 224² the shipped photos
and four of scikit-image's take 8.9 KB each (SSIM 0.959 against the pixels) where JPEG takes 14.8 KB at
the same SSIM (quality 90) and PNG 79 KB (zlib level 6); 64² crops 0.9 vs 1.9 vs 6.9 KB. An image stays
PNG where lossless costs at most :data:`LOSSLESS_RATIO` times the WebP bytes (flat colours, line art: the
demo's 28² digits take 541 B as PNG, 242 B as WebP); photographs cost 6–9 times as much lossless. Maps,
filters and overlays are always PNG: their pixels are data.
"""

from __future__ import annotations

import io
import math
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..runtime.threads import allowed_cores
from .colormaps import palette
from .spool import Spool, Spooled

__all__ = ["PngEncoder", "grid_shape", "tile_atlas", "png_palette", "png_rgb", "png_size", "png_pixels", "photo"]

ZLIB_LEVEL = 1
ZLIB_STRATEGY = zlib.Z_RLE
MAX_PENDING_BYTES = 24 * 2**20  # tiles waiting for an encoder: about one batch of resnet18 × 8
WEBP_QUALITY = 85
WEBP_METHOD = 4  # libwebp's default effort: method 6 saves 5 % more in 4× the time
LOSSLESS_RATIO = 2.5


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of the grid for ``count`` tiles: a full rectangle at most 5:2 wide when ``count`` has
    such a divisor (32 → 4×8, 512 → 16×32), else the most square grid with a partly empty last row."""
    side = max(1, math.ceil(math.sqrt(count)))
    cols = next((c for c in range(side, 2 * side + 1) if count % c == 0 and 5 * (count // c) >= 2 * c), side)
    return math.ceil(count / cols), cols


def tile_atlas(tiles: np.ndarray, cols: int) -> np.ndarray:
    """Lay ``T×h×w`` (or ``T×h×w×3``) tiles row-major into one image, ``cols`` tiles wide, no gaps.

    Cells past the last tile are filled with zeros.
    """
    count, h, w = tiles.shape[:3]
    rows = math.ceil(count / cols)
    padded = tiles
    if rows * cols != count:
        padded = np.zeros((rows * cols, *tiles.shape[1:]), dtype=tiles.dtype)
        padded[:count] = tiles
    grid = padded.reshape(rows, cols, h, w, *tiles.shape[3:]).swapaxes(1, 2)
    return grid.reshape(rows * h, cols * w, *tiles.shape[3:])


def png_palette(indices: np.ndarray, colormap: str) -> bytes:
    """A 2-D uint8 array as a palette PNG (1 byte per pixel) with the colormap as its palette."""
    image = Image.fromarray(np.ascontiguousarray(indices, dtype=np.uint8), mode="L")
    image.putpalette(palette(colormap))
    return _save(image)


def png_rgb(pixels: np.ndarray) -> bytes:
    """An ``H×W×3`` (or ``H×W`` grey) uint8 array as a PNG."""
    mode = "RGB" if pixels.ndim == 3 else "L"
    return _save(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode=mode))


def photo(pixels: np.ndarray, width: int, height: int) -> tuple[bytes, str]:
    """An ``H×W×3`` (or grey) uint8 photograph resized to ``width``×``height`` (antialiased bilinear) and
    encoded, with its MIME type: WebP, or PNG where lossless costs little more (see the module's notes)."""
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    lossless = _save(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    lossy = buffer.getvalue()
    if len(lossless) <= LOSSLESS_RATIO * len(lossy):
        return lossless, "image/png"
    return lossy, "image/webp"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG ``data`` from its header; ``ValueError`` when it is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_pixels(data: bytes) -> np.ndarray:
    """PNG ``data`` decoded to uint8 H×W (grey) or H×W×3 (colour) pixels."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB"))


def _save(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=ZLIB_LEVEL, compress_type=ZLIB_STRATEGY)
    return buffer.getvalue()


class PngEncoder:
    """A thread pool for PNG encoding; use as a context manager, submit jobs, collect futures.

    With a ``spool``, each result goes to disk as soon as it is encoded and the future holds its handle.
    ``submit`` waits while more than ``max_pending`` bytes of arrays are queued, so a model that runs
    faster than the encoders cannot pile up every batch's tiles in memory.
    """

    def __init__(
        self, workers: int | None = None, spool: Spool | None = None, max_pending: int = MAX_PENDING_BYTES
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers or allowed_cores(), thread_name_prefix="png")
        self._spool = spool
        self._max_pending = max_pending
        self._pending = 0
        self._room = threading.Condition()

    def submit(self, job: Callable[..., bytes], *args: object) -> Future[bytes | Spooled]:
        size = sum(arg.nbytes for arg in args if isinstance(arg, np.ndarray))
        with self._room:
            self._room.wait_for(lambda: not self._pending or self._pending + size <= self._max_pending)
            self._pending += size
        future = self._pool.submit(self._encode, job, args)
        future.add_done_callback(lambda _: self._release(size))
        return future

    @property
    def pending(self) -> int:
        """Bytes of arrays queued or being encoded."""
        return self._pending

    def _release(self, size: int) -> None:
        with self._room:
            self._pending -= size
            self._room.notify_all()

    def _encode(self, job: Callable[..., bytes], args: tuple[object, ...]) -> bytes | Spooled:
        data = job(*args)
        return data if self._spool is None else self._spool.put(data)

    def __enter__(self) -> PngEncoder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Waits for every job; after an error, only for those already running (the rest are cancelled)."""
        self._pool.shutdown(wait=True, cancel_futures=kind is not None)
