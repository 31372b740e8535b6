"""The embedded demo model: a small CNN for 28×28 handwritten digits.

In the spirit of the classic MNIST tutorial (three convolutions, pooling, two fully connected layers),
trained by ``scripts/train_demo.py`` on the digits bundled with scikit-learn. Every ReLU is a separate
``inplace=True`` module, so the demo also exercises capture of conv outputs that an inplace op follows.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "DIGIT_LABELS", "INPUT_SIZE"]

INPUT_SIZE = 28
DIGIT_LABELS = tuple(str(d) for d in range(10))


class DigitsCNN(nn.Module):
    """1×28×28 grey digit (white stroke on black, values in [0, 1]) → 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.pool3 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 3 * 3, 64)
        self.relu4 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        x = self.dropout(self.relu4(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)
