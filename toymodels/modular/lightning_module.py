"""A thin ``StepEngine`` around the bilinear modular-addition model: every step is the full
batch of training pairs, the loss is summed over instances (seeds), AdamW with decoupled weight
decay, plus the optional coupled L2 and L1 penalties of the controls."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sae.run.config_io import config_to_dict, from_dict
from sae.run.engine import StepEngine, StepOutput
from sae.run.instance_names import instance_labels
from sae.run.metrics_log import log_scalars
from sae.run.seeding import modular_init_seed, modular_split_seed
from toymodels.modular.config import ModularConfig
from toymodels.modular.model import BilinearModAdd, accuracy, all_pairs, per_instance_loss


class ModularModule(StepEngine):
    def __init__(self, config: ModularConfig | dict[str, Any]) -> None:
        if isinstance(config, dict):
            config = from_dict(ModularConfig, config)
        t = config.train
        super().__init__(t.steps, (t.log_every, t.checkpoint_every), config.runtime.steps_per_call)
        self.config = config
        self.save_hyperparameters({"config": config_to_dict(config)}, logger=False)
        m = config.model
        self.instance_labels = instance_labels({"seed": list(t.seeds)})
        self.model = BilinearModAdd(config.n_instances, m.p, m.d, m.m, m.layernorm)
        self.model.initialize([modular_init_seed(s) for s in t.seeds])
        a, b, y = all_pairs(m.p)
        train = train_mask(m.p, t.train_fraction, t.split_seed)
        # Buffers: they follow the module to its device and into checkpoints.
        self.register_buffer("a", a[train], persistent=False)
        self.register_buffer("b", b[train], persistent=False)
        self.register_buffer("y", y[train], persistent=False)

    def per_instance_loss(self) -> tuple[Tensor, Tensor]:
        """(task loss [instances], accuracy [instances]) on the training pairs."""
        out = self.model(self.a, self.b)
        return per_instance_loss(out, self.y, self.config.train.loss), accuracy(out, self.y)

    def penalty(self) -> Tensor:
        """The controls' explicit penalties, per instance: l2 · Σ w² + l1 · (Σ|L| + Σ|R|)."""
        o, w = self.config.optim, self.model.weights()
        total = torch.zeros(self.model.n_instances, device=self.a.device)
        if o.l2 > 0:
            total = total + o.l2 * sum(t.square().flatten(1).sum(1) for t in w)
        if o.l1 > 0:
            total = total + o.l1 * (w.L.abs().flatten(1).sum(1) + w.R.abs().flatten(1).sum(1))
        return total

    def train_step(self, step: int) -> StepOutput:
        task, acc = self.per_instance_loss()
        loss = (task + self.penalty()).sum()
        if (step + 1) % self.config.train.log_every == 0:
            metrics: dict[str, Tensor] = {"train/loss": loss.detach()}
            for k in range(task.shape[0]):
                metrics[f"loss/instance_{k}"] = task[k].detach()
                metrics[f"accuracy/instance_{k}"] = acc[k]
            return StepOutput(loss, log_scalars(self, metrics, step))
        return StepOutput(loss)

    def configure_optimizers(self) -> Any:
        o = self.config.optim
        return torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
        )


def train_mask(p: int, fraction: float, split_seed: int) -> Tensor:
    """Which of the p² pairs (a-major order) are trained on: a seeded random share
    ``fraction`` of them (all of them at 1.0)."""
    n = p * p
    if fraction >= 1.0:
        return torch.ones(n, dtype=torch.bool)
    g = torch.Generator().manual_seed(modular_split_seed(split_seed))
    keep = torch.randperm(n, generator=g)[: max(1, round(fraction * n))]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keep] = True
    return mask
