"""One toy-model run: Lightning training, best-of-k selection, weights, metrics and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.run.files import write_json
from sae.run.fit import FitResult, fit
from sae.run.layout import RunDir
from sae.run.metrics_log import MetricsFile
from sae.run.runtime import finish_wandb
from toymodels.config import ToyConfig
from toymodels.data import FeatureDistribution
from toymodels.diagnostics import diagnose, represented
from toymodels.io import save_toy_model
from toymodels.lightning_module import ToyModelModule, toy_instance_labels
from toymodels.models import select_instances

MAX_INSTANCE_PLOTS = 16


def train_toy(
    config: ToyConfig, out_dir: str | Path, resume: bool = False
) -> dict[str, Any] | None:
    """Train, then on rank 0 write config.yaml, model.safetensors, metrics.json and plots/.

    Returns the metrics record on rank 0 and None on the other ranks.
    """
    out_dir = Path(out_dir)
    module = ToyModelModule(config)
    result = fit(module, config, out_dir, resume, [MetricsFile(out_dir)], job_type="toy")
    if not result.is_global_zero:
        return None
    # The final evaluation runs where training ran (Lightning hands the module back on the CPU).
    device = result.trainer.strategy.root_device
    losses = module.to(device).evaluate(config.train.eval_samples).cpu()
    metrics = _finish(module.cpu(), losses, config, out_dir, result)
    if result.logger is not None and config.wandb.log_artifacts:
        from sae.run.artifacts import log_files

        run = RunDir(out_dir)
        log_files(result.logger, "toy_model", "model", [run.model, run.config, run.metrics])
    finish_wandb(result.logger)
    return metrics


def select_restarts(losses: torch.Tensor, restarts: int) -> torch.Tensor:
    """Index of the lowest-loss restart in each group of ``restarts`` consecutive instances."""
    groups = losses.view(-1, restarts)
    return torch.arange(groups.shape[0]) * restarts + groups.argmin(dim=1)


@torch.no_grad()
def _finish(
    module: ToyModelModule,
    losses: torch.Tensor,
    config: ToyConfig,
    out_dir: Path,
    result: FitResult,
) -> dict[str, Any]:
    keep = select_restarts(losses, config.train.restarts)
    m = config.model
    model = select_instances(module.model, keep)
    distribution = module.distribution.select(keep)
    save_toy_model(RunDir(out_dir).model, model, distribution, config)

    diag = diagnose(model.feature_weights)
    rep = represented(model)
    settings = config.instance_settings()
    restart_losses = losses.view(-1, config.train.restarts)
    records = []
    for k, setting in enumerate(settings):
        records.append(
            {
                "instance": k,
                "loss": float(losses[keep[k]]),
                "restart_losses": restart_losses[k].tolist(),
                "feature_probability": float(setting.feature_probability),
                "importance": setting.importance,
                "relative_density": setting.relative_density,
                "n_represented": int(rep[k].sum()),
                "represented": rep[k].tolist(),
                "dims_per_feature": float(diag.dims_per_feature[k]),
                "frobenius_norm_sq": float(diag.feature_norms[k].square().sum()),
                "feature_dimensionality": diag.feature_dimensionality[k].tolist(),
                "feature_norms": diag.feature_norms[k].tolist(),
                "interference": diag.interference[k].tolist(),
            }
        )
    metrics = {
        "kind": m.kind,
        **result.run_facts(),
        "instances": records,
    }
    write_json(RunDir(out_dir).metrics, metrics)
    plots = _plot(model, distribution, diag, config, RunDir(out_dir).plots)
    if result.logger is not None:
        _log_final(result.logger, records, plots, toy_instance_labels(config))
    return metrics


def _plot(
    model: Any, distribution: FeatureDistribution, diag: Any, config: ToyConfig, folder: Path
) -> dict[str, Path]:
    from toymodels import plots

    W = model.feature_weights.detach().numpy()
    b = model.b.detach().numpy()
    made: dict[str, Path] = {}
    for k in range(min(config.n_instances, MAX_INSTANCE_PLOTS)):
        p = config.instance_settings()[k].feature_probability
        title = f"instance {k}, 1-S = {p:g}"
        made[f"wtw_instance{k}"] = plots.plot_wtw(
            W[k], b[k], folder / f"wtw_instance{k}.png", title
        )
        made[f"feature_norms_instance{k}"] = plots.plot_feature_norms(
            diag.feature_norms[k].numpy(),
            diag.interference[k].numpy(),
            folder / f"feature_norms_instance{k}.png",
            title,
        )
        if model.privileged_basis:
            made[f"neuron_stack_instance{k}"] = plots.plot_neuron_stack(
                W[k], folder / f"neuron_stack_instance{k}.png", title
            )
    made["dimensionality"] = plots.plot_dimensionality(
        distribution.probability[:, 0].numpy(),
        diag.feature_dimensionality.numpy(),
        diag.dims_per_feature.numpy(),
        folder / "dimensionality.png",
        f"{config.model.kind}: n={config.model.n_features}, m={config.model.n_hidden}",
    )
    return made


def _log_final(
    logger: Any, records: list[dict[str, Any]], plots: dict[str, Path], labels: list[str]
) -> None:
    import wandb

    from sae.run.instance_names import name_instances

    payload: dict[str, Any] = {
        f"plots/{name}": wandb.Image(str(path)) for name, path in plots.items()
    }
    for r in records:
        k = r["instance"]
        payload[f"final/loss/instance_{k}"] = r["loss"]
        payload[f"final/n_represented/instance_{k}"] = r["n_represented"]
        payload[f"final/dims_per_feature/instance_{k}"] = r["dims_per_feature"]
    logger.experiment.log(name_instances(payload, labels))
