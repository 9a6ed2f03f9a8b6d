"""Training progress on stderr, counted in optimizer steps (one Lightning call runs many).

In a terminal: a tqdm bar with the loss on it. Anywhere else (a pipe, a log file, a batch
job's output): one plain line every ``LINE_EVERY_PERCENT`` percent, such as
``step 500/10000 (5%) loss 0.0123``, never carriage-return frames. ``progress_callback`` picks
the one that fits stderr."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

LINE_EVERY_PERCENT = 5


def progress_callback(stream: TextIO | None = None) -> ProgressBar:
    """The bar when ``stream`` (stderr by default) is a terminal, else plain lines."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return StepProgressBar() if isatty is not None and isatty() else StepProgressLines(stream)


def _chunk_loss(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else None
    return None if loss is None else float(loss)


def format_loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4g}"


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with steps, not Lightning batches, as its unit: ``global_step`` out
    of ``max_steps``, redrawn about 100 times a run, the latest loss (summed over instances)
    beside it."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps

    def init_train_tqdm(self) -> Any:
        # Lightning's own bars write to stdout, where results go.
        return Tqdm(
            desc="steps",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("steps")
        self.train_progress_bar.n = trainer.global_step  # resumed runs start part-way
        self._redraw_every = max(1, trainer.max_steps // 100)
        self._next_redraw = trainer.global_step

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if bar.disable or (step < self._next_redraw and step < trainer.max_steps):
            return
        self._next_redraw = step + self._redraw_every
        bar.n = step
        metrics = dict(self.get_metrics(trainer, module))
        metrics.pop("v_num", None)
        bar.set_postfix({"loss": format_loss(_chunk_loss(outputs))} | metrics, refresh=False)
        bar.refresh()


class StepProgressLines(ProgressBar):
    """One line per ``every_percent`` percent of the run (and one at the end) on ``stream``:
    ``step 500/10000 (5%) loss 0.0123``. Rank 0 only."""

    def __init__(self, stream: TextIO | None = None, every_percent: int = LINE_EVERY_PERCENT):
        super().__init__()
        self.stream = stream
        self.every_percent = every_percent
        self._enabled = True
        self._next_percent = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: Any, module: Any) -> None:
        done = 100 * trainer.global_step // max(1, trainer.max_steps)
        self._next_percent = (done // self.every_percent + 1) * self.every_percent

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any) -> None:
        if not self._enabled:
            return
        step, total = trainer.global_step, max(1, trainer.max_steps)
        percent = 100 * step // total
        if percent < self._next_percent and step < total:
            return
        self._next_percent = (percent // self.every_percent + 1) * self.every_percent
        stream = sys.stderr if self.stream is None else self.stream
        loss = format_loss(_chunk_loss(outputs))
        print(f"step {step}/{total} ({percent}%) loss {loss}", file=stream, flush=True)
