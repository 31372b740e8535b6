"""Trained networks nobody here trained, for checks that need real learned features.

``onet()``: MTCNN's ONet (the last stage of the MTCNN face detector: 48×48 RGB face crops in, face
probability, box and landmarks out), with the weights the ``facenet-pytorch`` wheel ships
(``facenet_pytorch/data/onet.pt``, MIT licence), installed by the dev set-up with ``--no-deps`` (its
pins are for an old torch). The architecture is declared here as facenet-pytorch declares it, so the
package itself (which imports ``requests`` and downloads other models) is never imported.
``natural_images(size)``: real photographs bundled with scikit-image, centre-cropped and resized.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

ONET_SIZE = 48
ONET_NORMALIZE = "0.5,0.50196"  # facenet-pytorch: (x·255 − 127.5) / 128


def onet_weights() -> Path | None:
    """Where the installed facenet-pytorch wheel keeps ONet's weights (None when it is not installed)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "onet.pt"
    return path if path.is_file() else None


class ONet(nn.Module):
    """MTCNN's ONet, as facenet-pytorch declares it; returns (box, landmarks, face probability)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def onet() -> ONet:
    path = onet_weights()
    assert path is not None, "facenet-pytorch is not installed (make test installs it)"
    model = ONet()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def natural_images(folder: Path, size: int) -> list[Path]:
    """scikit-image's bundled colour photographs (faces, animals, objects), centre-cropped to squares of
    ``size`` and saved as PNG under ``folder``."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat")
    paths = []
    for name in names:
        pixels = np.asarray(getattr(data, name)())[..., :3]
        h, w = pixels.shape[:2]
        side = min(h, w)
        square = pixels[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        path = folder / f"{name}.png"
        Image.fromarray(square).resize((size, size), Image.BICUBIC).save(path)
        paths.append(path)
    return paths
