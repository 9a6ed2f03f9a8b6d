"""The one place that decides where an SAE run's data comes from: a file or a live toy model.

Training builds its source from the config (``build_source``) and keeps what it decided in the
run's record (``run.json`` ``source``: the file, its row count and held-out rows, or the toy
folder and instance). Scoring (``ground_truth``) finds the data the same way and takes the
held-out rows from that record instead of recomputing the split.
This module sits in ``cli/`` because a live source needs ``toymodels``, which ``sae`` never
imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae.activations import ActivationFile, GroundTruth, file_ground_truth
from sae.config import SAERunConfig
from sae.data import ActivationSource, FileSource, GeneratedSource, holdout_rows
from sae.run.config_io import load_config
from sae.run.errors import UsageError
from sae.run.layout import RunDir


def build_source(config: SAERunConfig) -> tuple[ActivationSource, dict[str, Any]]:
    """The training source and its record (what ``run.json`` keeps as ``source``)."""
    data = config.data
    if _is_file(config):
        file = ActivationFile(data.activations)
        source = FileSource(
            file,
            data.holdout_fraction,
            config.train.data_seed,
            config.train.batch_size,
            data.resident_budget_gb,
        )
        return source, _file_record(config, file)
    from toymodels.export import ToyActivationSource

    toy = ToyActivationSource(data.toy_dir, data.toy_instance)

    def draw(n: int, generator: Any) -> Any:
        return toy.sample(n, generator)[0]

    source = GeneratedSource(draw, toy.d, config.train.data_seed, to_device=toy.to)
    return source, _toy_record(config)


def ground_truth(
    run: RunDir,
    record: dict[str, Any],
    activations: Path | None = None,
    samples: int = 50_000,
    batch_size: int = 8192,
) -> GroundTruth:
    """What to score a run's SAEs against: all rows of ``activations`` when given; else the
    run's own data (its config says where it is now): the training file's held-out rows, as
    many as the run's record says training kept back, or ``samples`` fresh rows of the live toy
    model."""
    if activations is not None:
        return file_ground_truth(ActivationFile(activations), 0, batch_size)
    config = in_place(load_config(SAERunConfig, run.config), run, record.get("source"))
    if not _is_file(config):
        from toymodels.export import ToyActivationSource

        toy = ToyActivationSource(config.data.toy_dir, config.data.toy_instance)
        return toy.scoring_ground_truth(samples, batch_size)
    path = config.data.activations
    file = ActivationFile(path)
    held_out = (record.get("source") or {}).get("holdout_rows")
    if held_out is None:  # a record from before it kept the split
        held_out = holdout_rows(file.n_rows, config.data.holdout_fraction)
    truth = file_ground_truth(file, file.n_rows - held_out, batch_size)
    if held_out == 0:
        raise UsageError(
            f"{path}: the run kept no held-out rows (data.holdout_fraction = 0);"
            " pass --activations with a separate file"
        )
    return truth


def in_place(
    config: SAERunConfig, run: RunDir, source: dict[str, Any] | None = None
) -> SAERunConfig:
    """A run's saved config with its data paths usable from here: they are kept relative to
    the run folder (``RunDir.find_path``; old runs' absolute paths stand). ``source``: the
    run's record of its data, with the absolute paths training had."""
    data, source = config.data, source or {}
    if data.activations:
        data.activations = str(run.find_path(data.activations, source.get("activations_absolute")))
    if data.toy_dir:
        data.toy_dir = str(run.find_path(data.toy_dir, source.get("toy_dir_absolute")))
    return config


def _is_file(config: SAERunConfig) -> bool:
    data = config.data
    if (data.activations is None) == (data.toy_dir is None):
        raise UsageError("give exactly one activation source: --activations FILE or --toy DIR")
    return data.activations is not None


def _file_record(config: SAERunConfig, file: ActivationFile) -> dict[str, Any]:
    return {
        "activations": str(Path(config.data.activations)),
        "n_rows": file.n_rows,
        "holdout_rows": holdout_rows(file.n_rows, config.data.holdout_fraction),
    }


def _toy_record(config: SAERunConfig) -> dict[str, Any]:
    return {"toy_dir": str(config.data.toy_dir), "toy_instance": config.data.toy_instance}
