"""A progress bar that counts optimizer steps (one Lightning call runs many of them)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with steps, not Lightning batches, as its unit: ``global_step`` out
    of ``max_steps``, redrawn about 100 times a run."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("steps")
        self.train_progress_bar.n = trainer.global_step  # resumed runs start part-way
        self._redraw_every = max(1, trainer.max_steps // 100)
        self._next_redraw = trainer.global_step

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if bar.disable or (step < self._next_redraw and step < trainer.max_steps):
            return
        self._next_redraw = step + self._redraw_every
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
        bar.refresh()
