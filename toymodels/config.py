"""Typed configuration of a toy-model run (one dataclass per concern, loaded from YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from sae.run.config_io import Config
from sae.run.runtime import RuntimeConfig, WandbConfig, check_data_shards

ToyKind = Literal["linear", "relu_output", "relu_hidden", "abs"]


@dataclass
class ToyModelConfig(Config):
    """The network: x (n_features) -> h (n_hidden) -> x' (n_features)."""

    kind: ToyKind = "relu_output"
    """linear: x' = WᵀWx + b; relu_output: x' = ReLU(WᵀWx + b); relu_hidden: h = ReLU(Wx),
    x' = ReLU(Wᵀh + b); abs: h = ReLU(W₁x), y' = ReLU(W₂h + b) with target |x|."""
    n_features: int = 5
    """Input features n."""
    n_hidden: int = 2
    """Hidden dimensions (or neurons) m."""

    def validate(self) -> None:
        if self.n_features < 1 or self.n_hidden < 1:
            raise ValueError("model.n_features and model.n_hidden must be >= 1")


@dataclass
class ToyDataConfig(Config):
    """The synthetic feature distribution. Feature i is nonzero with probability p = 1 − S,
    then uniform on [0, 1] ([−1, 1] for the abs model)."""

    feature_probability: list[float] = field(default_factory=lambda: [0.05])
    """Feature density p = 1 − S, one value per instance group (a sparsity sweep)."""
    relative_density: list[float] | None = None
    """Optional per-feature multiplier of p (n_features values), e.g. one denser feature."""
    importance_decay: float = 1.0
    """Importance of feature i is importance_decay ** i (1.0: uniform)."""
    importance: list[float] | None = None
    """Explicit per-feature importances (n_features values); overrides importance_decay."""
    importance_sweep: list[list[float]] | None = None
    """Per-instance importance vectors (each n_features values): every feature_probability
    value is trained with every vector, so one batched run covers a (sparsity, importance)
    grid (the phase diagrams). Overrides importance and importance_decay."""
    relative_density_sweep: list[list[float]] | None = None
    """Per-instance relative-density vectors (each n_features values), crossed with the other
    sweeps like importance_sweep; overrides relative_density."""
    correlated_sets: int = 0
    """Number of correlated sets (features 0 .. correlated_sets·set_size − 1): one draw decides
    whether the whole set is zero, each active member has its own magnitude."""
    anticorrelated_sets: int = 0
    """Number of anticorrelated sets, placed after the correlated ones: the set is zero with
    probability S, else exactly one member (uniformly chosen) is active."""
    set_size: int = 2
    """Features per (anti)correlated set."""
    repeats: int = 1
    """Independently initialised instances per feature_probability value (seeds)."""

    def validate(self) -> None:
        for p in self.feature_probability:
            if not 0.0 < p <= 1.0:
                raise ValueError(f"data.feature_probability must lie in (0, 1], got {p}")
        if not self.feature_probability:
            raise ValueError("data.feature_probability needs at least one value")
        if self.relative_density is not None and any(r <= 0 for r in self.relative_density):
            raise ValueError("data.relative_density values must be > 0")
        if self.importance_decay <= 0:
            raise ValueError(f"data.importance_decay must be > 0, got {self.importance_decay}")
        if self.importance is not None and any(i < 0 for i in self.importance):
            raise ValueError("data.importance values must be >= 0")
        if self.correlated_sets < 0 or self.anticorrelated_sets < 0 or self.set_size < 1:
            raise ValueError("data set counts must be >= 0 and data.set_size >= 1")
        if self.repeats < 1:
            raise ValueError(f"data.repeats must be >= 1, got {self.repeats}")
        for name in ("importance_sweep", "relative_density_sweep"):
            sweep = getattr(self, name)
            if sweep is not None and not sweep:
                raise ValueError(f"data.{name} needs at least one vector (or null)")
        if self.importance_sweep and any(i < 0 for v in self.importance_sweep for i in v):
            raise ValueError("data.importance_sweep values must be >= 0")
        if self.relative_density_sweep and any(
            r <= 0 for v in self.relative_density_sweep for r in v
        ):
            raise ValueError("data.relative_density_sweep values must be > 0")

    def importance_vectors(self, n_features: int) -> list[list[float]]:
        """The importance vector of each importance group (one unless importance_sweep)."""
        if self.importance_sweep is not None:
            return [list(v) for v in self.importance_sweep]
        if self.importance is not None:
            return [list(self.importance)]
        return [[self.importance_decay**i for i in range(n_features)]]

    def relative_density_vectors(self, n_features: int) -> list[list[float]]:
        """The relative-density vector of each density group (one unless the sweep is set)."""
        if self.relative_density_sweep is not None:
            return [list(v) for v in self.relative_density_sweep]
        if self.relative_density is not None:
            return [list(self.relative_density)]
        return [[1.0] * n_features]

    def instance_settings(self, n_features: int) -> list[InstanceSetting]:
        """Every instance's setting, ordered (probability, importance, density, repeat)."""
        importances = self.importance_vectors(n_features)
        densities = self.relative_density_vectors(n_features)
        return [
            InstanceSetting(p, imp, rd, rep, i, j, k)
            for i, p in enumerate(self.feature_probability)
            for j, imp in enumerate(importances)
            for k, rd in enumerate(densities)
            for rep in range(self.repeats)
        ]


