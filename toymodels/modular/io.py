"""Saving and loading trained modular-addition models: ``model.safetensors`` with the config."""

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
from toymodels.modular.config import ModularConfig
from toymodels.modular.model import WEIGHT_NAMES, BilinearWeights

FORMAT = "sae-toolkit/modular-addition"


class LoadedModular(NamedTuple):
    weights: BilinearWeights
    config: ModularConfig


def save_modular(path: str | Path, weights: BilinearWeights, config: ModularConfig) -> None:
    tensors = {n: t.detach().float().cpu().contiguous() for n, t in zip(WEIGHT_NAMES, weights)}
    metadata = {"format": FORMAT, "config": json.dumps(config_to_dict(config))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def model_format(run_dir: str | Path) -> str | None:
    """The ``format`` a run folder's (or a model file's) metadata names, or None."""
    path = Path(run_dir)
    if path.is_dir():
        path = RunDir(path).model
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError):
        return None


def load_modular(run_dir: str | Path) -> LoadedModular:
    """Load ``run_dir/model.safetensors`` (or a model file given directly)."""
    path = Path(run_dir)
    if path.is_dir():
        path = RunDir(path).model
    if not path.exists():
        raise UsageError(f"no trained model at {path} (run `sae toy modular` first)")
    if model_format(path) != FORMAT:
        raise UsageError(f"{path}: not a modular-addition model (missing '{FORMAT}' metadata)")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        config = from_dict(ModularConfig, json.loads(f.metadata()["config"]), source=str(path))
    tensors = load_file(str(path))
    try:
        weights = BilinearWeights(*(tensors[n] for n in WEIGHT_NAMES))
    except KeyError as e:
        raise UsageError(f"{path}: missing tensor {e}") from None
    return LoadedModular(weights, config)
