"""encode.py and spool.py: atlas layout, palette PNGs, determinism, images parked on disk."""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featviz_report.render.colormaps import palette
from featviz_report.render.encode import PngEncoder, grid_shape, png_palette, png_rgb, tile_atlas
from featviz_report.render.spool import Spool, Spooled
from featviz_report.report_data import Png


def test_grid_shape_is_square_ish_and_holds_everything() -> None:
    assert grid_shape(1) == (1, 1)
    assert grid_shape(16) == (4, 4)
    assert grid_shape(32) == (4, 8) and grid_shape(512) == (16, 32) and grid_shape(10) == (2, 5)
    assert grid_shape(17) == (4, 5)  # a prime: a partly empty last row
    for count in range(1, 300):
        rows, cols = grid_shape(count)
        assert rows * cols >= count and cols >= rows and (rows - 1) * cols < count


def test_tile_atlas_places_tiles_row_major_and_pads_with_zeros() -> None:
    tiles = np.stack([np.full((2, 3), i + 1, np.uint8) for i in range(5)])
    atlas = tile_atlas(tiles, cols=3)
    assert atlas.shape == (4, 9)
    assert atlas[0, 0] == 1 and atlas[0, 3] == 2 and atlas[0, 6] == 3
    assert atlas[2, 0] == 4 and atlas[2, 3] == 5
    assert (atlas[2:, 6:] == 0).all()
    rgb = tile_atlas(np.zeros((4, 2, 2, 3), np.uint8), cols=2)
    assert rgb.shape == (4, 4, 3)


def test_palette_png_keeps_the_values_as_indices_and_carries_the_colormap() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = Image.open(io.BytesIO(png_palette(values, "viridis")))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), values)
    assert bytes(image.getpalette()[: 256 * 3]) == palette("viridis")
    assert np.asarray(image.convert("RGB"))[0, 0].tolist() == list(palette("viridis")[:3])


def test_encoding_is_deterministic_and_threaded() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    with PngEncoder(workers=2) as encoder:
        first = [encoder.submit(png_rgb, a).result() for a in arrays]
        second = [f.result() for f in [encoder.submit(png_rgb, a) for a in arrays]]
    assert first == second
    assert all(b.startswith(b"\x89PNG") for b in first)


def test_spooled_results_read_back_byte_for_byte_from_an_anonymous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 255, (16 + i, 20, 3), dtype=np.uint8) for i in range(6)]
    spool = Spool()
    with PngEncoder(workers=2, spool=spool) as encoder:
        handles = [f.result() for f in [encoder.submit(png_rgb, a) for a in arrays]]
    assert all(isinstance(h, Spooled) for h in handles)
    assert [Png(h, 20, 16).data for h in handles] == [png_rgb(a) for a in arrays]
    assert spool.size == sum(h.length for h in handles)  # type: ignore[union-attr]
    assert not any(tmp_path.iterdir())  # unlinked at once: nothing to clean up


def test_submit_waits_while_too_many_bytes_are_queued() -> None:
    release, order = threading.Event(), []

    def slow(array: np.ndarray) -> bytes:
        release.wait(5)
        order.append("encoded")
        return array.tobytes()

    with PngEncoder(workers=1, max_pending=100) as encoder:
        first = encoder.submit(slow, np.zeros(80, np.uint8))
        assert encoder.pending == 80
        second = threading.Thread(
            target=lambda: (encoder.submit(bytes, np.zeros(80, np.uint8)), order.append("queued"))
        )
        second.start()
        second.join(0.2)
        assert second.is_alive() and not order  # 80 + 80 bytes would exceed the bound: the caller waits
        release.set()
        second.join(5)
        assert order == ["encoded", "queued"] and first.result() == bytes(80)
