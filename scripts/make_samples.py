"""Write the natural photos of samples/photos/ from scikit-image's bundled data (a dev-time step only).

Each photo is resized so its shorter side is 256 pixels and saved as PNG, or as a quality-95 JPEG where
the PNG would be over 150 kB. All four are public domain or CC0 (see their ``skimage.data`` docstrings
and samples/README.md); scikit-learn's china.jpg and flower.jpg (CC BY 2.0) are left out. Nothing is
downloaded: these images ship inside scikit-image. Run: ``.venv/bin/python scripts/make_samples.py``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket}
SHORTER_SIDE = 256
MAX_PNG_BYTES = 150_000


def encode(image: Image.Image) -> tuple[str, bytes]:
    """The PNG bytes, or quality-95 JPEG bytes where the PNG is over ``MAX_PNG_BYTES``, and the suffix."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > MAX_PNG_BYTES:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        return ".jpg", buffer.getvalue()
    return ".png", buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "samples" / "photos")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        image = Image.fromarray(load())
        scale = SHORTER_SIDE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        suffix, encoded = encode(image)
        for stale in (".png", ".jpg"):
            (args.out / f"{name}{stale}").unlink(missing_ok=True)
        path = args.out / f"{name}{suffix}"
        path.write_bytes(encoded)
        print(f"wrote {path} {image.size} ({len(encoded)} bytes)")


if __name__ == "__main__":
    main()