class InstanceSetting(NamedTuple):
    """What one instance of a run is trained on (before restarts)."""

    feature_probability: float
    """The configured p = 1 − S (before relative density)."""
    importance: list[float]
    """[n_features] importance of each feature."""
    relative_density: list[float]
    """[n_features] multiplier of p for each feature."""
    repeat: int
    """Which independent repeat (seed) of this setting."""
    probability_index: int
    importance_index: int
    density_index: int


@dataclass
class OptimConfig(Config):
    """AdamW with an optional warm-up and decay (the paper's recipe by default)."""

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (PyTorch's default, as in Anthropic's notebook)."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """LR after warm-up: constant, or linear / cosine decay to 0 at the last step."""
    warmup_steps: int = 0
    """Linear LR warm-up from 0 over this many steps."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("optim.weight_decay and optim.warmup_steps must be >= 0")


@dataclass
class ToyTrainConfig(Config):
    """The training loop."""

    steps: int = 10_000
    """Optimizer steps."""
    batch_size: int = 1024
    """Global batch size (split evenly across devices)."""
    seed: int = 0
    """Seeds the initialisation and the data stream."""
    restarts: int = 1
    """Best-of-k: train k copies of every instance, keep the one with the lowest loss."""
    data_shards: int | None = None
    """The global batch is drawn in this many seeded blocks; a run on N devices draws
    data_shards / N blocks per rank. Runs with the same value see the same data whatever the
    device count. None: one block per device."""
    eval_samples: int = 65_536
    """Fresh samples used to measure each instance's final loss (and pick restarts)."""
    log_every: int = 100
    """Log metrics every this many steps."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every this many steps."""
    snapshot_every: int = 0
    """Learning dynamics: record every instance's ‖W_i‖, D_i and loss every this many steps
    into dynamics.safetensors (0: off)."""

    def validate(self) -> None:
        if self.snapshot_every < 0:
            raise ValueError(f"train.snapshot_every must be >= 0, got {self.snapshot_every}")
        if self.checkpoint_every < 1:
            raise ValueError(f"train.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.restarts < 1 or self.eval_samples < 1:
            raise ValueError("train.batch_size, train.restarts, train.eval_samples must be >= 1")
        if self.data_shards is not None and self.data_shards < 1:
            raise ValueError("train.data_shards must be >= 1")
        if self.log_every < 1:
            raise ValueError("train.log_every must be >= 1")


@dataclass
class ToyConfig(Config):
    """A complete toy-model run."""

    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: ToyTrainConfig = field(default_factory=ToyTrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        n = self.model.n_features
        d = self.data
        if d.relative_density is not None and len(d.relative_density) != n:
            raise ValueError(
                f"data.relative_density needs {n} values, got {len(d.relative_density)}"
            )
        if d.importance is not None and len(d.importance) != n:
            raise ValueError(f"data.importance needs {n} values, got {len(d.importance)}")
        for name in ("importance_sweep", "relative_density_sweep"):
            for k, v in enumerate(getattr(d, name) or []):
                if len(v) != n:
                    raise ValueError(f"data.{name}[{k}] needs {n} values, got {len(v)}")
        in_sets = (d.correlated_sets + d.anticorrelated_sets) * d.set_size
        if in_sets > n:
            raise ValueError(f"data sets need {in_sets} features but model.n_features is {n}")
        check_data_shards(self.train.data_shards, self.train.batch_size, self.runtime)

    @property
    def n_instances(self) -> int:
        """Instances after restarts are resolved: one per (probability, importance vector,
        relative-density vector, repeat)."""
        return len(self.instance_settings())

    def instance_settings(self) -> list[InstanceSetting]:
        """Every instance's setting, ordered (probability, importance, density, repeat): the
        order of the weights, of metrics.json and of the data (restarts innermost)."""
        return self.data.instance_settings(self.model.n_features)
