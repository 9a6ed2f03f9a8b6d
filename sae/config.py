"""Typed configuration of an SAE run: the architecture, the sweep, training, resampling, data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sae.recipes import get_recipe
from sae.run.config_io import Config
from sae.run.runtime import RuntimeConfig, WandbConfig, check_data_shards

DEFAULT_D_SAE = 256
"""Latents per SAE when neither ``sae.d_sae`` nor ``sweep.d_sae`` says."""


@dataclass
class SAEConfig(Config):
    """One SAE: f = ReLU(W_enc(x − b_dec) + b_enc), x̂ = W_dec f + b_dec."""

    d_sae: int | None = None
    """Number of latents of every instance (None: 256, or ``sweep.d_sae`` when that is set;
    give the width in one of the two places)."""
    recipe: Literal["constrained", "april2024"] = "april2024"
    """constrained: unit-norm decoder rows (parallel gradient removed), sparsity Σ f_i.
    april2024: free decoder norms, sparsity Σ f_i‖W_dec,i‖, W_enc = W_decᵀ at init with decoder
    rows of norm 0.1, per-instance gradient clipping."""
    tied: bool = False
    """Tie the weights: W_dec = W_encᵀ."""
    b_dec_init: Literal["zeros", "mean", "geometric_median"] = "geometric_median"
    """Initial b_dec, computed from a sample of the training data."""
    normalize_input: bool = False
    """Scale inputs so that E‖x‖ = √d_in during training; folded back into the saved weights."""
    decoder_init_norm: float = 0.1
    """Decoder row norm at init under april2024 (constrained always uses 1)."""
    init: Literal["random", "data"] = "random"
    """Decoder directions at init: random unit vectors, or training inputs minus b_dec,
    normalised (rows drawn from each instance's own seed); the encoder starts as the decoder's
    transpose either way."""

    def validate(self) -> None:
        if self.d_sae is not None and self.d_sae < 1:
            raise ValueError(f"sae.d_sae must be >= 1, got {self.d_sae}")
        if self.decoder_init_norm <= 0:
            raise ValueError("sae.decoder_init_norm must be > 0")


@dataclass
class SweepConfig(Config):
    """Instances trained together on the same batches. Each list has one value or one per
    instance; single values are broadcast."""

    l1_coefficient: list[float] = field(default_factory=lambda: [1.0])
    """λ, the sparsity coefficient."""
    lr: list[float] = field(default_factory=lambda: [1e-2])
    """Adam learning rate. The default 1e-2 (with the april2024 recipe and the warm-ups below)
    reaches MCC 0.96-0.97 in one pass over 1M rows of SAELens-like data, where 1e-3 reaches 0.78
    (BENCHMARKS.md, "The one-pass recipe as the default")."""
    seed: list[int] = field(default_factory=lambda: [0])
    """Initialisation seed."""
    d_sae: list[int] | None = None
    """Number of latents per instance (a width sweep); None: ``sae.d_sae`` for every instance.
    All instances share one tensor of the largest width; the latents past an instance's width
    are zero and masked out of the forward pass, the gradients, resampling and the saved files,
    so each instance trains as a run of its own width would."""

    def _lists(self) -> list[list]:
        return [self.l1_coefficient, self.lr, self.seed] + (
            [self.d_sae] if self.d_sae is not None else []
        )

    def validate(self) -> None:
        lists = self._lists()
        if 0 in {len(v) for v in lists}:
            raise ValueError("sweep lists need at least one value")
        if len({len(v) for v in lists} - {1}) > 1:
            raise ValueError("sweep lists must have length 1 or all the same length")
        if any(v < 0 for v in self.l1_coefficient):
            raise ValueError("sweep.l1_coefficient must be >= 0")
        if any(v <= 0 for v in self.lr):
            raise ValueError("sweep.lr must be > 0")
        if self.d_sae is not None and any(v < 1 for v in self.d_sae):
            raise ValueError("sweep.d_sae must be >= 1")

    @property
    def n_instances(self) -> int:
        return max(len(v) for v in self._lists())

    def grow(self, values: list) -> list:
        """``values`` (one value, or one per instance) as one value per instance."""
        return values * self.n_instances if len(values) == 1 else list(values)

    def expanded(self) -> tuple[list[float], list[float], list[int]]:
        return self.grow(self.l1_coefficient), self.grow(self.lr), self.grow(self.seed)


@dataclass
class SAETrainConfig(Config):
    """The training loop (Adam, loss = ‖x − x̂‖² summed over dimensions + λ·sparsity, both
    averaged over the batch)."""

    steps: int = 5000
    """Optimizer steps."""
    batch_size: int = 1024
    """Global batch size (split evenly across devices)."""
    data_seed: int = 0
    """Seeds the order of the data (shared by all instances)."""
    data_shards: int | None = None
    """Global batch drawn in this many seeded blocks; N devices draw data_shards / N each. Runs
    with the same value see the same data whatever the device count. None: one per device."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam β₁, β₂."""
    lr_warmup_steps: int = 200
    """Linear LR warm-up from 0 (200: the measured one-pass recipe of
    ``configs/sae/one_pass.yaml``)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """LR decay to 0 over the last lr_decay_steps steps."""
    lr_decay_steps: int | None = None
    """Steps of decay at the end (None: all steps after warm-up)."""
    l1_warmup_steps: int = 50
    """λ rises linearly from 0 over these steps (50: the measured one-pass recipe)."""
    grad_clip: float | None = None
    """Per-instance gradient-norm clip; None: 1.0 for april2024, off for constrained."""
    log_every: int = 100
    """Log metrics every this many steps."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every this many steps."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError("train.adam_betas must be two values in [0, 1)")
        if min(self.lr_warmup_steps, self.l1_warmup_steps) < 0:
            raise ValueError("warm-up steps must be >= 0")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("train.log_every and train.checkpoint_every must be >= 1")
        if self.data_shards is not None and self.data_shards < 1:
            raise ValueError("train.data_shards must be >= 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("train.grad_clip must be > 0")


@dataclass
class ResampleConfig(Config):
    """Dead-latent tracking and resampling."""

    method: Literal["none", "simple", "anthropic"] = "none"
    """none; simple: random unit direction; anthropic: inputs drawn with probability ∝ loss²."""
    every: int = 2500
    """Resample every this many steps."""
    window: int = 500
    """A latent is dead when it has not fired during the last `window` steps before a resample."""
    stop_after: int | None = None
    """No resampling after this step (None: until the end)."""
    samples: int = 8192
    """Inputs scored to choose new directions (anthropic)."""
    encoder_scale: float = 0.2
    """New encoder rows get this times the mean norm of the alive encoder rows."""

    def validate(self) -> None:
        if self.every < 1 or self.window < 1 or self.samples < 1:
            raise ValueError("resample.every, resample.window, resample.samples must be >= 1")
        if self.window > self.every:
            raise ValueError(
                f"resample.window ({self.window}) must be <= resample.every ({self.every})"
            )


@dataclass
class SAEDataConfig(Config):
    """Where activations come from: a file, or a trained toy model drawn live."""

    activations: str | None = None
    """Path of an activation file (the safetensors contract)."""
    toy_dir: str | None = None
    """Trained toy-model folder: fresh activations every step (infinite data)."""
    toy_instance: int = 0
    """Which toy-model instance to read."""
    holdout_fraction: float = 0.1
    """Final fraction of the file's rows kept for evaluation; training never sees them."""
    init_samples: int = 8192
    """Rows used for b_dec initialisation and the input-scale estimate."""
    resident_budget_gb: float | None = None
    """An activation file whose training rows fit in this many GiB is copied to the training
    device once; a larger one is streamed from disk by a prefetching thread. None: half of the
    device's free memory. The batches are the same either way."""

    def validate(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(
                f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}"
            )
        if self.init_samples < 1:
            raise ValueError("data.init_samples must be >= 1")
        if self.resident_budget_gb is not None and self.resident_budget_gb < 0:
            raise ValueError("data.resident_budget_gb must be >= 0")


@dataclass
class SAERunConfig(Config):
    """A complete SAE training run."""

    sae: SAEConfig = field(default_factory=SAEConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    train: SAETrainConfig = field(default_factory=SAETrainConfig)
    resample: ResampleConfig = field(default_factory=ResampleConfig)
    data: SAEDataConfig = field(default_factory=SAEDataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        check_data_shards(self.train.data_shards, self.train.batch_size, self.runtime)
        swept, one = self.sweep.d_sae, self.sae.d_sae
        if swept is not None and one is not None and set(swept) != {one}:
            raise ValueError(
                f"sae.d_sae ({one}) and sweep.d_sae ({swept}) both set the width: give it in "
                "one place (--set sae.d_sae=null for a width sweep)"
            )

    @property
    def widths(self) -> list[int]:
        """Each instance's number of latents."""
        if self.sweep.d_sae is not None:
            return self.sweep.grow(self.sweep.d_sae)
        return [self.sae.d_sae or DEFAULT_D_SAE] * self.sweep.n_instances

    def warnings(self, prefix: str = "") -> list[str]:
        """Settings that are valid but do not do what they seem to (one line each, keys under
        ``prefix``): resampling runs after every ``resample.every`` steps, never at the last
        step, so a run of at most that many steps (or one that stops resampling before the
        first) never resamples."""
        r, steps, p = self.resample, self.train.steps, prefix
        if r.method == "none":
            return []
        if steps <= r.every:
            return [
                f"{p}train.steps ({steps}) <= {p}resample.every ({r.every}): resampling "
                f"({p}resample.method={r.method}) will not run"
            ]
        if r.stop_after is not None and r.stop_after < r.every:
            return [
                f"{p}resample.stop_after ({r.stop_after}) < {p}resample.every ({r.every}): "
                f"resampling ({p}resample.method={r.method}) will not run"
            ]
        return []

    @property
    def grad_clip(self) -> float | None:
        if self.train.grad_clip is not None:
            return self.train.grad_clip
        return get_recipe(self.sae.recipe).default_grad_clip
