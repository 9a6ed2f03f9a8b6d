"""``sae eval``: score every SAE of a run against the ground truth on held-out activations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import torch

from sae.run.errors import UsageError
from sae.run.layout import RunDir
from sae.run.seeding import TOY_SCORING_SEED

TABLE_KEYS = [
    "represented/mcc",
    "represented/recovered_0.99",
    "all/mcc",
    "all/mmcs",
    "explained_variance",
    "sae_l0",
    "dead_latents",
]


@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--activations",
    type=click.Path(path_type=Path),
    default=None,
    help="Score on this file (all rows) instead of the run's held-out rows.",
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
    """Score the SAEs in RUN_DIR; writes eval_stats.json and plots next to each SAE."""
    results = evaluate_run(run_dir, activations, samples, batch_size, accelerator)
    if as_json:
        click.echo(json.dumps({name: r["scalars"] for name, r in results.items()}, indent=2))
    else:
        from sae.evaluate import format_table

        rows = [
            (name, {"l1": r["cfg"]["l1_coefficient"]} | r["scalars"]) for name, r in results.items()
        ]
        click.echo(format_table(rows, ["l1"] + TABLE_KEYS))


def evaluate_run(
    run_dir: Path,
    activations: Path | None = None,
    samples: int = 50_000,
    batch_size: int = 8192,
    accelerator: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Evaluate each ``sae_<k>`` of a run on ``accelerator`` (see ``sae.evaluate.ACCELERATORS``);
    returns name -> {scalars, cfg, plots}."""
    from sae.config import SAERunConfig
    from sae.evaluate import evaluate_sae, resolve_device, write_eval
    from sae.io import load_sae
    from sae.run.config_io import load_config
    from sae.run.runtime import reopen_wandb

    device = resolve_device(accelerator)
    layout = RunDir(run_dir)
    if not layout.record.exists():
        raise UsageError(f"{run_dir} holds no finished SAE run (no {RunDir.RECORD})")
    run = json.loads(layout.record.read_text())
    config = load_config(SAERunConfig, layout.config)
    truth = _ground_truth(config, activations, samples, batch_size)
    results: dict[str, dict[str, Any]] = {}
    for name in run["instances"]:
        loaded = load_sae(run_dir / name)
        width = truth["ground_truth"].shape[1]
        if width != loaded.sae.d_in:
            raise UsageError(
                f"{truth['source']}: activations have {width} dimensions but {run_dir / name} "
                f"reads {loaded.sae.d_in}"
            )
        result = evaluate_sae(
            loaded.sae,
            truth["ground_truth"],
            truth["batches"](),
            truth["represented"],
            truth["names"],
            device=device,
        )
        plots = write_eval(
            run_dir / name, result, title=f"{name}, l1={loaded.cfg['l1_coefficient']:g}"
        )
        results[name] = {
            "scalars": result["scalars"],
            "cfg": loaded.cfg,
            "plots": plots,
            "features": result["features"],
        }
    _log_to_wandb(reopen_wandb(run.get("wandb")), results)
    return results


def _ground_truth(
    config: Any, activations: Path | None, samples: int, batch_size: int
) -> dict[str, Any]:
    from sae.activations import ActivationFile

    path = activations or (Path(config.data.activations) if config.data.activations else None)
    if path is not None:
        file = ActivationFile(path)
        if not file.has_ground_truth:
            raise UsageError(f"{path}: no 'ground_truth' tensor to score against")
        start = 0
        if activations is None:  # the training file: only the rows training never saw
            start = file.n_rows - int(round(file.n_rows * config.data.holdout_fraction))
            if start >= file.n_rows:
                raise UsageError(
                    f"{path}: the run kept no held-out rows (data.holdout_fraction = 0);"
                    " pass --activations with a separate file"
                )

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            for i in range(start, file.n_rows, batch_size):
                rows = slice(i, min(i + batch_size, file.n_rows))
                yield file.rows(rows), file.feature_acts(rows)

        names = file.info.get("feature_names")
        return {
            "source": str(path),
            "ground_truth": file.tensor("ground_truth"),
            "represented": file.tensor("represented"),
            "names": names,
            "batches": batches,
        }
    from toymodels.export import ToyActivationSource

    toy = ToyActivationSource(config.data.toy_dir, config.data.toy_instance)

    def toy_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(TOY_SCORING_SEED)
        for i in range(0, samples, batch_size):
            yield toy.sample(min(batch_size, samples - i), g)

    return {
        "source": str(config.data.toy_dir),
        "ground_truth": toy.ground_truth,
        "represented": toy.represented(),
        "names": toy.feature_names,
        "batches": toy_batches,
    }


def _log_to_wandb(run: Any, results: dict[str, dict[str, Any]]) -> None:
    if run is None:
        return
    import wandb

    payload: dict[str, Any] = {}
    for name, r in results.items():
        payload |= {f"eval/{name}/{k}": v for k, v in r["scalars"].items() if v is not None}
        payload |= {f"eval/{name}/{k}": wandb.Image(str(p)) for k, p in r["plots"].items()}
        columns = list(r["features"][0])
        payload[f"eval/{name}/features"] = wandb.Table(
            columns=columns, data=[[row[c] for c in columns] for row in r["features"]]
        )
    run.log(payload)
    run.finish()
