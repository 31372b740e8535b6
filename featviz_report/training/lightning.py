"""PyTorch Lightning: record a training run as a featviz-report site (:class:`~featviz_report.Recorder`).

``trainer = L.Trainer(callbacks=[FeatvizCallback("site/", "samples/", every_n_epochs=5)])``. Lightning is an
optional extra (``pip install 'featviz-report[lightning]'``); either ``lightning`` or the older
``pytorch_lightning`` package works. Under DDP only global rank 0 records (the others would write the
same site); the other ranks carry on training.

A callback never ends the training it watches: a recording that fails is one warning line on stderr
(``featviz-report: warning: ...``, the same failure said once) and training goes on. What is recorded is
the LightningModule when it has a ``forward``; else ``module=`` says which part (a submodule's name, or a
function of the LightningModule returning an ``nn.Module``); else its only child module, when it has
exactly one (Lightning's quick-start keeps ``self.encoder`` and ``self.decoder`` and no ``forward``: then
nothing is recorded, and a warning says to pass ``module=``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..capture.samples import SamplesArg
from ..config import ReportConfig
from ..errors import FeatvizError, UsageError, first_line
from .recorder import Recorder

__all__ = ["FeatvizCallback"]

ModuleSelector = str | Callable[[Any], nn.Module]


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
    """Records the model every ``every_n_epochs`` training epochs (at their end), as step = the number of
    epochs done, into the site at ``site_dir``; ``config`` and ``compare`` as for :class:`Recorder`.

    ``module`` says what to record: the name of a submodule of the LightningModule (``"encoder"``,
    ``"backbone.body"``) or a function taking the LightningModule and returning an ``nn.Module``. Without
    it, the LightningModule itself when it defines ``forward``, else its single child module if it has
    exactly one, else nothing (with one warning)."""

    def __init__(
        self,
        site_dir: str | Path,
        samples: SamplesArg,
        every_n_epochs: int = 1,
        config: ReportConfig | None = None,
        *,
        compare: bool = False,
        module: ModuleSelector | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise UsageError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        if module is not None and not (isinstance(module, str) and module or callable(module)):
            raise UsageError(f"module must be a submodule's name or a function returning an nn.Module, got {module!r}")
        self.recorder = Recorder(site_dir, samples, config, compare=compare)
        self.every_n_epochs = every_n_epochs
        self.module = module
        self._said: set[str] = set()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Say at once, not after the first epochs, when there is nothing to record."""
        if trainer.is_global_zero:
            self._guarded(lambda: self._target(pl_module), "cannot record")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epochs = trainer.current_epoch + 1
        if trainer.is_global_zero and epochs % self.every_n_epochs == 0 and not trainer.sanity_checking:
            self._guarded(lambda: self._record(pl_module, epochs), f"could not record epoch {epochs}")

    def _record(self, pl_module: Any, epochs: int) -> None:
        target = self._target(pl_module)
        if target is not None:
            self.recorder.record(target, epochs)

    def _target(self, pl_module: Any) -> nn.Module | None:
        """What to record (see the class), or ``None`` after a warning."""
        name = type(pl_module).__name__
        if isinstance(self.module, str):
            try:
                return pl_module.get_submodule(self.module)  # type: ignore[no-any-return]
            except AttributeError as err:
                raise UsageError(f"module={self.module!r}: {name} has no such submodule ({first_line(err)})") from None
        if self.module is not None:
            chosen = self.module(pl_module)
            if not isinstance(chosen, nn.Module):
                raise UsageError(f"module={_label(self.module)} returned {type(chosen).__name__}, not an nn.Module")
            return chosen
        if _has_forward(pl_module):
            return pl_module  # type: ignore[no-any-return]
        children = list(pl_module.named_children())
        if len(children) == 1:
            return children[0][1]  # type: ignore[no-any-return]
        parts = ", ".join(n for n, _ in children[:6]) + (", …" if len(children) > 6 else "")
        held = f"{len(children)} child modules ({parts})" if children else "no child modules"
        self._say(
            f"{name} has no forward and {held}: nothing is recorded; pass FeatvizCallback(..., module='NAME') "
            "or module=lambda m: ... to say which part to record"
        )
        return None

    def _guarded(self, step: Callable[[], object], doing: str) -> None:
        """Run ``step``; any failure is a warning line, never the end of training."""
        try:
            step()
        except Exception as err:  # noqa: BLE001 - a callback must not stop the training it watches
            cause = first_line(err) if isinstance(err, FeatvizError) else f"{type(err).__name__}: {first_line(err)}"
            self._say(f"FeatvizCallback {doing}: {cause}; training goes on", key=cause)

    def _say(self, text: str, key: str | None = None) -> None:
        """One line on stderr, once per kind of failure (the same one at later epochs is not repeated)."""
        if (key or text) in self._said:
            return
        self._said.add(key or text)
        try:
            print(f"featviz-report: warning: {text}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # stderr closed: not a reason to stop training


def _has_forward(module: nn.Module) -> bool:
    """Whether the LightningModule's class (not Lightning's or torch's) defines ``forward``."""
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            owner = cls.__module__.split(".")[0]
            return cls is not nn.Module and owner not in ("lightning", "pytorch_lightning")
    return False


def _label(function: Callable[..., object]) -> str:
    return getattr(function, "__qualname__", None) or repr(function)
