"""``sae toy train``, ``sae toy modular`` and ``sae toy export``."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import RunOptions, run_options


@click.group()
def toy() -> None:
    """Toy models of superposition."""


@toy.command("train")
@run_options()
def train(run: RunOptions) -> None:
    """Train a batch of toy models; write config.yaml, model.safetensors, metrics.json, plots/."""
    from toymodels.config import ToyConfig
    from toymodels.train import train_toy

    config, out, resuming = run.resolve(ToyConfig, needs_checkpoint=True)
    metrics = train_toy(config, out, resume=resuming)
    if metrics is not None:
        for r in metrics["instances"]:
            click.echo(
                f"instance {r['instance']}: 1-S={r['feature_probability']:g} loss={r['loss']:.5f} "
                f"represented={r['n_represented']} D*={r['dims_per_feature']:.3f}"
            )
        click.echo(f"wrote {out}")


@toy.command("modular")
@run_options(example="model.p=31")
def modular(run: RunOptions) -> None:
    """Train the bilinear modular-addition model (one instance per seed) and analyse it; write
    config.yaml, model.safetensors, metrics.json, plots/."""
    from toymodels.modular.config import ModularConfig
    from toymodels.modular.train import train_modular

    config, out, resuming = run.resolve(ModularConfig, needs_checkpoint=True)
    metrics = train_modular(config, out, resume=resuming)
    for r in metrics["instances"]:
        click.echo(
            f"seed {r['seed']}: loss={r['loss']:.4f} accuracy={r['accuracy']:.4f} "
            f"key_frequencies={r['key_frequencies']} "
            f"weighted purity={r['weighted_column_purity']:.3f} "
            f"-> unmixed {r['unmixed_weighted_column_purity']:.3f} "
            f"({'/'.join(r['unmix_method'])}); L zeros {r['L_zero_fraction']:.2f} "
            f"-> {r['unmixed_L_zero_fraction']:.2f}"
        )
    click.echo(f"wrote {out}")


@toy.command("modular-purity")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--instance", type=int, default=0, show_default=True, help="Which instance.")
@click.option(
    "--sae",
    "sae_run",
    type=click.Path(path_type=Path),
    help="An SAE run trained on this instance's export: score each SAE's latents too.",
)
def modular_purity(run_dir: Path, instance: int, sae_run: Path | None) -> None:
    """Per-latent frequency purity on a modular-addition run: the unmixing's dictionary and,
    with --sae, every SAE of an SAE run; and the L1 norm of the inputs' codes per basis."""
    from sae.io import load_sae
    from sae.metrics import score_dictionary
    from sae.run.errors import UsageError
    from sae.run.layout import RunDir
    from toymodels.modular.analysis import report_purity

    decoders = []
    while sae_run is not None and RunDir(sae_run).sae(len(decoders)).weights.exists():
        folder = RunDir(sae_run).sae(len(decoders))
        decoders.append((folder.name, load_sae(folder.root).W_dec))
    if sae_run is not None and not decoders:
        raise UsageError(f"{sae_run}: no sae_<k>/ folders")
    for line in report_purity(run_dir, instance, decoders, score_dictionary):
        click.echo(line)


@toy.command("phase-diagram")
@run_options(example="train.restarts=10")
def phase_diagram(run: RunOptions) -> None:
    """Train a phase-diagram grid (2-in-1 or 3-in-2) best-of-k in one run; write phase.json and
    plots/phase_diagram.png beside the usual toy-run files."""
    from cli.common import prepare_out_dir
    from cli.config_view import flush
    from toymodels.config import ToyConfig
    from toymodels.phase import phase_grid, run_phase_diagram

    config, out, resuming = run.resolve(ToyConfig, prepare=False, needs_checkpoint=True)
    phase_grid(config)  # a config that is not a phase diagram fails before the folder is touched
    if not resuming:
        prepare_out_dir(out, run.overwrite)
    flush()
    record = run_phase_diagram(config, out, resume=resuming)
    if record is not None:
        far = record["agreement_far_from_boundary"]
        far_text = "n/a" if far is None else f"{far:.0%}"
        click.echo(
            f"trained label = closed-form label at {record['agreement']:.0%} of "
            f"{len(record['r'])}x{len(record['density'])} points ({far_text} far from a boundary)"
        )
        click.echo(f"wrote {out}")


@toy.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--instance", type=int, default=0, show_default=True, help="Which instance to export."
)
@click.option(
    "--samples",
    type=int,
    default=None,
    help="Rows to write [default: 100000; a modular-addition run: its p² pairs, shuffled].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the input stream.")
@click.option("--no-feature-acts", is_flag=True, help="Leave out the true codes (smaller file).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The safetensors file to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file at --out.")
def export(
    run_dir: Path,
    instance: int,
    samples: int | None,
    seed: int,
    no_feature_acts: bool,
    out: Path,
    overwrite: bool,
) -> None:
    """Write activations with ground truth of one trained instance (safetensors)."""
    from toymodels.export import export_activations
    from toymodels.modular.io import FORMAT as MODULAR_FORMAT
    from toymodels.modular.io import model_format

    if model_format(run_dir) == MODULAR_FORMAT:  # a `sae toy modular` run
        from toymodels.modular.export import export_modular

        export_modular(
            run_dir, instance, out, samples, seed, not no_feature_acts, overwrite=overwrite
        )
        click.echo(f"wrote {out}")
        return
    export_activations(
        run_dir,
        instance,
        100_000 if samples is None else samples,
        out,
        seed=seed,
        feature_acts=not no_feature_acts,
        overwrite=overwrite,
    )
    click.echo(f"wrote {out}")
