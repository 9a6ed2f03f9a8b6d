"""``sae train``: train a sweep of SAEs on a file of activations or a live toy model."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import RunOptions, prepare_out_dir, run_options
from cli.config_view import flush


@click.command("train")
@run_options(
    click.option(
        "--activations",
        type=click.Path(path_type=Path),
        default=None,
        help="Activation file (safetensors contract).",
    ),
    click.option(
        "--toy",
        "toy_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Trained toy-model folder: draw fresh activations every step.",
    ),
    click.option("--instance", type=int, default=None, help="Toy-model instance (with --toy)."),
    example="sae.d_sae=64",
)
def train(
    run: RunOptions, activations: Path | None, toy_dir: Path | None, instance: int | None
) -> None:
    """Train a batch of L1 SAEs; write sae_<k>/ folders, metrics.jsonl and checkpoints."""
    from cli.sources import build_source
    from sae.config import SAERunConfig
    from sae.train import train_saes

    extra = []
    if activations is not None:
        extra.append(f"data.activations={activations}")
    if toy_dir is not None:
        extra.append(f"data.toy_dir={toy_dir}")
    if instance is not None:
        extra.append(f"data.toy_instance={instance}")
    config, out, resuming = run.resolve(SAERunConfig, extra, prepare=False, needs_checkpoint=True)
    if resuming:  # the saved config keeps its data paths relative to the run folder
        from cli.sources import in_place
        from sae.run.layout import RunDir

        config = in_place(config, RunDir(out))
    source, info = build_source(config)  # a broken input fails before the folder is touched
    if not resuming:
        prepare_out_dir(out, run.overwrite, inputs=(config.data.activations, config.data.toy_dir))
    flush()  # the input checked out: the notes and warnings on the config
    folders = train_saes(config, source, out, resume=resuming, source_info=info)
    if folders is not None:
        click.echo(f"wrote {len(folders)} SAE(s) to {out}")
