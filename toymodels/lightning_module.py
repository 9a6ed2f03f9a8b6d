"""A thin ``LightningModule`` around a toy model: data drawn inside the step, loss summed over
instances, AdamW (as ``InstanceAdam``) with the configured schedule, metrics only on logging
steps. The loop itself (many optimizer steps per Lightning call) is ``StepEngine``'s."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from sae.run.config_io import config_to_dict, from_dict
from sae.run.engine import StepEngine, StepOutput
from sae.run.graphs import GraphedFunction, graphed_if_usable
from sae.run.instance_names import instance_labels
from sae.run.metrics_log import log_scalars
from sae.run.optim import InstanceAdam
from sae.run.prefetch import SeededBlocks
from sae.run.schedules import lr_lambda
from sae.run.seeding import draw_rank_batch, rank_blocks, toy_eval_seed
from toymodels.config import ToyConfig
from toymodels.data import FeatureDistribution, instance_major
from toymodels.diagnostics import diagnose, represented
from toymodels.loss import toy_forward_backward, toy_loss, toy_loss_and_gradients
from toymodels.models import ToyModel, build_model


class ToyModelModule(StepEngine):
    sets_own_gradients = True  # toy_forward_backward

    def __init__(self, config: ToyConfig | dict[str, Any]) -> None:
        if isinstance(config, dict):
            config = from_dict(ToyConfig, config)
        t = config.train
        periods = (t.log_every, t.checkpoint_every, t.snapshot_every)
        super().__init__(t.steps, periods, config.runtime.steps_per_call)
        self.config = config
        # Saved in checkpoints so a run resumes from the file alone.
        # (not logged: wandb gets the config once, from fit)
        self.save_hyperparameters({"config": config_to_dict(config)}, logger=False)
        m, restarts = config.model, config.train.restarts
        self.instance_labels = toy_instance_labels(config, restarts)
        self.model: ToyModel = build_model(
            m.kind, config.n_instances * restarts, m.n_features, m.n_hidden, config.train.seed
        )
        self.distribution = FeatureDistribution.from_config(
            config.data, m.n_features, repeats_each=restarts, signed=self.model.signed_inputs
        )
        d = self.distribution
        self.blocks = SeededBlocks(d.uniforms, config.train.seed, finish=d.features)
        """The training batches' seeded blocks (their random numbers drawn ahead on a spare CPU
        core)."""
        self.graphed_step: GraphedFunction | None = None
        """The step's forward and backward replayed from a CUDA graph (``runtime.cuda_graphs``;
        set when training starts)."""

    def draw_batch(self, step: int) -> Tensor:
        """This rank's share of global batch ``step``: blocks of a seeded stream, so any
        device count that divides ``data_shards`` sees the same global batch."""
        train = self.config.train
        # (several blocks are joined batch-major: back to the layout the products read)
        return instance_major(
            draw_rank_batch(
                lambda shard, rows: self.blocks.block(step, shard, rows, self.device),
                train.data_shards,
                train.batch_size,
                *self.world_and_rank(),
            )
        )

    def on_train_start(self) -> None:
        super().on_train_start()
        # x (argument 0) changes every step; the parameters are read in place.
        self.graphed_step = graphed_if_usable(
            toy_loss_and_gradients, (0,), "the toy step", self.config.runtime, self.trainer
        )
        # With a CPU core to spare, the random numbers of the coming steps' blocks are drawn on
        # it (the masks that turn them into features run in the step).
        t = self.config.train
        shards, rows = rank_blocks(t.data_shards, t.batch_size, *self.world_and_rank())
        draw_ahead = self.config.runtime.draw_ahead
        self.blocks.start(
            self.device, shards, rows, self.global_step, t.steps, draw_ahead, "toy-draw"
        )

    def on_train_end(self) -> None:
        super().on_train_end()
        self.blocks.stop()
        self.graphed_step = None  # its memory pool, before any evaluation on the device

    def per_instance_loss(self, x: Tensor) -> Tensor:
        return toy_loss(self.model, x, self.distribution.importance)

    def train_step(self, step: int) -> StepOutput:
        x = self.draw_batch(step)
        # Forward and backward without autograd's graph (or replayed from a CUDA graph).
        importance = self.distribution.importance
        per_instance = toy_forward_backward(self.model, x, importance, self.graphed_step)
        loss = per_instance.sum()
        # Log after every log_every-th step (steps 9, 19, ... for 10), stamped with this step.
        scalars = None
        if (step + 1) % self.config.train.log_every == 0:
            scalars = self._log_metrics(step, loss, per_instance)
        return StepOutput(loss, scalars, gradients_ready=True)

    def _log_metrics(self, step: int, loss: Tensor, per_instance: Tensor) -> dict[str, float]:
        diag = diagnose(self.model.feature_weights)
        n_represented = represented(self.model).sum(-1).float()
        metrics: dict[str, Tensor] = {"train/loss": loss.detach()}
        for k in range(per_instance.shape[0]):
            metrics[f"loss/instance_{k}"] = per_instance[k].detach()
            metrics[f"n_represented/instance_{k}"] = n_represented[k]
            metrics[f"dims_per_feature/instance_{k}"] = diag.dims_per_feature[k]
        return log_scalars(self, metrics, step)

    def configure_optimizers(self) -> Any:
        o = self.config.optim
        # AdamW, through the engine's lean optimizer: the same fused kernel and updates as
        # torch.optim.AdamW(fused=True) for half its cost per step (tests/test_optim.py).
        optimizer = InstanceAdam(
            self.model.parameters(),
            torch.full((self.distribution.n_instances,), o.lr, dtype=torch.float64),
            weight_decay=o.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(o.schedule, o.warmup_steps, self.config.train.steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def evaluate(self, samples: int) -> Tensor:
        """Per-instance loss [instances] on fresh samples from a stream training never uses.

        The restarts of a setting are scored on the same samples (common random numbers), so
        best-of-k compares solutions, not draws."""
        restarts = self.config.train.restarts
        total = torch.zeros(self.distribution.n_instances, device=self.device, dtype=torch.float64)
        for x, n in self.eval_batches(samples):
            x = instance_major(x.repeat_interleave(restarts, dim=1))
            total += self.per_instance_loss(x).double() * n
        return (total / samples).float()

    def eval_batches(self, samples: int) -> Iterator[tuple[Tensor, int]]:
        """The evaluation inputs, one column per setting (restarts share it): chunks of at most
        8192 samples and 2^24 elements, so memory stays bounded however many instances a sweep
        has."""
        base = self.distribution.select(slice(None, None, self.config.train.restarts))
        g = torch.Generator(device=self.device)
        per_sample = self.distribution.n_instances * self.distribution.n_features
        chunk = max(1, min(samples, 8192, 2**24 // per_sample))
        done, i = 0, 0
        while done < samples:
            n = min(chunk, samples - done)
            g.manual_seed(toy_eval_seed(self.config.train.seed, i))
            yield base.sample(n, g), n
            done, i = done + n, i + 1


def toy_instance_labels(config: ToyConfig, restarts: int = 1) -> list[str]:
    """wandb names of the instances, ordered (probability, importance, density, repeat,
    restart) like the data: ``p=0.05``, with ``importance=j`` / ``density=j`` (the sweep's
    vector index), ``repeat=r`` and ``restart=j`` when there are several."""
    settings = [s for s in config.instance_settings() for _ in range(restarts)]
    values: dict[str, list[Any]] = {"p": [s.feature_probability for s in settings]}
    if config.data.importance_sweep is not None:
        values["importance"] = [s.importance_index for s in settings]
    if config.data.relative_density_sweep is not None:
        values["density"] = [s.density_index for s in settings]
    if config.data.repeats > 1:
        values["repeat"] = [s.repeat for s in settings]
    if restarts > 1:
        values["restart"] = [k % restarts for k in range(len(settings))]
    return instance_labels(values)
