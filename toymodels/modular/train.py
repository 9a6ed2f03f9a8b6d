"""One modular-addition run: training through the shared engine, then the analysis of every
instance (``metrics.json``), the weights (``model.safetensors``) and the figures (``plots/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.run.files import write_json
from sae.run.fit import fit
from sae.run.layout import RunDir
from sae.run.metrics_log import MetricsFile
from sae.run.runtime import finish_wandb
from toymodels.modular.analysis import analyse_instance
from toymodels.modular.config import ModularConfig
from toymodels.modular.io import save_modular
from toymodels.modular.lightning_module import ModularModule, train_mask
from toymodels.modular.model import BilinearWeights, accuracy, all_pairs, logits

MAX_INSTANCE_PLOTS = 8


def train_modular(
    config: ModularConfig, out_dir: str | Path, resume: bool = False, plots: bool = True
) -> dict[str, Any]:
    """Train, analyse, and write model.safetensors, metrics.json and plots/ into ``out_dir``."""
    out_dir = Path(out_dir)
    module = ModularModule(config)
    result = fit(module, config, out_dir, resume, [MetricsFile(out_dir)], job_type="toy")
    weights = module.model.cpu().weights()
    weights = BilinearWeights(*(t.detach().clone() for t in weights))
    save_modular(RunDir(out_dir).model, weights, config)
    metrics = {"kind": "modular_addition", **result.run_facts(), **analyse(weights, config)}
    write_json(RunDir(out_dir).metrics, metrics)
    if plots:
        made = plot_run(weights, metrics, config, RunDir(out_dir))
        if result.logger is not None:
            _log_final(result.logger, metrics, made)
    finish_wandb(result.logger)
    return metrics


@torch.no_grad()
def analyse(weights: BilinearWeights, config: ModularConfig) -> dict[str, Any]:
    """Per-instance records (see ``analysis.analyse_instance``) plus train/test accuracy."""
    m, t = config.model, config.train
    pairs = all_pairs(m.p)
    train = train_mask(m.p, t.train_fraction, t.split_seed)
    out = logits(weights, pairs[0], pairs[1], m.layernorm)
    records = []
    for k, seed in enumerate(t.seeds):
        record, _ = analyse_instance(weights.select(k), pairs, config.analysis, t.loss, m.layernorm)
        y = pairs[2]
        record = {
            "instance": k,
            "seed": seed,
            "train_accuracy": float(accuracy(out[k : k + 1, train], y[train])[0]),
            "test_accuracy": (
                float(accuracy(out[k : k + 1, ~train], y[~train])[0]) if (~train).any() else None
            ),
            **record,
        }
        records.append(record)
    return {"instances": records}


def plot_run(
    weights: BilinearWeights, metrics: dict[str, Any], config: ModularConfig, run: RunDir
) -> dict[str, Path]:
    from toymodels.modular import plots
    from toymodels.modular.unmixing import apply_unmixing

    made: dict[str, Path] = {}
    for r in metrics["instances"][:MAX_INSTANCE_PLOTS]:
        k = r["instance"]
        w = BilinearWeights(*(t.double() for t in weights.select(k)))
        Qa = torch.tensor(r["unmix_Q_a"], dtype=torch.float64)
        Qb = torch.tensor(r["unmix_Q_b"], dtype=torch.float64)
        unmixed = apply_unmixing(w, Qa, Qb)
        title = f"seed {r['seed']}"
        made[f"spectrum_instance{k}"] = plots.plot_spectrum(
            w.E_a[0],
            unmixed.E_a[0],
            r["key_frequencies"],
            run.plot(f"spectrum_instance{k}"),
            title,
        )
        made[f"bilinear_instance{k}"] = plots.plot_bilinear(
            w, unmixed, run.plot(f"bilinear_instance{k}"), title
        )
    return made


def _log_final(logger: Any, metrics: dict[str, Any], made: dict[str, Path]) -> None:
    import wandb

    from sae.run.instance_names import instance_labels, name_instances

    labels = instance_labels({"seed": [r["seed"] for r in metrics["instances"]]})
    payload: dict[str, Any] = {f"plots/{n}": wandb.Image(str(p)) for n, p in made.items()}
    for r in metrics["instances"]:
        k = r["instance"]
        for key in (
            "loss",
            "accuracy",
            "mean_column_purity",
            "mean_unmixed_column_purity",
            "bilinear_pm_fraction",
            "rounding_loss_change",
            "unmix_max_logit_change",
        ):
            payload[f"final/{key}/instance_{k}"] = r[key]
    logger.experiment.log(name_instances(payload, labels))
