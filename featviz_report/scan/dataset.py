"""Image folders as a ``torch.utils.data.Dataset`` for scans, and each process's share of them.

``ImageFiles`` decodes one file per item (in ``DataLoader`` workers), as the report's own samples are
decoded, and returns its index so results name files, not positions in a batch; a file that cannot be
read comes back flagged, to be skipped (and counted), never raised in a worker. It is the report's
:class:`~featviz_report.capture.samples.FileSamples` too, so the scan's graph and receptive fields are
recorded on its first image as a report's are on its first sample. ``ShardSampler`` is a
``DistributedSampler`` that does not pad: rank r of w takes files r, r + w, r + 2w, … so every file is
seen exactly once and the ranks' statistics add up to a single process's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..capture.samples import FileSamples, decode_image, to_inputs
from ..errors import SampleError

__all__ = ["ImageFiles", "ShardSampler"]


class ImageFiles(FileSamples, Dataset[tuple[torch.Tensor, int, bool]]):
    """``(input C×H×W, index, ok)`` per file; an unreadable file gives zeros and ``ok`` False."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        path = self.paths[index]
        try:
            pixels = decode_image(path, path.name, self.prep)
        except SampleError:
            return torch.zeros(self.prep.channels, self.prep.size, self.prep.size), index, False
        return to_inputs(np.stack([pixels]), self.prep)[0], index, True

    def pixels(self, index: int) -> np.ndarray:
        """The file as the model saw it, uint8 (for crops in the report)."""
        path = self.paths[index]
        return decode_image(path, path.name, self.prep)


class ShardSampler(DistributedSampler[int]):
    """``DistributedSampler`` without shuffling or padding, and able to resume after ``skip`` items."""

    def __init__(self, dataset: Dataset[object], num_replicas: int, rank: int, skip: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.skip = skip

    def indices(self) -> list[int]:
        """Every index of this rank's share, in order (what ``skip`` counts into)."""
        return list(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.indices()) - self.skip)
