"""The base of both training modules: each Lightning call runs a chunk of optimizer steps.

Lightning's fixed cost per training step (hook dispatch, progress tracking: about 0.4 ms) is as
large as a whole toy-model step, so ``StepEngine`` uses manual optimization and runs ``k``
optimizer steps inside one ``training_step``. Chunks end on every event boundary (logging,
checkpoints, resampling, the last step), so those happen exactly where they would with one step
per call, and results do not depend on ``k`` (bit for bit). ``k`` comes from
``runtime.steps_per_call``, or, when that is None, from the measured cost of a step: enough
steps to fill about ``CALL_SECONDS`` of work per call.

A subclass implements ``train_step(step) -> StepOutput`` (draw the batch, forward, log on
logging steps; the engine runs the backward unless the step has set the gradients) and may
hook ``before_update`` (gradients ready), ``after_update`` (weights updated) and
``after_chunk`` (at a boundary: resampling). One whose step sets the gradients by hand outside
autocast sets ``sets_own_gradients``: its steps then run in inference mode.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

CALL_SECONDS = 0.05
"""Work per Lightning call that automatic ``k`` aims for: Lightning's cost is then ~1%."""
MAX_STEPS_PER_CALL = 10_000
CALIBRATION_STEPS = 8


@dataclass
class StepOutput:
    """What one optimizer step hands back to the engine, and a chunk to its callbacks (Lightning
    passes ``training_step``'s ``{"loss": ..., "step": StepOutput}`` to ``on_train_batch_end``;
    ``StepOutput.of(outputs)`` reads it there)."""

    loss: Tensor
    """The scalar loss, before its backward pass (detached once the chunk is done)."""
    scalars: dict[str, float] | None = None
    """On a logging step: the logged record (``"step"`` first), for ``metrics.jsonl``."""
    firing_frequency: Tensor | None = None
    """On an SAE logging step: [instances, d_sae] firing frequency since the last one (CPU)."""
    gradients_ready: bool = False
    """True when ``train_step`` has already put the loss's gradients in the parameters'
    ``.grad`` (its own backward); the engine then runs none."""

    @staticmethod
    def of(outputs: Any) -> StepOutput | None:
        return outputs.get("step") if isinstance(outputs, dict) else None


class ChunkCallback(Callback):
    """A callback that runs after each Lightning call (a chunk of optimizer steps) with what
    the chunk handed back: ``on_chunk_end(trainer, module, out)``."""

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        self.on_chunk_end(trainer, module, StepOutput.of(outputs))

    def on_chunk_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any) -> None:
        """``out``: the chunk's ``StepOutput`` (None if the module is not a ``StepEngine``)."""


