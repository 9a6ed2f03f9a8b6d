"""What keeps a run from losing work: atomic checkpoints, a stop on NaN that keeps the last good
checkpoint, a checkpoint on SIGINT/SIGTERM, and the rank-agreement check."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sae.run.engine import ChunkCallback
from sae.run.errors import RunError, UsageError
from sae.run.files import atomic_path
from sae.run.layout import RunDir


class Interrupted(RunError):
    """The run was stopped by a signal after saving a checkpoint."""

    exit_code = 130


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed into place."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A damaged checkpoint is one line naming the file, not torch's unpickling trace."""
        try:
            checkpoint = super().load_checkpoint(path, *args, **kwargs)
        except FileNotFoundError:
            raise UsageError(f"checkpoint not found: {path}") from None
        except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            first = str(e).strip().split("\n")[0].split(". ")[0] or type(e).__name__
            raise UsageError(f"{path}: unreadable checkpoint ({first})") from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise UsageError(f"{path}: not a training checkpoint (no state_dict)")
        return checkpoint


class FiniteGuard(ChunkCallback):
    """Stops the run on a NaN/Inf loss or weight. Checks only on logging and checkpoint steps
    (no per-step host sync); ModelCheckpoint runs after this callback, so a bad state is never
    saved and the last checkpoint on disk stays good."""

    def __init__(self, out_dir: Path, *every: int) -> None:
        self.out_dir = out_dir
        self.every = every

    def on_chunk_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any) -> None:
        step = trainer.global_step
        if all(step % n for n in self.every) and step != trainer.max_steps:
            return
        loss = out.loss
        # One host sync for the loss and every weight together.
        ok = bool(
            torch.stack(
                [torch.isfinite(loss).all()]
                + [torch.isfinite(p).all() for p in module.parameters()]
            ).all()
        )
        if not ok:
            last = RunDir(self.out_dir).last_checkpoint
            kept = f"; last good checkpoint: {last}" if last.exists() else ""
            raise RunError(
                f"training diverged: loss or weights became NaN/Inf by step {step}{kept} "
                "(try a lower learning rate)"
            )


class StopOnSignal(ChunkCallback):
    """SIGINT or SIGTERM: finish the current step, save ``last.ckpt`` and stop.

    One process stops here; under DDP the flag rides on Lightning's own per-step SIGTERM
    broadcast from rank 0, which raises on every rank at the same step."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.received: int | None = None
        self._trainer: Any = None
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._trainer = trainer
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self._trainer is not None:
            # Private: Lightning reads its SIGTERM flag (public, read-only, as
            # trainer.received_sigterm) to stop every rank at the same step, and offers no public
            # way to raise it. tests/test_library_contracts.py fails if the flag moves.
            self._trainer._signal_connector.received_sigterm = True

    def on_chunk_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any) -> None:
        if self.received is not None and trainer.world_size == 1:
            self._save(trainer)
            trainer.should_stop = True

    def on_exception(
        self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self._save(trainer)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _save(self, trainer: L.Trainer) -> None:
        finite = all(bool(torch.isfinite(p).all()) for p in trainer.lightning_module.parameters())
        if finite:
            trainer.save_checkpoint(RunDir(self.out_dir).last_checkpoint)


class RankAgreement(Callback):
    """At the end of a multi-process run, checks that every rank holds bit-identical weights
    (they must: same initialisation, all-reduced gradients, identical resampling). ``fit``
    reports ``world_size`` and ``identical`` in its result."""

    def __init__(self) -> None:
        self.world_size = 1
        self.identical = True

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.world_size, self.identical = trainer.world_size, True
        if trainer.world_size == 1:
            return
        flat = torch.cat([p.detach().flatten() for p in module.parameters()])
        gathered = trainer.strategy.all_gather(flat)
        self.identical = bool((gathered == gathered[0]).all())
        if not self.identical:
            raise RunError("ranks ended with different weights; the run is not data-parallel-safe")


def last_checkpoint(out_dir: Path) -> Path:
    return RunDir(out_dir).last_checkpoint
