"""``sae eval``: score every SAE of a run against the ground truth on held-out activations, or
one SAE folder in SAELens's layout (trained anywhere) against an activation file."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

TABLE_KEYS = [
    "represented/mcc",
    "represented/recovered_0.99",
    "all/mcc",
    "all/mmcs",
    "explained_variance",
    "explained_variance_ceiling",
    "sae_l0",
    "dead_latents",
]


@click.command("eval")
@click.argument(
    "run_dir", metavar="RUN_OR_SAE_DIR", type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--activations",
    type=click.Path(path_type=Path),
    default=None,
    help="Score on this file (all rows) instead of the run's held-out rows; needed for an "
    "SAE folder.",
)
@click.option(
    "--samples",
    type=int,
    default=50_000,
    show_default=True,
    help="Fresh samples for runs trained live on a toy model.",
)
@click.option("--batch-size", type=int, default=8192, show_default=True)
@click.option(
    "--accelerator",
    type=click.Choice(["auto", "cpu", "gpu", "cuda"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="Device to score on; auto is CUDA when available, else the CPU.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the scalars as JSON.")
def eval_command(
    run_dir: Path,
    activations: Path | None,
    samples: int,
    batch_size: int,
    accelerator: str,
    as_json: bool,
) -> None:
    """Score the SAEs of a run, or one SAE folder in SAELens's layout (cfg.json +
    sae_weights.safetensors, trained anywhere) against --activations FILE; writes
    eval_stats.json and plots next to each SAE."""
    from cli.sources import ground_truth
    from sae.run.errors import UsageError
    from sae.run.layout import RunDir
    from sae.scoring import evaluate_run, is_sae_folder, score_saes

    if is_sae_folder(run_dir):
        if activations is None:
            raise UsageError(
                f"{run_dir} is an SAE folder, not a run: give --activations FILE (with "
                "ground_truth) to score it against"
            )
        truth = ground_truth(RunDir(run_dir), {}, activations, samples, batch_size)
        results = score_saes([run_dir.resolve()], truth, accelerator)
    else:
        truth = functools.partial(
            ground_truth, activations=activations, samples=samples, batch_size=batch_size
        )
        results = evaluate_run(run_dir, truth, accelerator)
    if as_json:
        click.echo(json.dumps({name: r["scalars"] for name, r in results.items()}, indent=2))
    else:
        from sae.evaluate import format_table

        rows = [
            (name, {"l1": r["cfg"].get("l1_coefficient")} | r["scalars"])
            for name, r in results.items()
        ]
        click.echo(format_table(rows, ["l1"] + TABLE_KEYS))
