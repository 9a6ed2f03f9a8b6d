"""One SAE training run: many SAEs (a sweep) trained together, saved one folder per instance."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from sae.config import SAERunConfig
from sae.data import ActivationSource
from sae.io import save_sae
from sae.lightning_module import SAEModule
from sae.run.engine import ChunkCallback
from sae.run.files import write_json
from sae.run.fit import fit
from sae.run.instance_names import name_instances
from sae.run.layout import RunDir
from sae.run.metrics_log import MetricsFile
from sae.run.runtime import finish_wandb, wandb_run_info


def train_saes(
    config: SAERunConfig,
    source: ActivationSource,
    out_dir: str | Path,
    resume: bool = False,
    source_info: dict[str, Any] | None = None,
) -> list[Path] | None:
    """Train every instance of the sweep; on rank 0 write ``config.yaml``, ``metrics.jsonl`` and
    ``sae_<k>/{sae_weights.safetensors,cfg.json}``. Returns the SAE folders (None off rank 0)."""
    out_dir = Path(out_dir)
    run = RunDir(out_dir)
    module = SAEModule(config, source.d, source)
    callbacks = [MetricsFile(out_dir), FiringHistogram()]
    try:
        # config.yaml keeps the data paths relative to the run folder (the run stays portable)
        result = fit(
            module, portable_config(config, run), out_dir, resume, callbacks, job_type="sae"
        )
    finally:
        source.close()  # stops a prefetching thread, frees device-resident rows
    if not result.is_global_zero:
        return None
    source_info = portable_record(source_info or {}, run)
    folders = save_instances(module, config, out_dir, source_info)
    wandb_info = wandb_run_info(result.logger)
    if wandb_info is not None:
        wandb_info["dir"] = run.stored_path(wandb_info["dir"])
    run_record = {
        "instances": [f.name for f in folders],
        "source": source_info,
        **result.run_facts(),
        "wandb": wandb_info,
    }
    write_json(RunDir(out_dir).record, run_record)
    if result.logger is not None and config.wandb.log_artifacts:
        from sae.run.artifacts import log_activation_metadata, log_files

        for k, folder in enumerate(folders):
            log_files(result.logger, folder.name, "sae", [folder], {"instance": k})
        if config.data.activations:
            log_activation_metadata(result.logger, config.data.activations)
    finish_wandb(result.logger)
    return folders


PATH_KEYS = ("activations", "toy_dir")
"""The data paths of a run's config (``data.*``) and record (``source.*``)."""


def portable_config(config: SAERunConfig, run: RunDir) -> SAERunConfig:
    """``config`` with its data paths relative to the run folder (``RunDir.find_path`` reads
    them back)."""
    data = config.data
    paths = {k: run.stored_path(getattr(data, k)) for k in PATH_KEYS if getattr(data, k)}
    return dataclasses.replace(config, data=dataclasses.replace(data, **paths))


def portable_record(record: dict[str, Any], folder: RunDir) -> dict[str, Any]:
    """A source record with its paths relative to ``folder``, each followed by the absolute
    path it had at training time (``<key>_absolute``: found there when the run folder moved
    without its data)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k in PATH_KEYS and v:
            out[k] = folder.stored_path(v)
            out[f"{k}_absolute"] = os.path.abspath(v)
        elif not k.endswith("_absolute"):
            out[k] = v
    return out


def save_instances(
    module: SAEModule, config: SAERunConfig, out_dir: Path, source_info: dict[str, Any]
) -> list[Path]:
    l1, lr, seeds = config.sweep.expanded()
    scale = float(module.input_scale)
    run = RunDir(out_dir)
    folders = []
    for k in range(module.sae.n_instances):
        cfg = {
            "d_in": module.sae.d_in,
            "d_sae": module.sae.widths[k],
            "recipe": config.sae.recipe,
            "tied": config.sae.tied,
            "l1_coefficient": l1[k],
            "lr": lr[k],
            "seed": seeds[k],
            "instance": k,
            "steps": config.train.steps,
            "input_scale_folded": scale,
            "source": source_info,
        }
        folder = run.sae(k).root
        # cfg.json's paths are relative to the SAE's own folder, like every file's in a run
        in_run = {
            key: run.find_path(v) if key in PATH_KEYS and v else v for key, v in source_info.items()
        }
        cfg["source"] = portable_record(in_run, RunDir(folder))
        save_sae(folder, module.sae.instance_weights(k, scale), cfg)
        folders.append(folder)
    return folders


class FiringHistogram(ChunkCallback):
    """Logs each instance's latent firing frequencies (log10) to wandb on logging steps."""

    def on_chunk_end(self, trainer: Any, module: Any, out: Any) -> None:
        freq = out.firing_frequency if out is not None else None
        if freq is None or not trainer.is_global_zero or trainer.logger is None:
            return
        import numpy as np
        import wandb

        widths = module.sae.widths  # a width sweep: only each instance's own latents
        payload = {
            f"firing_frequency/instance_{k}": wandb.Histogram(
                np.log10(freq[k, : widths[k]].numpy() + 1e-10)
            )
            for k in range(freq.shape[0])
        }
        # The scalars of this logging step went out stamped with the step just trained.
        payload = name_instances(payload, getattr(module, "instance_labels", None))
        trainer.logger.log_metrics(payload, step=trainer.global_step - 1)
