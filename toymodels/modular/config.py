"""Typed configuration of a modular-addition run: (a + b) mod p with a bilinear layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sae.run.config_io import Config
from sae.run.runtime import RuntimeConfig, WandbConfig


@dataclass
class ModularModelConfig(Config):
    """x = [E_a[a]; E_b[b]] (2d), h = (L x) ⊙ (R x) (m units), logits = U h (p classes)."""

    p: int = 113
    """The modulus: inputs and outputs are 0 .. p − 1."""
    d: int = 4
    """Columns of each embedding (E_a and E_b are p × d)."""
    m: int = 8
    """Hidden units of the bilinear layer."""
    layernorm: bool = False
    """Control: LayerNorm (no affine parameters) on x before the bilinear layer."""

    def validate(self) -> None:
        if self.p < 2:
            raise ValueError(f"model.p must be >= 2, got {self.p}")
        if self.d < 1 or self.m < 1:
            raise ValueError("model.d and model.m must be >= 1")


@dataclass
class ModularOptimConfig(Config):
    """AdamW on the full batch; the penalties are the note's controls."""

    lr: float = 3e-3
    """Learning rate (constant)."""
    weight_decay: float = 1.0
    """AdamW's decoupled weight decay (1.0: the modular-addition papers' setting)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam's (beta1, beta2), as in Nanda et al. 2023."""
    l2: float = 0.0
    """Control: an L2 penalty l2 · Σ w² on every weight, added to the loss (coupled, unlike
    AdamW's decay; set weight_decay to 0 to compare)."""
    l1: float = 0.0
    """Control: an L1 penalty l1 · (Σ|L| + Σ|R|) on the bilinear weights, added to the loss."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.l2 < 0 or self.l1 < 0:
            raise ValueError("optim.weight_decay, optim.l2 and optim.l1 must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError("optim.betas must be two values in [0, 1)")


@dataclass
class ModularTrainConfig(Config):
    """Full-batch training over the (a, b) pairs; seeds are instances."""

    steps: int = 10_000
    """Optimizer steps (each one sees every training pair)."""
    loss: Literal["ce", "mse"] = "ce"
    """ce: cross-entropy on the logits; mse (control): mean squared error between the logits
    and the one-hot target, averaged over classes."""
    train_fraction: float = 1.0
    """Share of the p² pairs trained on (1.0: all; below 1 the rest is the test set, the
    grokking regime)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """One instance per seed (each seeds its own initialisation)."""
    split_seed: int = 0
    """Seeds the train/test split of the pairs (shared by every instance)."""
    log_every: int = 500
    """Log metrics every this many steps."""
    checkpoint_every: int = 5000
    """Save a resumable checkpoint every this many steps."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train.train_fraction must lie in (0, 1], got {self.train_fraction}")
        if not self.seeds:
            raise ValueError("train.seeds needs at least one seed")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("train.log_every and train.checkpoint_every must be >= 1")


@dataclass
class ModularAnalysisConfig(Config):
    """How the trained weights are read."""

    key_frequencies: int = 0
    """Key frequencies per instance; 0: as many as explain key_power_share of the power."""
    key_power_share: float = 0.9
    """With key_frequencies 0: the fewest top frequencies (at most d) carrying this share of
    the embedding power."""
    pm_tolerance: float = 0.15
    """An entry of L or R counts as ±c when ||w| − c| <= pm_tolerance · c."""
    zero_tolerance: float = 0.1
    """An entry of L or R counts as zero when |w| <= zero_tolerance · max|w| of its matrix."""

    def validate(self) -> None:
        if self.key_frequencies < 0:
            raise ValueError("analysis.key_frequencies must be >= 0")
        if not 0 < self.key_power_share <= 1:
            raise ValueError("analysis.key_power_share must lie in (0, 1]")
        if self.pm_tolerance <= 0 or self.zero_tolerance < 0:
            raise ValueError("analysis.pm_tolerance must be > 0, zero_tolerance >= 0")


@dataclass
class ModularConfig(Config):
    """A complete modular-addition run."""

    model: ModularModelConfig = field(default_factory=ModularModelConfig)
    optim: ModularOptimConfig = field(default_factory=ModularOptimConfig)
    train: ModularTrainConfig = field(default_factory=ModularTrainConfig)
    analysis: ModularAnalysisConfig = field(default_factory=ModularAnalysisConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        if self.runtime.devices * self.runtime.num_nodes > 1:
            # Full batch: every pair in every step; splitting a 12k-pair batch gains nothing.
            raise ValueError("modular runs train on one device (runtime.devices 1)")

    @property
    def n_instances(self) -> int:
        return len(self.train.seeds)
