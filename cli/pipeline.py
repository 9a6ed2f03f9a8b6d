"""The whole pipeline: toy model -> activations -> SAE sweep -> scores -> report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.common import is_main_process
from sae.config import SAERunConfig
from sae.run.config_io import Config, config_to_yaml
from sae.run.distributed import wait_for_all_ranks
from sae.run.files import write_text
from sae.run.layout import PipelineDir, RunDir
from sae.run.seeding import PIPELINE_EXPORT_SEED
from toymodels.config import ToyConfig


@dataclass
class ExportConfig(Config):
    """Which toy-model instance becomes the SAE's data, and how much of it."""

    instance: int = 0
    """Toy-model instance to export."""
    samples: int = 100_000
    """Rows in the activation file (the SAE run holds out its last data.holdout_fraction)."""
    seed: int = PIPELINE_EXPORT_SEED
    """Seed of the exported input stream."""

    def validate(self) -> None:
        if self.samples < 2 or self.instance < 0:
            raise ValueError("export.samples must be >= 2 and export.instance >= 0")


@dataclass
class PipelineConfig(Config):
    """``sae run``: a toy-model config, an export, and an SAE-run config (its data source is
    filled in by the pipeline)."""

    toy: ToyConfig = field(default_factory=ToyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sae: SAERunConfig = field(default_factory=SAERunConfig)

    def warnings(self) -> list[str]:
        return self.sae.warnings(prefix="sae.")


def run_pipeline(
    config: PipelineConfig, out_dir: Path, resume: bool = False, echo: Any = print
) -> dict[str, Any] | None:
    """Run the stages in order, skipping those already complete (so --resume picks up where an
    interrupted run stopped). Returns the evaluation results on rank 0."""
    from cli.sources import build_source, ground_truth
    from sae.evaluate import scoring_accelerator
    from sae.report import write_report
    from sae.scoring import evaluate_run
    from sae.train import train_saes
    from toymodels.export import export_activations
    from toymodels.train import train_toy

    layout = PipelineDir(out_dir)
    _one_wandb_group(config, layout)
    main = is_main_process()
    if not main:  # the extra ranks train silently
        echo = _silent
    if main:
        write_text(layout.config, config_to_yaml(config))
    toy, act_file, sae_run = layout.toy, layout.activations, layout.sae_run

    # Under DDP Lightning starts the extra ranks at the first training, re-running this command:
    # they skip what is already on disk and join that training. The process group then lasts
    # the whole command, so after the toy stage the extra ranks wait for rank 0's export and
    # join the SAE stage.
    if not toy.model.exists():
        echo("[1/4] training toy models")
        train_toy(config.toy, toy.root, resume=resume and toy.last_checkpoint.exists())
    if main and not act_file.exists():
        echo(
            f"[2/4] exporting {config.export.samples} activations of instance "
            f"{config.export.instance}"
        )
        export_activations(
            toy.root,
            config.export.instance,
            config.export.samples,
            act_file,
            seed=config.export.seed,
        )
    wait_for_all_ranks()
    sae_config = config.sae
    sae_config.data.activations, sae_config.data.toy_dir = str(act_file), None
    if not sae_run.record.exists():
        echo(f"[3/4] training {sae_config.sweep.n_instances} SAEs in one batched run")
        source, info = build_source(sae_config)
        sae_run.root.mkdir(parents=True, exist_ok=True)
        folders = train_saes(
            sae_config,
            source,
            sae_run.root,
            source_info=info,
            resume=resume and sae_run.last_checkpoint.exists(),
        )
        if folders is None:
            return None
    echo("[4/4] scoring against the ground truth")
    results = evaluate_run(
        sae_run.root, ground_truth, scoring_accelerator(config.sae.runtime.accelerator)
    )
    toy_metrics = _toy_summary(toy, config.export.instance)
    write_report(
        layout.report,
        "SAE feature recovery on a toy model of superposition",
        toy_metrics,
        results,
    )
    return results


def _silent(*args: Any, **kwargs: Any) -> None:
    pass


def _one_wandb_group(config: PipelineConfig, layout: PipelineDir) -> None:
    """The toy run, the SAE run and the evaluation share one wandb group: the one configured,
    else ``<output folder>-<random>``, saved in config.yaml (so --resume keeps it)."""
    import secrets

    group = config.toy.wandb.group or config.sae.wandb.group
    if group is None:
        group = f"{layout.root.resolve().name}-{secrets.token_hex(3)}"
    config.toy.wandb.group = config.sae.wandb.group = group


def _toy_summary(toy: RunDir, instance: int) -> list[str]:
    import json

    metrics = json.loads(toy.metrics.read_text())
    r = metrics["instances"][instance]
    n = len(r["feature_norms"])
    return [
        f"Toy model `{metrics['kind']}` instance {instance}: {n} features, 1 − S = "
        f"{r['feature_probability']:g}, {r['n_represented']} features represented "
        f"(alone, each moves the output by > 0.5), D* = {r['dims_per_feature']:.3f} "
        f"dimensions per feature, loss {r['loss']:.5f}. "
        f"Plots: `{PipelineDir.TOY}/{RunDir.PLOTS}/`.",
    ]
