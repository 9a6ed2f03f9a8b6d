"""``sae run``: the whole pipeline on one config."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import config_options, device_options, device_overrides, resolve_run


@click.command("run")
@config_options
@device_options
def run(
    config_path: Path | None,
    overrides: tuple[str, ...],
    out_dir: Path | None,
    resume_dir: Path | None,
    overwrite: bool,
    devices: int | None,
    strategy: str | None,
    num_nodes: int | None,
    accelerator: str | None,
) -> None:
    """Toy model -> activations -> SAE sweep -> scores -> report.md (with plots)."""
    from cli.pipeline import PipelineConfig, run_pipeline

    device_flags = device_overrides(devices, strategy, num_nodes, accelerator)
    both = [f"{stage}.{flag}" for stage in ("toy", "sae") for flag in device_flags]
    config, out, resuming = resolve_run(
        PipelineConfig, config_path, list(overrides) + both, out_dir, resume_dir, overwrite
    )
    run_pipeline(config, out, resume=resuming, echo=lambda m: click.echo(m, err=True))
