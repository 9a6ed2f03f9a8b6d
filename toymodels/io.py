"""Saving and loading trained toy models: ``model.safetensors`` with the config as metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae.run.config_io import config_to_dict, from_dict
from sae.run.errors import UsageError
from sae.run.files import atomic_path
from sae.run.layout import RunDir
from toymodels.config import ToyConfig
from toymodels.data import FeatureDistribution
from toymodels.models import ToyModel, build_model

FORMAT = "sae-toolkit/toy-model"


class LoadedToy(NamedTuple):
    model: ToyModel
    distribution: FeatureDistribution
    config: ToyConfig


def save_toy_model(
    path: str | Path, model: ToyModel, distribution: FeatureDistribution, config: ToyConfig
) -> None:
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.state_dict().items()}
    tensors["feature_probability"] = distribution.probability.cpu().contiguous()
    tensors["importance"] = distribution.importance.cpu().contiguous()
    metadata = {"format": FORMAT, "config": json.dumps(config_to_dict(config))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_toy_model(run_dir: str | Path) -> LoadedToy:
    """Load ``run_dir/model.safetensors`` (or a model file given directly)."""
    path = Path(run_dir)
    if path.is_dir():
        path = RunDir(path).model
    if not path.exists():
        raise UsageError(f"no trained toy model at {path} (run `sae toy train` first)")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(
            f"{path}: not a readable toy-model file ({str(e).splitlines()[0]})"
        ) from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise UsageError(f"{path}: not a toy-model file (missing '{FORMAT}' metadata)")
    config = from_dict(ToyConfig, json.loads(metadata["config"]), source=str(path))
    m = config.model
    model = build_model(m.kind, config.n_instances, m.n_features, m.n_hidden)
    params = {k: v for k, v in tensors.items() if k in model.state_dict()}
    try:
        model.load_state_dict(params)
    except RuntimeError:
        raise UsageError(f"{path}: weights do not match the model in its config") from None
    distribution = FeatureDistribution(
        tensors["feature_probability"],
        tensors["importance"],
        config.data.correlated_sets,
        config.data.anticorrelated_sets,
        config.data.set_size,
        signed=model.signed_inputs,
    )
    return LoadedToy(model, distribution, config)
