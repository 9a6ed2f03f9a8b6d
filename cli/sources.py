"""Builds an SAE run's activation source from its config: a file or a live toy model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae.activations import ActivationFile
from sae.config import SAERunConfig
from sae.data import ActivationSource, FileSource, GeneratedSource
from sae.run.errors import UsageError


def build_source(config: SAERunConfig) -> tuple[ActivationSource, dict[str, Any]]:
    data = config.data
    if (data.activations is None) == (data.toy_dir is None):
        raise UsageError("give exactly one activation source: --activations FILE or --toy DIR")
    if data.activations is not None:
        file = ActivationFile(data.activations)
        source = FileSource(
            file,
            data.holdout_fraction,
            config.train.data_seed,
            config.train.batch_size,
            data.resident_budget_gb,
        )
        return source, {
            "activations": str(Path(data.activations)),
            "n_rows": file.n_rows,
            "holdout_rows": file.n_rows - source.n_train,
        }
    from toymodels.export import ToyActivationSource

    toy = ToyActivationSource(data.toy_dir, data.toy_instance)

    def draw(n: int, generator: Any) -> Any:
        return toy.sample(n, generator)[0]

    source = GeneratedSource(draw, toy.d, config.train.data_seed, to_device=toy.to)
    return source, {"toy_dir": str(data.toy_dir), "toy_instance": data.toy_instance}
