"""Encoded images parked on disk until the page is written, so memory stays flat however many samples.

A :class:`Spool` is one anonymous temporary file (unlinked at once: nothing is left behind, even after a
crash). Encoder threads append PNG bytes under a lock; the renderer reads each image back once with
``os.pread``. A :class:`Spooled` handle is what a :class:`~featviz_report.report_data.Png` holds instead of
the bytes themselves; the file closes when the last handle is gone.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass

from ..errors import OutputError

__all__ = ["Spool", "Spooled"]


class Spool:
    """An append-only store of byte strings in an anonymous temporary file."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="featviz-", suffix=".spool")
        self._lock = threading.Lock()
        self._size = 0

    def put(self, data: bytes) -> Spooled:
        """Append ``data``; the handle reads it back."""
        with self._lock:
            offset = self._size
            view = memoryview(data)
            try:
                while view:
                    view = view[os.pwrite(self._file.fileno(), view, self._size) :]
                    self._size = offset + len(data) - len(view)
            except OSError as err:
                raise OutputError(
                    f"cannot keep encoded images in the temporary folder: {err.strerror or err}"
                ) from None
        return Spooled(self, offset, len(data))

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._file.fileno(), length, offset)

    @property
    def size(self) -> int:
        """Bytes stored so far."""
        return self._size


@dataclass(frozen=True)
class Spooled:
    """Where one image's bytes are in a :class:`Spool`."""

    spool: Spool
    offset: int
    length: int

    def read(self) -> bytes:
        return self.spool.read(self.offset, self.length)
