"""Scoring a whole SAE run: every ``sae_<k>`` against the ground truth, on one device, with
``eval_stats.json`` and plots beside each SAE and the scores logged to wandb: a run of their own
(job_type "eval") in the training run's group.

Where the ground truth comes from (the training file's held-out rows, another file, or a live toy
model) is the caller's decision, made from the run's record (``run.json``): ``evaluate_run``
takes it as a function of the run folder and that record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae.activations import GroundTruth
from sae.run.errors import UsageError
from sae.run.layout import RunDir, SAEDir


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    """The record a finished SAE run wrote (``run.json``)."""
    layout = RunDir(run_dir)
    if not layout.record.exists():
        raise UsageError(f"{run_dir} holds no finished SAE run (no {RunDir.RECORD})")
    return json.loads(layout.record.read_text())


def evaluate_run(
    run_dir: str | Path,
    ground_truth: Callable[[RunDir, dict[str, Any]], GroundTruth],
    accelerator: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Evaluate each ``sae_<k>`` of a run on ``accelerator`` (see ``sae.evaluate.ACCELERATORS``)
    against ``ground_truth(run folder, run record)``; returns name -> {scalars, cfg, plots,
    features}."""
    from sae.run.runtime import eval_wandb_run

    layout = RunDir(run_dir)
    run = read_run_record(run_dir)
    truth = ground_truth(layout, run)
    folders = [layout.root / name for name in run["instances"]]
    results = score_saes(folders, truth, accelerator)
    info = run.get("wandb")
    if info and info.get("dir"):  # kept relative to the run folder
        info = {**info, "dir": str(layout.find_path(info["dir"]))}
    if info:
        labels = _labels(results)
        saes = {label or name: name for label, name in zip(labels, results)}
        _log_to_wandb(eval_wandb_run(info, {"saes": saes}), results, labels)
    return results


def _labels(results: dict[str, dict[str, Any]]) -> list[str]:
    """wandb names of the scored SAEs: the sweep values that tell them apart (as in training),
    or their folder names when a cfg lacks them."""
    from sae.run.instance_names import instance_labels

    keys = {"l1": "l1_coefficient", "lr": "lr", "seed": "seed"}
    cfgs = [r["cfg"] for r in results.values()]
    if not all(c.get(k) is not None for c in cfgs for k in keys.values()):
        return list(results)
    if len({c.get("d_sae") for c in cfgs}) > 1:  # a width sweep, named as in training
        keys["d_sae"] = "d_sae"
    return instance_labels({short: [c[k] for c in cfgs] for short, k in keys.items()})


def is_sae_folder(path: str | Path) -> bool:
    """One SAE in SAELens's layout (``cfg.json`` + ``sae_weights.safetensors``), not a run."""
    folder = SAEDir(path)
    return folder.weights.is_file() and folder.cfg.is_file() and not RunDir(path).record.exists()


def score_saes(
    folders: list[Path], truth: GroundTruth, accelerator: str = "auto"
) -> dict[str, dict[str, Any]]:
    """Evaluate each SAE folder (ours or SAELens's) against ``truth``; writes
    ``eval_stats.json`` and the plots beside each SAE; returns folder name -> {scalars, cfg,
    plots, features}."""
    from sae.evaluate import evaluate_sae, resolve_device, write_eval
    from sae.io import load_sae

    device = resolve_device(accelerator)
    results: dict[str, dict[str, Any]] = {}
    for folder in folders:
        name = folder.name
        loaded = load_sae(folder)
        width = truth.directions.shape[1]
        if width != loaded.d_in:
            raise UsageError(
                f"{truth.source}: activations have {width} dimensions but {folder} "
                f"reads {loaded.d_in}"
            )
        result = evaluate_sae(
            loaded.batched(),
            truth.directions,
            truth.batches(),
            truth.represented,
            truth.names,
            device=device,
        )
        l1 = loaded.cfg.get("l1_coefficient")
        title = name if l1 is None else f"{name}, l1={l1:g}"
        plots = write_eval(folder, result, title=title)
        results[name] = {
            "scalars": result["scalars"],
            "cfg": loaded.cfg,
            "plots": plots,
            "features": result["features"],
        }
    return results


def _log_to_wandb(run: Any, results: dict[str, dict[str, Any]], labels: list[str]) -> None:
    if run is None:
        return
    import wandb

    payload: dict[str, Any] = {}
    for label, r in zip(labels, results.values()):
        prefix = f"eval/{label}/" if label else "eval/"  # a lone SAE: eval/<score>
        payload |= {f"{prefix}{k}": v for k, v in r["scalars"].items() if v is not None}
        payload |= {f"{prefix}{k}": wandb.Image(str(p)) for k, p in r["plots"].items()}
        columns = list(r["features"][0])
        payload[f"{prefix}features"] = wandb.Table(
            columns=columns, data=[[row[c] for c in columns] for row in r["features"]]
        )
    run.log(payload)
    run.finish()
