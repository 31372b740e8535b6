"""Regenerate ``featviz_report/render/colormaps.py`` from matplotlib's tables (a dev-time step only).

Run: ``.venv/bin/python scripts/make_colormaps.py``. The runtime never imports matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps

NAMES = ("viridis", "magma", "twilight", "RdBu_r")
TARGET = Path(__file__).resolve().parent.parent / "featviz_report" / "colormaps.py"

HEADER = '''"""256-entry RGB lookup tables for the colormaps, as palettes for 1-byte-per-pixel PNGs.

Generated from matplotlib by ``scripts/make_colormaps.py``; ``diverging`` (matplotlib's RdBu_r) is the
palette for weights, centred at 0. ``gray`` is the identity ramp.
"""

from __future__ import annotations

__all__ = ["palette", "PALETTE_NAMES"]

_HEX = {
'''

FOOTER = '''}

PALETTE_NAMES = ("gray", *_HEX)


def palette(name: str) -> bytes:
    """The 768-byte RGB palette of colormap ``name`` (index 0 = lowest value)."""
    if name == "gray":
        return bytes(v for v in range(256) for _ in range(3))
    return bytes.fromhex(_HEX[name])
'''


def main() -> None:
    lines = []
    for name in NAMES:
        rgb = (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
        key = "diverging" if name == "RdBu_r" else name
        hexed = rgb.tobytes().hex()
        chunks = [hexed[i : i + 96] for i in range(0, len(hexed), 96)]
        lines.append(f'    "{key}": (\n' + "".join(f'        "{c}"\n' for c in chunks) + "    ),\n")
    TARGET.write_text(HEADER + "".join(lines) + FOOTER)


if __name__ == "__main__":
    main()
