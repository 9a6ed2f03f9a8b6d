"""A thin ``LightningModule`` that trains a batch of SAEs on a shared stream of activations.
The loop itself (many optimizer steps per Lightning call) is ``StepEngine``'s."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sae.config import SAERunConfig
from sae.data import ActivationSource
from sae.geometric_median import geometric_median
from sae.loss import sae_forward_backward
from sae.model import SparseAutoencoder
from sae.resampling import resample_dead_latents
from sae.run.config_io import config_to_dict, from_dict
from sae.run.engine import StepEngine, StepOutput
from sae.run.graphs import GraphedFunction, graphed_if_usable
from sae.run.instance_names import instance_labels
from sae.run.metrics_log import log_scalars
from sae.run.optim import InstanceAdam
from sae.run.schedules import lr_lambda, warmup_factor
from sae.run.seeding import (
    data_init_seed,
    draw_rank_batch,
    rank_blocks,
    resample_directions_seed,
    resample_inputs_seed,
)


class SAEModule(StepEngine):
    sets_own_gradients = True  # SparseAutoencoder.forward_backward
    l1_coefficient: Tensor
    input_scale: Tensor
    initialized: Tensor
    window_fired: Tensor
    log_fired: Tensor
    log_samples: Tensor
    resampled_total: Tensor

    def __init__(
        self,
        config: SAERunConfig | dict[str, Any],
        d_in: int,
        source: ActivationSource | None = None,
    ) -> None:
        if isinstance(config, dict):
            config = from_dict(SAERunConfig, config)
        t, r = config.train, config.resample
        resample_every = r.every if r.method != "none" else 0
        super().__init__(
            t.steps,
            (t.log_every, t.checkpoint_every, resample_every),
            config.runtime.steps_per_call,
        )
        self.config = config
        # Saved in checkpoints, not logged: wandb gets the config once, from fit.
        self.save_hyperparameters({"config": config_to_dict(config), "d_in": d_in}, logger=False)
        l1, lr, seeds = config.sweep.expanded()
        widths = config.widths
        names = {"l1": l1, "lr": lr, "seed": seeds}
        self.instance_labels = instance_labels(
            names | ({"d_sae": widths} if len(set(widths)) > 1 else {})
        )
        s = config.sae
        self.sae = SparseAutoencoder(
            len(l1), d_in, max(widths), s.recipe, s.tied, seeds, s.decoder_init_norm, widths
        )
        self.instance_lr = torch.tensor(lr)
        self.source = source
        self.graphed_step: GraphedFunction | None = None
        """The step's forward and backward replayed from a CUDA graph (``runtime.cuda_graphs``;
        set when training starts)."""
        # Buffers, so that a checkpoint restores them and they follow the device.
        self.register_buffer("l1_coefficient", torch.tensor(l1))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("window_fired", torch.zeros(len(l1), max(widths)))
        self.register_buffer("log_fired", torch.zeros(len(l1), max(widths)))
        self.register_buffer("width", torch.tensor(widths, dtype=torch.float32), persistent=False)
        self.register_buffer("log_samples", torch.zeros(()))
        self.register_buffer("resampled_total", torch.zeros(len(l1)))

    # -- data ----------------------------------------------------------------------------
    def draw_batch(self, step: int) -> Tensor:
        assert self.source is not None, "SAEModule needs an activation source to train"
        t, source = self.config.train, self.source
        x = draw_rank_batch(
            lambda shard, rows: source.block(step, shard, rows, self.device),
            t.data_shards,
            t.batch_size,
            *self.world_and_rank(),
        )
        x = x.to(self.sae.W_enc.dtype)
        # input_scale stays 1 without normalize_input (a pass over the batch saved).
        return x * self.input_scale if self.config.sae.normalize_input else x

    @torch.no_grad()
    def initialize_from_data(self) -> None:
        """b_dec (mean or geometric median) and the input scale, from a sample every rank
        draws identically."""
        c, d = self.config, self.sae.d_in
        x = self.source.sample(c.data.init_samples, c.train.data_seed, self.device).float()
        if c.sae.normalize_input:
            self.input_scale.fill_(d**0.5 / x.norm(dim=-1).mean().clamp_min(1e-12))
        x = x * self.input_scale
        if c.sae.b_dec_init == "mean":
            self.sae.b_dec.copy_(x.mean(0).expand_as(self.sae.b_dec))
        elif c.sae.b_dec_init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(x).expand_as(self.sae.b_dec))
        if c.sae.init == "data":
            self.init_decoder_from_data()
        self.initialized.fill_(True)

    @torch.no_grad()
    def init_decoder_from_data(self) -> None:
        """Each instance's decoder rows (and encoder columns) start as training inputs minus
        b_dec, normalised to the recipe's init norm: as many rows as the instance's width, drawn
        from its own seed (so a sweep member starts as it would alone). A latent whose drawn
        input is all zero (common in sparse toy data) keeps its random init: every such latent
        would otherwise get the same direction (−b_dec) or none, and never separate."""
        sae, c = self.sae, self.config
        norm = sae.rules.decoder_init_norm(c.sae.decoder_init_norm)
        for k, (seed, width) in enumerate(zip(c.sweep.expanded()[2], sae.widths)):
            x = self.source.sample(width, data_init_seed(seed), self.device).to(sae.W_enc.dtype)
            rows = x * self.input_scale - sae.b_dec[k]
            lengths = rows.norm(dim=-1, keepdim=True)
            rows = rows / lengths.clamp_min(1e-12) * norm
            x_norm = x.norm(dim=-1)
            usable = (x_norm > 1e-6 * x_norm.max().clamp_min(1e-30)) & (lengths[:, 0] > 1e-12)
            latents = usable.nonzero()[:, 0]  # fewer than the width: a small file, zero rows
            sae.W_enc[k, :, latents] = rows[latents].T
            if sae.W_dec is not None:
                sae.W_dec[k, latents] = rows[latents]

    def on_fit_start(self) -> None:
        if not bool(self.initialized):
            self.initialize_from_data()

    def on_train_start(self) -> None:
        super().on_train_start()
        # x (0) and the sparsity weight (7) change every step; the parameters are read in place.
        self.graphed_step = graphed_if_usable(
            sae_forward_backward, (0, 7), "the SAE step", self.config.runtime, self.trainer
        )
        t = self.config.train
        shards, size = rank_blocks(t.data_shards, t.batch_size, *self.world_and_rank())
        self.source.prepare(
            self.device, shards, size, self.global_step, t.steps, self.config.runtime.draw_ahead
        )

    def on_train_end(self) -> None:
        super().on_train_end()
        self.graphed_step = None  # its memory pool, before any evaluation on the device

    # -- training -----------------------------------------------------------------------
    def train_step(self, step: int) -> StepOutput:
        x = self.draw_batch(step)
        ramp = warmup_factor(step, self.config.train.l1_warmup_steps)
        l1 = self.l1_coefficient if ramp == 1.0 else self.l1_coefficient * ramp  # (read only)
        # Sets the gradients of Σ per_instance (from a CUDA graph under runtime.cuda_graphs).
        out = self.sae.forward_backward(x, l1, self.graphed_step or sae_forward_backward)
        per_instance = out.reconstruction + l1 * out.sparsity
        # Counts of codes > 0 as float32 sums of 0/1: exact (batch < 2^24; summed in float32
        # also under bf16-mixed), the same numbers as (codes > 0).sum(1).float() without
        # widening a bool tensor to int64 (3-4x faster). The 0/1 mask overwrites the codes,
        # which nothing reads after this but the logged L0 (codes > 0: the same on the mask),
        # so no second [instances, batch, latents] buffer is written (2-3% of a small step).
        fired = torch.gt(out.codes, 0, out=out.codes).sum(1, dtype=self.log_fired.dtype)
        r = self.config.resample
        if r.method != "none":
            if step % r.every == r.every - r.window:
                self.window_fired.zero_()
            self.window_fired.add_(fired)  # add_, not +=: no Module.__setattr__ a step
        self.log_fired.add_(fired)
        self.log_samples.add_(x.shape[0])
        # Log after every log_every-th step (steps 9, 19, ... for 10), stamped with this step.
        if (step + 1) % self.config.train.log_every == 0:
            scalars, firing = self._log_metrics(step, x, out, per_instance, l1)
            return StepOutput(per_instance.sum(), scalars, firing, gradients_ready=True)
        return StepOutput(per_instance.sum(), gradients_ready=True)

    def before_update(self, step: int) -> None:
        self.sae.rules.before_update(self.sae)

    def after_update(self, step: int) -> None:
        self.sae.rules.after_update(self.sae)

    def after_chunk(self, done: int) -> None:
        r = self.config.resample
        if (
            r.method != "none"
            and done % r.every == 0
            and done < self.config.train.steps
            and (r.stop_after is None or done <= r.stop_after)
        ):
            self.resample(done)

    @torch.no_grad()
    def resample(self, step: int) -> Tensor:
        """Revive latents that did not fire during the window (counts summed over ranks)."""
        counts = self.trainer.strategy.reduce(self.window_fired.clone(), reduce_op="sum")
        dead = counts == 0
        r, c = self.config.resample, self.config
        inputs = self.source.sample(
            r.samples, resample_inputs_seed(c.train.data_seed, step), self.device
        )
        # One generator per instance, from the instance's own seed: a sweep member resamples
        # exactly as it would if trained alone.
        generator = [
            torch.Generator().manual_seed(resample_directions_seed(seed, step))
            for seed in c.sweep.expanded()[2]
        ]
        optimizer = self.optimizers().optimizer
        n = resample_dead_latents(
            self.sae,
            optimizer,
            dead,
            inputs.to(self.sae.W_enc.dtype) * self.input_scale,
            r.method,
            generator,
            r.encoder_scale,
        )
        self.window_fired.zero_()
        self.resampled_total += n.to(self.resampled_total)
        return n

    def _log_metrics(
        self, step: int, x: Tensor, out: Any, per_instance: Tensor, l1: Tensor
    ) -> tuple[dict[str, float], Tensor]:
        """Log this step's scalars; returns them and the firing frequency since the last
        logging step ([instances, d_sae], on the CPU)."""
        counts = self.trainer.strategy.reduce(self.log_fired.clone(), reduce_op="sum")
        samples = self.trainer.strategy.reduce(self.log_samples.clone(), reduce_op="sum")
        resid = (out.x_hat - x).square().sum(dim=(1, 2))
        total_var = (x - x.mean(0)).square().sum()
        ev = 1 - resid / total_var.clamp_min(1e-12)
        l0 = (out.codes > 0).float().sum(-1).mean(-1)
        # Over each instance's own latents (a width sweep pads the narrower ones).
        dead = ((counts == 0) & self.sae.latents).float().sum(-1) / self.width
        lr_now = self.instance_lr.to(x.device) * self.lr_schedulers().get_last_lr()[0]
        metrics: dict[str, Tensor] = {}
        for k in range(per_instance.shape[0]):
            metrics |= {
                f"loss/instance_{k}": per_instance[k].detach(),
                f"reconstruction/instance_{k}": out.reconstruction[k].detach(),
                f"sparsity/instance_{k}": out.sparsity[k].detach(),
                f"l0/instance_{k}": l0[k],
                f"explained_variance/instance_{k}": ev[k].detach(),
                f"dead_fraction/instance_{k}": dead[k],
                f"l1_coefficient/instance_{k}": l1[k],
                f"lr/instance_{k}": lr_now[k],
                f"resampled/instance_{k}": self.resampled_total[k],
            }
        scalars = log_scalars(self, metrics, step)
        firing = (counts / samples.clamp_min(1)).cpu()
        self.log_fired.zero_()
        self.log_samples.zero_()
        return scalars, firing

    def configure_optimizers(self) -> Any:
        t = self.config.train
        optimizer = InstanceAdam(
            self.sae.parameters(),
            self.instance_lr,
            tuple(t.adam_betas),
            max_grad_norm=self.config.grad_clip,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(t.lr_schedule, t.lr_warmup_steps, t.steps, t.lr_decay_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
