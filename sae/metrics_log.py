"""Writes what a run logs to ``metrics.jsonl`` in the run folder (what tests read), next to
wandb. Rank 0 only; the file is rewritten atomically, so it is never half a line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from sae.files import write_text

METRICS_LOG = "metrics.jsonl"


class MetricsFile(Callback):
    def __init__(self, out_dir: Path, every: int) -> None:
        self.path = Path(out_dir) / METRICS_LOG
        self.every = every
        self.lines: list[str] = []

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.path.exists():  # resuming: keep the earlier records
            start = trainer.global_step
            self.lines = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) < start
            ]

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step - 1  # the step just trained
        if (step + 1) % self.every or not trainer.is_global_zero:  # the module's logging steps
            return
        record = {"step": step}
        record |= {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.lines.append(json.dumps(record))
        write_text(self.path, "\n".join(self.lines) + "\n")


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