class StepEngine(L.LightningModule):
    automatic_optimization = False

    def __init__(
        self, total_steps: int, event_periods: Sequence[int], steps_per_call: int | None
    ) -> None:
        super().__init__()
        self.total_steps = total_steps
        self.event_periods = tuple(p for p in event_periods if p > 0)
        self.steps_per_call = steps_per_call
        self._calls = 0
        self._chosen_steps_per_call = 1
        self._timed_from: tuple[float, int] | None = None
        self.throughput: dict[str, float] | None = None
        """Steady-state training speed after fit (steps after the first call): ``steps``,
        ``seconds``, ``steps_per_second``, ``steps_per_call``."""

    # -- what a subclass provides --------------------------------------------------------
    def train_step(self, step: int) -> StepOutput:
        """The loss of optimizer step ``step`` (0-based), before its backward pass, and what a
        logging step logged."""
        raise NotImplementedError

    def before_update(self, step: int) -> None:
        """Gradients of ``step`` are ready (summed over ranks); the optimizer has not run."""

    def after_update(self, step: int) -> None:
        """The optimizer and the schedule have taken ``step``."""

    def after_chunk(self, done: int) -> None:
        """``done`` steps are finished and ``done`` is an event boundary."""

    sets_own_gradients = False
    """True for a module whose ``train_step`` computes its gradients without autograd, except
    under autocast (bf16-mixed), where it falls back to autograd's backward (the SAE and toy
    steps)."""

    def step_uses_autograd(self) -> bool:
        """Whether ``train_step`` needs autograd (a loss for the engine to run ``backward`` on,
        or an autograd fallback); when False the chunk runs under ``torch.inference_mode``."""
        return not self.sets_own_gradients or torch.is_autocast_enabled(self.device.type)

    def world_and_rank(self) -> tuple[int, int]:
        """(processes in the run, this one's rank); (1, 0) outside a trainer."""
        try:
            trainer = self.trainer  # Lightning raises RuntimeError when none is attached
        except RuntimeError:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    # -- the loop ------------------------------------------------------------------------
    def chunk_length(self, start: int, k: int) -> int:
        """Steps of the call that starts at ``start``: at most ``k``, ending no later than the
        next event boundary (a multiple of an event period, or the last step)."""
        end = min(self.total_steps, start + max(1, k))
        for p in self.event_periods:
            end = min(end, (start // p + 1) * p)
        return max(1, end - start)

    def is_boundary(self, done: int) -> bool:
        """Whether finishing ``done`` steps ends the run or an event period."""
        return done == self.total_steps or any(done % p == 0 for p in self.event_periods)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        start = self.global_step
        timed = self.steps_per_call is None and self._calls == 1
        k = self.chunk_length(start, self._target_steps())
        optimizer = self.optimizers().optimizer
        schedule = self.lr_schedulers()
        t0 = self._clock() if timed else 0.0
        # A step with its own backward needs no autograd at all: inference mode spares every
        # op autograd's bookkeeping (~4% of a small SAE step on one CPU core).
        with torch.inference_mode(not self.step_uses_autograd()):
            loss, logged = self._run_steps(start, k, optimizer, schedule)
        if timed:
            per_step = (self._clock() - t0) / k
            chosen = int(min(MAX_STEPS_PER_CALL, max(1, round(CALL_SECONDS / max(per_step, 1e-9)))))
            # Every rank must run the same chunks (they meet in the same collectives).
            self._chosen_steps_per_call = int(self.trainer.strategy.broadcast(chosen, src=0))
        self._calls += 1
        if self._calls == 1:  # time steady-state training from here (after the warm-up call)
            self._timed_from = (self._clock(), start + k)
        _advance_global_step(self.trainer, k)
        if self.is_boundary(start + k):
            self.after_chunk(start + k)
        loss = loss.detach()
        logged = logged or StepOutput(loss)
        return {"loss": loss, "step": StepOutput(loss, logged.scalars, logged.firing_frequency)}

    def _run_steps(
        self, start: int, k: int, optimizer: torch.optim.Optimizer, schedule: Any
    ) -> tuple[Tensor, StepOutput | None]:
        """Optimizer steps ``start`` to ``start + k - 1``; the last loss and the logging step's
        output (None if none logged)."""
        logged: StepOutput | None = None
        distributed = self.trainer.world_size > 1
        for step in range(start, start + k):
            out = self.train_step(step)
            if out.scalars is not None or out.firing_frequency is not None:
                logged = out  # a logging step ends its chunk: at most one a call
            loss = out.loss
            if not out.gradients_ready:
                loss.backward()
            if distributed:
                self._sync_gradients(optimizer)
            self.before_update(step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if schedule is not None:
                schedule.step()
            self.after_update(step)
        return loss, logged

    def _target_steps(self) -> int:
        if self.steps_per_call is not None:
            return self.steps_per_call
        if self._calls == 0:  # warm-up: allocations, optimizer state, kernels
            return 1
        if self._calls == 1:
            return CALIBRATION_STEPS
        return self._chosen_steps_per_call

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients over ranks: one all-reduce of all gradients together.

        DDP's own reducer expects one backward per forward of its wrapper; this loop runs many,
        so ``fit`` switches the reducer off and the engine reduces here instead."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def on_train_end(self) -> None:
        if self._timed_from is None:
            return
        t0, first = self._timed_from
        seconds, steps = self._clock() - t0, self.global_step - first
        self.throughput = {
            "steps": steps,
            "seconds": round(seconds, 4),
            "steps_per_second": round(steps / seconds, 2) if steps and seconds > 0 else 0.0,
            "steps_per_call": self.steps_per_call or self._chosen_steps_per_call,
        }

    def on_train_start(self) -> None:
        wrapper = self.trainer.strategy.model
        if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            # torch's own switch that DDP.no_sync() flips; a context manager cannot span
            # Lightning calls. tests/test_library_contracts.py fails if DDP stops reading it.
            wrapper.require_backward_grad_sync = False  # see _sync_gradients

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name around every hook call; it is a plain attribute, so
        # skip nn.Module's parameter/buffer/module bookkeeping (a speed-up only: nothing public
        # to hook instead; tests/test_library_contracts.py checks Lightning still sets it).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


def _advance_global_step(trainer: L.Trainer, steps: int) -> None:
    """Count ``steps`` optimizer steps in Lightning's progress (what ``trainer.global_step``,
    ``max_steps``, checkpoints and resuming read).

    The engine steps the raw optimizer, bypassing LightningOptimizer's per-step hooks (the cost
    this engine removes), so it advances the manual-optimization counter itself. Lightning has
    no public way to do this; tests/test_library_contracts.py (and tests/test_engine.py) fail
    if the counter moves."""
    trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by(steps)
