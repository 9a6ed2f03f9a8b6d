"""Export a toy model's activations with their ground truth (the activation-file contract)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sae.activations import GroundTruth, write_activation_file
from sae.metrics import CeilingStats
from sae.run.config_io import config_to_dict
from sae.run.errors import UsageError
from sae.run.seeding import TOY_SCORING_SEED
from toymodels.diagnostics import represented
from toymodels.io import load_toy_model
from toymodels.models import select_instances

EXPORT_CHUNK = 65_536
"""Rows drawn at a time while exporting."""


class ToyActivationSource:
    """Fresh activations of one toy-model instance, drawn on demand (for live SAE training)."""

    def __init__(self, run_dir: str | Path, instance: int) -> None:
        loaded = load_toy_model(run_dir)
        n = loaded.config.n_instances
        if not 0 <= instance < n:
            raise UsageError(
                f"instance {instance} out of range: {run_dir} has instances 0..{n - 1}"
            )
        self.config = loaded.config
        self.run_dir, self.instance = run_dir, instance
        self.model = select_instances(loaded.model, slice(instance, instance + 1))
        self.model.requires_grad_(False)
        self.distribution = loaded.distribution.select(slice(instance, instance + 1))
        directions, self.feature_names = self.model.ground_truth()
        self.ground_truth = directions[0]
        self.d = self.ground_truth.shape[1]

    def to(self, device: torch.device | str) -> ToyActivationSource:
        self.model.to(device)
        self.distribution.to(device)
        return self

    @torch.no_grad()
    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(activations [B, d], true codes [B, n_ground]) for ``batch_size`` fresh inputs."""
        x = self.distribution.sample(batch_size, generator)
        # Row-major copies: the model computes instance-major, an SAE reads rows.
        hidden, codes = self.model(x).hidden[:, 0], self.model.true_codes(x)[:, 0]
        return hidden.contiguous(), codes.contiguous()

    def feature_probability(self) -> torch.Tensor:
        """How often each ground-truth direction is active (a member of an anticorrelated set
        of k: p / k)."""
        marginal = self.distribution.marginal_probability()[0].cpu()
        return self.model.ground_truth_probability(marginal)

    def represented(self) -> torch.Tensor:
        """The rule metrics.json uses: a lone feature moves its own output by > 0.5."""
        return represented(self.model)[0].cpu()

    def scoring_ground_truth(self, samples: int, batch_size: int) -> GroundTruth:
        """What an SAE trained live on this instance is scored against: ``samples`` fresh rows
        from a stream training never draws from."""

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            g = torch.Generator().manual_seed(TOY_SCORING_SEED)
            for i in range(0, samples, batch_size):
                yield self.sample(min(batch_size, samples - i), g)

        return GroundTruth(
            str(self.run_dir), self.ground_truth, self.represented(), self.feature_names, batches
        )

    def info(self, run_dir: str | Path) -> dict[str, Any]:
        return {
            "source": "toy-model",
            "run_dir": str(run_dir),
            "model_kind": self.model.kind,
            "instance": self.instance,
            "feature_names": self.feature_names,
            "config": config_to_dict(self.config),
        }


def export_activations(
    run_dir: str | Path,
    instance: int,
    samples: int,
    out: str | Path,
    seed: int = 0,
    feature_acts: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write ``samples`` activations of ``instance`` with ground truth to ``out``."""
    if samples < 1:
        raise UsageError(f"--samples must be >= 1, got {samples}")
    source = ToyActivationSource(run_dir, instance)
    if Path(out).exists() and not overwrite:
        raise UsageError(f"{out} already exists; use --overwrite to replace it")
    g = torch.Generator().manual_seed(seed)
    acts, codes = [], []
    ceiling = CeilingStats()
    for start in range(0, samples, EXPORT_CHUNK):
        h, c = source.sample(min(EXPORT_CHUNK, samples - start), g)
        acts.append(h)
        codes.append(c)
        ceiling.update(h, c @ source.ground_truth)
    info = source.info(run_dir) | {
        "samples": samples,
        "seed": seed,
        # What the true codes and directions explain of these rows: 1 for linear and
        # relu_output (h = Σ x_i W_i), below 1 for relu_hidden and abs.
        "explained_variance_ceiling": ceiling.explained_variance(),
    }
    write_activation_file(
        out,
        torch.cat(acts),
        ground_truth=source.ground_truth,
        feature_probability=source.feature_probability(),
        represented=source.represented(),
        feature_acts=torch.cat(codes) if feature_acts else None,
        info=info,
    )
    return Path(out)
