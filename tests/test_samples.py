"""samples.py: finding, decoding and preprocessing images; labels; tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featviz_report.capture.samples import (
    FileSamples,
    Preprocess,
    TensorSamples,
    find_images,
    parse_normalize,
    read_labels,
)
from featviz_report.errors import InputError, SampleError, UsageError


def test_folders_are_searched_recursively_sorted_and_deduplicated(image_folder: Path) -> None:
    (image_folder / "notes.txt").write_text("not an image")
    found = find_images([image_folder, image_folder / "a.png"])
    assert [p.relative_to(image_folder).as_posix() for p in found] == ["a.png", "b.png", "c.jpg", "sub/d.png"]


@pytest.mark.parametrize(
    ("paths", "message"),
    [(["missing-folder"], "does not exist"), ([], "no sample images given")],
)
def test_missing_samples_are_named(tmp_path: Path, paths: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        find_images([tmp_path / p for p in paths])


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no image files"):
        find_images([tmp_path])


def _one(path: Path, prep: Preprocess) -> tuple[torch.Tensor, np.ndarray]:
    batch = next(FileSamples([path], prep).batches(4))
    return batch.inputs[0], batch.thumbnails[0]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_common_mode_is_converted_to_what_the_model_expects(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"img.{'tif' if mode == 'CMYK' else 'png'}"
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8))
    image = base.convert("I;16") if mode == "I;16" else base.convert(mode)
    image.save(path)
    for channels in (1, 3):
        inputs, thumb = _one(path, Preprocess(16, channels))
        assert tuple(inputs.shape) == (channels, 16, 16)
        assert 0.0 <= float(inputs.min()) and float(inputs.max()) <= 1.0
        assert thumb.shape[:2] == (16, 16)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    inputs, _ = _one(path, Preprocess(8, 1))
    assert float(inputs.mean()) == pytest.approx(128 / 255, abs=0.01)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    wide = Image.new("L", (40, 20), 0)
    wide.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    wide.save(tmp_path / "o.jpg", exif=exif, quality=100)
    inputs, _ = _one(tmp_path / "o.jpg", Preprocess(20, 1))
    assert float(inputs[0, :5].mean()) > 0.9 and float(inputs[0, -5:].mean()) < 0.1  # now the top is white


def test_resize_is_shorter_side_then_centre_crop(tmp_path: Path) -> None:
    image = np.zeros((20, 60), np.uint8)
    image[:, 20:40] = 255
    Image.fromarray(image).save(tmp_path / "bar.png")
    inputs, _ = _one(tmp_path / "bar.png", Preprocess(10, 1))
    assert float(inputs[0, :, 1:-1].min()) == 1.0  # only the white middle third survives the crop
    assert float(inputs.min()) > 0.8  # its edges blend a little with the black beside it


def test_normalisation_is_applied_per_channel(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), (255, 0, 255)).save(tmp_path / "m.png")
    mean, std = parse_normalize("imagenet", 3)
    inputs, _ = _one(tmp_path / "m.png", Preprocess(4, 3, mean, std))
    assert inputs[:, 0, 0].tolist() == pytest.approx([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225])


def test_unreadable_files_are_skipped_by_name_or_raise_when_strict(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("L", (8, 8), 200).save(good)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.png").write_bytes(b"")
    paths = [tmp_path / "broken.png", good, tmp_path / "empty.png"]
    samples = FileSamples(paths, Preprocess(8, 1))
    (batch,) = list(samples.batches(8))
    assert batch.names == ["good.png"] and tuple(batch.inputs.shape) == (1, 1, 8, 8)
    assert [name for name, _ in samples.skipped] == ["broken.png", "empty.png"]
    assert samples.skipped[1][1] == "empty file"
    with pytest.raises(SampleError, match="'broken.png'"):
        list(FileSamples(paths, Preprocess(8, 1), strict=True).batches(8))


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(SampleError, match="'bomb.png'.*decompression bomb"):
        list(FileSamples([tmp_path / "bomb.png"], Preprocess(8, 1), strict=True).batches(8))


def test_normalize_specs() -> None:
    assert parse_normalize("none", 3) is None
    assert parse_normalize("0.5,0.25", 3) == ((0.5,) * 3, (0.25,) * 3)
    assert parse_normalize("0.1,0.2,0.3,1,2,3", 3) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    with pytest.raises(UsageError, match="--normalize 'abc'"):
        parse_normalize("abc", 3)


def test_labels_from_text_and_json(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("cat\n\ndog\n")
    (tmp_path / "l.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    assert read_labels(tmp_path / "l.txt") == ("cat", "dog")
    assert read_labels(tmp_path / "l.json") == ("a", "b")
    with pytest.raises(InputError, match="JSON list of strings"):
        read_labels(tmp_path / "bad.json")


def test_tensor_samples_are_used_as_is_with_min_max_thumbnails() -> None:
    tensor = torch.linspace(-3, 5, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    batch = next(TensorSamples(tensor).batches(8))
    assert batch.inputs is not None and torch.equal(batch.inputs, tensor)
    assert batch.thumbnails[0].shape == (4, 4, 3)
    assert batch.thumbnails[0].min() == 0 and batch.thumbnails[0].max() == 255
    with pytest.raises(InputError, match="N×C×H×W"):
        TensorSamples(torch.zeros(3, 4, 4))
