"""PyTorch Lightning: record a training run as a featviz-report site (:class:`~featviz_report.Recorder`).

``trainer = L.Trainer(callbacks=[FeatvizCallback("site/", "samples/", every_n_epochs=5)])``. Lightning is an
optional extra (``pip install 'featviz-report[lightning]'``); either ``lightning`` or the older
``pytorch_lightning`` package works. Under DDP only global rank 0 records (the others would write the
same site); the other ranks carry on training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ReportConfig
from .errors import UsageError
from .recorder import Recorder
from .samples import SamplesArg

__all__ = ["FeatvizCallback"]


def _callback_base() -> type:
    """Lightning's ``Callback`` class, from ``lightning`` or else ``pytorch_lightning``."""
    import importlib

    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name).Callback  # type: ignore[no-any-return]
        except ImportError:
            continue
    raise UsageError("FeatvizCallback needs PyTorch Lightning: pip install 'featviz-report[lightning]'")


class FeatvizCallback(_callback_base()):  # type: ignore[misc]
    """Records ``pl_module`` every ``every_n_epochs`` training epochs (at their end), as step = the number
    of epochs done, into the site at ``site_dir``; ``config`` and ``compare`` as for :class:`Recorder`."""

    def __init__(
        self,
        site_dir: str | Path,
        samples: SamplesArg,
        every_n_epochs: int = 1,
        config: ReportConfig | None = None,
        *,
        compare: bool = False,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise UsageError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.recorder = Recorder(site_dir, samples, config, compare=compare)
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epochs = trainer.current_epoch + 1
        if trainer.is_global_zero and epochs % self.every_n_epochs == 0 and not trainer.sanity_checking:
            self.recorder.record(pl_module, epochs)
