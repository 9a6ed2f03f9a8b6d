"""Learning-dynamics snapshots ("Superposition and Learning Dynamics"): every
``train.snapshot_every`` steps, each instance's feature norms ‖W_i‖, feature dimensionalities D_i
and its loss on one fixed batch, saved to ``dynamics.safetensors`` (the best restart of each
instance, like the weights). The paper's "energy level jumps" are D_i moving between the
polytope values (1, 3/4, 2/3, 1/2, 2/5, ...) while the loss drops in steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sae.run.engine import ChunkCallback
from sae.run.files import atomic_path
from sae.run.seeding import toy_dynamics_seed
from toymodels.diagnostics import diagnose

DYNAMICS_FORMAT = "sae-toolkit/toy-dynamics"
DYNAMICS_SAMPLES = 8192
"""Rows of the fixed batch the snapshot losses are measured on."""


class DynamicsRecorder(ChunkCallback):
    """Records a snapshot at step 0 and whenever a chunk ends on a multiple of ``every``
    (the module makes ``every`` an event period, so chunks end there). The snapshots travel in
    the checkpoint, so a resumed run ends with the same snapshots as an uninterrupted one."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.steps: list[int] = []
        self.norms: list[Tensor] = []
        self.dims: list[Tensor] = []
        self.losses: list[Tensor] = []
        self._x: Tensor | None = None

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._maybe_snapshot(int(trainer.global_step), module)

    def on_chunk_end(self, trainer: Any, module: Any, out: Any) -> None:
        self._maybe_snapshot(int(trainer.global_step), module)

    def _maybe_snapshot(self, step: int, module: Any) -> None:
        # A resumed run starts on its checkpoint's step: recorded already if it was due.
        if step % self.every == 0 and (not self.steps or self.steps[-1] != step):
            self._snapshot(step, module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "norms": [t.clone() for t in self.norms],
            "dims": [t.clone() for t in self.dims],
            "losses": [t.clone() for t in self.losses],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = list(state["steps"])
        self.norms, self.dims = list(state["norms"]), list(state["dims"])
        self.losses = list(state["losses"])

    @torch.no_grad()
    def _snapshot(self, step: int, module: Any) -> None:
        if self._x is None or self._x.device != module.device:
            g = torch.Generator(device=module.device).manual_seed(
                toy_dynamics_seed(module.config.train.seed)
            )
            self._x = module.distribution.sample(DYNAMICS_SAMPLES, g)
        diag = diagnose(module.model.feature_weights)
        self.steps.append(step)
        self.norms.append(diag.feature_norms.cpu())
        self.dims.append(diag.feature_dimensionality.cpu())
        self.losses.append(module.per_instance_loss(self._x).float().cpu())

    def kept(self, keep: Tensor) -> dict[str, Tensor]:
        """The snapshots of instances ``keep`` (the chosen restarts): ``step`` [T],
        ``feature_norms`` and ``feature_dimensionality`` [T, instances, n_features],
        ``loss`` [T, instances]."""
        return {
            "step": torch.tensor(self.steps, dtype=torch.int64),
            "feature_norms": torch.stack(self.norms)[:, keep].contiguous(),
            "feature_dimensionality": torch.stack(self.dims)[:, keep].contiguous(),
            "loss": torch.stack(self.losses)[:, keep].contiguous(),
        }


def save_dynamics(path: str | Path, snapshots: dict[str, Tensor]) -> Path:
    with atomic_path(path) as tmp:
        save_file(snapshots, str(tmp), metadata={"format": DYNAMICS_FORMAT})
    return Path(path)
