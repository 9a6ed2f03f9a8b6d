"""``sae train``: train a sweep of SAEs on a file of activations or a live toy model."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import (
    config_options,
    device_options,
    device_overrides,
    prepare_out_dir,
    require_checkpoint,
    resolve_run,
)


@click.command("train")
@config_options
@click.option(
    "--activations",
    type=click.Path(path_type=Path),
    default=None,
    help="Activation file (safetensors contract).",
)
@click.option(
    "--toy",
    "toy_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Trained toy-model folder: draw fresh activations every step.",
)
@click.option("--instance", type=int, default=None, help="Toy-model instance (with --toy).")
@device_options
def train(
    config_path: Path | None,
    overrides: tuple[str, ...],
    out_dir: Path | None,
    resume_dir: Path | None,
    overwrite: bool,
    activations: Path | None,
    toy_dir: Path | None,
    instance: int | None,
    devices: int | None,
    strategy: str | None,
    num_nodes: int | None,
    accelerator: str | None,
) -> None:
    """Train a batch of L1 SAEs; write sae_<k>/ folders, metrics.jsonl and checkpoints."""
    from cli.sources import build_source
    from sae.config import SAERunConfig
    from sae.train import train_saes

    extra = device_overrides(devices, strategy, num_nodes, accelerator)
    if activations is not None:
        extra.append(f"data.activations={activations}")
    if toy_dir is not None:
        extra.append(f"data.toy_dir={toy_dir}")
    if instance is not None:
        extra.append(f"data.toy_instance={instance}")
    config, out, resuming = resolve_run(
        SAERunConfig,
        config_path,
        list(overrides) + extra,
        out_dir,
        resume_dir,
        overwrite,
        prepare=False,
    )
    if resuming:
        require_checkpoint(out)
    source, info = build_source(config)  # a broken input fails before the folder is touched
    if not resuming:
        prepare_out_dir(out, overwrite)
    folders = train_saes(config, source, out, resume=resuming, source_info=info)
    if folders is not None:
        click.echo(f"wrote {len(folders)} SAE(s) to {out}")
