"""Write the natural photos of samples/photos/ from scikit-image's bundled data (a dev-time step only).

Each photo is resized so its shorter side is 256 pixels and saved as PNG. The licences are in
samples/README.md: all four are public domain or CC0. Run: ``.venv/bin/python scripts/make_samples.py``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket}
SHORTER_SIDE = 256


def main() -> None:
    folder = ROOT / "samples" / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        image = Image.fromarray(load())
        scale = SHORTER_SIDE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        image.save(folder / f"{name}.png", optimize=True)
        print(f"wrote {folder / f'{name}.png'} {image.size}")


if __name__ == "__main__":
    main()
