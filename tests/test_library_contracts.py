"""The few private Lightning, wandb and torch attributes the toolkit touches, each because no
public way exists (the comment at each use says why). These tests fail loudly when a library
release moves one of them, before a run silently misbehaves."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import torch

from sae.run.engine import StepEngine, StepOutput
from sae.run.fit import make_trainer, run_fit
from sae.run.runtime import RuntimeConfig


class _Recorder(StepEngine):
    """A one-parameter engine that records the hook name Lightning set during its steps."""

    def __init__(self, steps: int, steps_per_call: int) -> None:
        super().__init__(steps, (), steps_per_call)
        self.w = torch.nn.Parameter(torch.ones(3))
        self.fx_names: set[str] = set()

    def train_step(self, step: int) -> StepOutput:
        self.fx_names.add(self._current_fx_name)
        return StepOutput((self.w**2).sum())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_engine_private_hooks_still_hold(tmp_path: Path) -> None:
    """``_current_fx_name`` (StepEngine.__setattr__) is set around training_step, and advancing
    the manual-optimization progress counter (engine._advance_global_step) is what moves
    ``trainer.global_step``: 10 steps in chunks of 4 end at global_step 10."""
    module = _Recorder(10, steps_per_call=4)
    runtime = RuntimeConfig(accelerator="cpu", progress_bar=False)
    trainer = make_trainer(runtime, 10, tmp_path)
    run_fit(trainer, module, range(10), tmp_path, resume=False)
    assert module.fx_names == {"training_step"}
    assert trainer.global_step == 10
    loop = trainer.fit_loop.epoch_loop.manual_optimization
    assert loop.optim_step_progress.total.completed == 10


def test_sigterm_flag_is_the_signal_connectors() -> None:
    """guards.StopOnSignal raises Lightning's SIGTERM flag through ``_signal_connector``."""
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert trainer.received_sigterm is False
    trainer._signal_connector.received_sigterm = True
    assert trainer.received_sigterm is True


def test_wandb_logger_keeps_its_init_arguments(tmp_path: Path) -> None:
    """runtime.make_wandb_logger drops the ``anonymous`` argument Lightning always passes."""
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    assert "anonymous" in logger._wandb_init


def test_wandb_run_reports_offline_publicly() -> None:
    """runtime.wandb_run_info reads ``run.offline`` (public since it replaced settings._offline)."""
    from wandb.sdk.wandb_run import Run

    assert isinstance(inspect.getattr_static(Run, "offline"), property)


def test_ddp_reads_require_backward_grad_sync() -> None:
    """StepEngine.on_train_start turns DDP's reducer off through the switch ``no_sync`` flips."""
    ddp = torch.nn.parallel.DistributedDataParallel
    assert "require_backward_grad_sync" in inspect.getsource(ddp.no_sync)
    assert "require_backward_grad_sync" in inspect.getsource(ddp)
