"""The one fit function both trainings go through, and the Lightning ``Trainer`` it builds."""

from __future__ import annotations

import contextlib
import datetime
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sae.run.config_io import config_to_dict, config_to_yaml
from sae.run.engine import StepEngine
from sae.run.errors import UsageError
from sae.run.files import write_text
from sae.run.guards import (
    AtomicCheckpointIO,
    FiniteGuard,
    Interrupted,
    RankAgreement,
    StopOnSignal,
    last_checkpoint,
)
from sae.run.layout import RunDir
from sae.run.progress import progress_callback
from sae.run.runtime import (
    RuntimeConfig,
    apply_threads,
    flush_denormals,
    make_wandb_logger,
    retain_freed_memory,
)


class FitResult(NamedTuple):
    trainer: L.Trainer
    logger: Any
    """Lightning's WandbLogger, or None without wandb."""
    is_global_zero: bool
    world_size: int
    ranks_identical: bool
    """Every rank ended with bit-identical weights (checked by ``RankAgreement``)."""
    throughput: dict[str, float] | None
    """The engine's steady-state speed (``StepEngine.throughput``)."""

    def run_facts(self) -> dict[str, Any]:
        """What a run's record says about how it ran (``run.json``, the toy ``metrics.json``)."""
        return {
            "world_size": self.world_size,
            "ranks_identical": self.ranks_identical,
            "throughput": self.throughput,
        }


def fit(
    module: StepEngine,
    config: Any,
    out_dir: Path,
    resume: bool,
    callbacks: Sequence[Any] = (),
    job_type: str | None = None,
) -> FitResult:
    """Train ``module`` for its ``total_steps`` under a run ``config`` (a toy or SAE run: its
    ``runtime``, ``wandb``, ``train.log_every`` and ``train.checkpoint_every``): threads,
    wandb, the trainer, ``config.yaml`` on rank 0, resuming from ``last.ckpt``, TF32 on CUDA
    during training only, freed memory kept for reuse and denormals flushed on the CPU
    (``retain_freed_memory``, ``flush_denormals``).
    ``job_type``: the wandb run's ("toy", "sae")."""
    runtime = config.runtime
    apply_threads(runtime)
    logger = make_wandb_logger(config.wandb, out_dir, config_to_dict(config), job_type)
    trainer = make_trainer(
        runtime,
        module.total_steps,
        out_dir,
        logger,
        callbacks=callbacks,
        log_every=config.train.log_every,
        checkpoint_every=config.train.checkpoint_every,
    )
    device_type = trainer.strategy.root_device.type
    if device_type == "cpu":
        retain_freed_memory()
        flush_denormals()
    if trainer.is_global_zero:
        write_text(RunDir(out_dir).config, config_to_yaml(config))
    with _matmul_precision(runtime.tf32 and device_type == "cuda"):
        run_fit(trainer, module, range(module.total_steps), out_dir, resume)
    ranks = next(c for c in trainer.callbacks if isinstance(c, RankAgreement))
    return FitResult(
        trainer,
        logger,
        trainer.is_global_zero,
        ranks.world_size,
        ranks.identical,
        module.throughput,
    )


@contextlib.contextmanager
def _matmul_precision(tf32: bool) -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    if tf32:
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def make_trainer(
    runtime: RuntimeConfig,
    max_steps: int,
    out_dir: Path,
    logger: Any = None,
    callbacks: Sequence[Any] = (),
    log_every: int = 50,
    checkpoint_every: int = 1000,
) -> L.Trainer:
    """A Lightning ``Trainer`` configured for many tiny steps: no sanity checks, no model
    summary, atomic checkpoints in ``out_dir/checkpoints`` (``last.ckpt`` is what resumes),
    a NaN guard and a clean stop on SIGINT/SIGTERM."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelCheckpoint

    strategy: Any = runtime.strategy
    if runtime.devices * runtime.num_nodes > 1 or runtime.strategy != "auto":
        strategy = _ddp_strategy(runtime)
    checkpoint_every = max(1, min(max_steps, checkpoint_every))
    all_callbacks = [
        FiniteGuard(out_dir, log_every, checkpoint_every),
        StopOnSignal(out_dir),
        RankAgreement(),
    ]
    all_callbacks += list(callbacks)
    all_callbacks.append(
        ModelCheckpoint(
            dirpath=RunDir(out_dir).checkpoints,
            filename="step{step}",
            save_last=True,
            save_top_k=0,
            every_n_train_steps=checkpoint_every,
            auto_insert_metric_name=False,
        )
    )
    if runtime.progress_bar:
        all_callbacks.append(progress_callback())
    # The engine checkpoints after a chunk's optimizer steps, which is the state a resumed run
    # needs; Lightning's note that manual optimization saves post-step weights does not apply.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    try:
        return L.Trainer(
            accelerator=runtime.accelerator,
            devices=runtime.devices,
            num_nodes=runtime.num_nodes,
            strategy=strategy,
            precision=runtime.precision,
            max_steps=max_steps,
            max_epochs=-1,
            logger=logger if logger is not None else False,
            callbacks=all_callbacks,
            enable_progress_bar=runtime.progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=log_every,
            default_root_dir=str(out_dir),
            deterministic=False,
            use_distributed_sampler=False,
            plugins=[AtomicCheckpointIO()],
        )
    except (ValueError, RuntimeError, ImportError, MisconfigurationException) as e:
        raise UsageError(
            f"cannot set up devices (runtime.accelerator={runtime.accelerator}, "
            f"runtime.devices={runtime.devices}): {str(e).strip().splitlines()[0]}"
        ) from None


def _ddp_strategy(runtime: RuntimeConfig) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    start_method = {"ddp": "popen", "auto": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}
    return DDPStrategy(
        start_method=start_method[runtime.strategy],
        timeout=datetime.timedelta(seconds=runtime.collective_timeout_s),
        # Ranks start identical and keep their own counters (firing counts are summed across
        # ranks when read): broadcasting rank 0's buffers every step would overwrite them.
        broadcast_buffers=False,
    )


def run_fit(
    trainer: L.Trainer, module: L.LightningModule, data: Any, out_dir: Path, resume: bool
) -> None:
    """``trainer.fit`` from ``last.ckpt`` when resuming; signals and failures become one-line
    errors."""
    ckpt = last_checkpoint(out_dir)
    if resume and not ckpt.exists():
        raise UsageError(f"nothing to resume in {out_dir}: no {RunDir.RESUME_FROM}")
    stopper = next((c for c in trainer.callbacks if isinstance(c, StopOnSignal)), None)
    try:
        trainer.fit(module, train_dataloaders=data, ckpt_path=str(ckpt) if resume else None)
    except SIGTERMException:
        raise Interrupted(_interrupted_message(trainer, out_dir)) from None
    finally:
        if stopper is not None:
            stopper.restore()
    if stopper is not None and stopper.received is not None:
        raise Interrupted(_interrupted_message(trainer, out_dir))


def _interrupted_message(trainer: L.Trainer, out_dir: Path) -> str:
    return (
        f"interrupted at step {trainer.global_step}; checkpoint saved, continue with "
        f"--resume (output folder {out_dir})"
    )
