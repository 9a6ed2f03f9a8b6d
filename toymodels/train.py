"""One toy-model run: Lightning training, best-of-k selection, weights, metrics and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from sae.run.files import write_json
from sae.run.fit import FitResult, fit
from sae.run.layout import RunDir
from sae.run.metrics_log import MetricsFile
from sae.run.runtime import finish_wandb
from toymodels.adversarial import adversarial_vulnerability
from toymodels.config import ToyConfig
from toymodels.data import FeatureDistribution
from toymodels.diagnostics import diagnose, represented
from toymodels.dynamics import DynamicsRecorder, save_dynamics
from toymodels.io import save_toy_model
from toymodels.lightning_module import ToyModelModule, toy_instance_labels
from toymodels.models import select_instances

MAX_INSTANCE_PLOTS = 16
"""Instances shown in the per-instance grid figures."""
MAX_DYNAMICS_PLOTS = 4
"""Instances shown in the learning-dynamics figure."""
ADVERSARIAL_SAMPLES = 8192
"""Evaluation inputs the analytic attack is measured on."""


def train_toy(
    config: ToyConfig, out_dir: str | Path, resume: bool = False
) -> dict[str, Any] | None:
    """Train, then on rank 0 write config.yaml, model.safetensors, metrics.json and plots/.

    Returns the metrics record on rank 0 and None on the other ranks.
    """
    out_dir = Path(out_dir)
    module = ToyModelModule(config)
    callbacks: list[Any] = [MetricsFile(out_dir)]
    recorder = None
    if config.train.snapshot_every:
        recorder = DynamicsRecorder(config.train.snapshot_every)
        callbacks.append(recorder)
    try:
        result = fit(module, config, out_dir, resume, callbacks, job_type="toy")
    finally:
        module.blocks.stop()  # after an error too: Lightning then calls no module hook
    if not result.is_global_zero:
        return None
    # The final evaluation runs where training ran (Lightning hands the module back on the CPU),
    # in float32 whatever the training precision: the model as it is saved.
    device = result.trainer.strategy.root_device
    losses = module.to(device, torch.float32).evaluate(config.train.eval_samples).cpu()
    metrics = _finish(module.cpu(), losses, config, out_dir, result, recorder)
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
    recorder: DynamicsRecorder | None = None,
) -> dict[str, Any]:
    keep = select_restarts(losses, config.train.restarts)
    m = config.model
    run = RunDir(out_dir)
    model = select_instances(module.model, keep)
    distribution = module.distribution.select(keep)
    save_toy_model(run.model, model, distribution, config)

    diag = diagnose(model.feature_weights)
    rep = represented(model)
    attack = _attack(module, model, distribution)
    settings = config.instance_settings()
    restart_losses = losses.view(-1, config.train.restarts)
    records = []
    for k, setting in enumerate(settings):
        record = {
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
        if attack is not None:
            record["adversarial"] = {
                # null, not Infinity (invalid JSON), when the clean loss is 0
                "vulnerability": _finite_or_none(float(attack.vulnerability[k])),
                "amplification": float(attack.amplification[k]),
                "attack_norm": float(attack.attack_norm[k]),
                "clean_loss": float(attack.clean_loss[k]),
                "attacked_loss": float(attack.attacked_loss[k]),
                "attacked_feature": int(attack.attacked_feature[k]),
            }
        records.append(record)
    metrics = {
        "kind": m.kind,
        **result.run_facts(),
        "instances": records,
    }
    write_json(run.metrics, metrics)
    snapshots = None
    if recorder is not None and recorder.steps:
        snapshots = recorder.kept(keep)
        save_dynamics(run.dynamics, snapshots)
    plots = _plot(model, distribution, diag, rep, records, config, run, snapshots)
    if result.logger is not None:
        _log_final(result.logger, records, plots, toy_instance_labels(config))
    return metrics


def _attack(module: ToyModelModule, model: Any, distribution: FeatureDistribution) -> Any:
    """The analytic adversarial attack on every kept instance (tied models only), on the first
    evaluation inputs (the same for every restart)."""
    if model.kind == "abs":
        return None
    samples = min(ADVERSARIAL_SAMPLES, module.config.train.eval_samples)
    x, _ = next(iter(module.eval_batches(samples)))
    return adversarial_vulnerability(model, distribution.importance, x)


def _plot(
    model: Any,
    distribution: FeatureDistribution,
    diag: Any,
    rep: torch.Tensor,
    records: list[dict[str, Any]],
    config: ToyConfig,
    run: RunDir,
    snapshots: dict[str, torch.Tensor] | None,
) -> dict[str, Path]:
    """One grid figure per quantity across (at most MAX_INSTANCE_PLOTS) instances, plus the
    sweep-wide figures: a handful of files whatever the number of instances."""
    from toymodels import plots

    shown = slice(0, min(config.n_instances, MAX_INSTANCE_PLOTS))
    W = model.feature_weights.detach().numpy()[shown]
    labels = toy_instance_labels(config)[shown]
    titles = [label or f"instance {k}" for k, label in enumerate(labels)]
    made: dict[str, Path] = {
        "wtw": plots.plot_wtw_grid(W, model.b.detach().numpy()[shown], titles, run.plot("wtw")),
        "feature_norms": plots.plot_feature_norms_grid(
            diag.feature_norms.numpy()[shown],
            diag.interference.numpy()[shown],
            titles,
            run.plot("feature_norms"),
        ),
    }
    if model.privileged_basis:
        made["neuron_stack"] = plots.plot_neuron_stack_grid(W, titles, run.plot("neuron_stack"))
    if config.model.n_hidden in (2, 3) and model.kind != "abs":
        made["geometry"] = plots.plot_geometry_grid(
            W,
            distribution.importance.numpy()[shown],
            rep.numpy()[shown],
            titles,
            run.plot("geometry"),
        )
    made["dimensionality"] = plots.plot_dimensionality(
        distribution.probability[:, 0].numpy(),
        diag.feature_dimensionality.numpy(),
        diag.dims_per_feature.numpy(),
        run.plot("dimensionality"),
        f"{config.model.kind}: n={config.model.n_features}, m={config.model.n_hidden}",
    )
    if "adversarial" in records[0] and config.n_instances > 1:
        made["adversarial"] = plots.plot_adversarial(
            [r["feature_probability"] for r in records],
            [r["frobenius_norm_sq"] / config.model.n_hidden for r in records],
            [_nan_if_none(r["adversarial"]["vulnerability"]) for r in records],
            [r["adversarial"]["amplification"] for r in records],
            run.plot("adversarial"),
        )
    if snapshots is not None:
        few = slice(0, min(config.n_instances, MAX_DYNAMICS_PLOTS))
        made["dynamics"] = plots.plot_dynamics(
            snapshots["step"].numpy(),
            snapshots["feature_dimensionality"][:, few].numpy(),
            snapshots["loss"][:, few].numpy(),
            titles[few],
            run.plot("dynamics"),
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


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
