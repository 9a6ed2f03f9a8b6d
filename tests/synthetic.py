"""Helpers for the SAE tests: planted-feature activation files and quiet run configs.

Planted features: x = Σ_i c_i f_i with known unit directions f_i. Feature i is active
independently with probability ``p``; an active feature has a magnitude drawn from U[0, 1]. The
ground truth, the per-feature probability and the true codes are written with the activations,
so a trained SAE can be scored against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sae.activations import ActivationFile, write_activation_file
from sae.config import SAERunConfig
from sae.data import FileSource
from sae.run.config_io import from_dict

PLANTED_SALT = 7_919_000


class Planted(NamedTuple):
    activations: Tensor  # [n_rows, d]
    features: Tensor  # [n_features, d] unit rows
    codes: Tensor  # [n_rows, n_features]


def planted_features(
    n_features: int = 64,
    d: int = 32,
    n_rows: int = 65_536,
    p: float = 0.05,
    seed: int = 0,
) -> Planted:
    # Salted: an SAE seeded like the data would otherwise start with its decoder on the planted
    # directions (both draw standard normals from the same seed) and "recover" them for free.
    g = torch.Generator().manual_seed(PLANTED_SALT + seed)
    features = torch.randn(n_features, d, generator=g)
    features = features / features.norm(dim=-1, keepdim=True)
    active = torch.rand(n_rows, n_features, generator=g) < p
    codes = torch.rand(n_rows, n_features, generator=g) * active
    return Planted(codes @ features, features, codes)


def write_planted_file(path: str | Path, **kwargs) -> Planted:
    """Write a planted-feature activation file (with ground truth) and return its contents."""
    planted = planted_features(**kwargs)
    n_features = planted.features.shape[0]
    p = kwargs.get("p", 0.05)
    write_activation_file(
        path,
        planted.activations,
        ground_truth=planted.features,
        feature_probability=torch.full((n_features,), p),
        represented=torch.ones(n_features, dtype=torch.bool),
        feature_acts=planted.codes,
        info={"source": "tests/synthetic.py", "kwargs": kwargs},
    )
    return planted


SHORT_SCHEDULE: dict[str, Any] = {
    "steps": 300,
    "batch_size": 128,
    "log_every": 50,
    "lr_warmup_steps": 10,
    "lr_schedule": "cosine",
    "l1_warmup_steps": 20,
}
"""A short ``train`` section with every schedule on (LR warm-up and cosine decay, λ warm-up), for
tests that compare runs step for step."""


def sae_config(**sections: dict[str, Any]) -> SAERunConfig:
    """A quiet single-thread SAE run config (no wandb, no progress bar, rare checkpoints);
    ``sections`` (e.g. ``sae={"d_sae": 8}``) override it section by section."""
    data: dict[str, Any] = {
        "train": {"log_every": 100, "checkpoint_every": 100_000},
        "runtime": {"threads": 1, "progress_bar": False},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(SAERunConfig, data)


def file_source(path: str | Path, config: SAERunConfig) -> FileSource:
    """The training source `sae train --activations` builds for ``config``."""
    return FileSource(
        ActivationFile(path),
        config.data.holdout_fraction,
        config.train.data_seed,
        config.train.batch_size,
        config.data.resident_budget_gb,
    )
