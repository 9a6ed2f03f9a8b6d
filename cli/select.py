"""``sae select``: recommend one SAE of a run from signals that need no ground truth; write
``RUN_DIR/selection.json``; when the data has ground truth, also print the regret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

SIGNAL_COLUMNS = [
    ("l1", "l1_coefficient"),
    ("d_sae", "d_sae"),
    ("seed", "seed"),
    ("EV", "explained_variance"),
    ("L0", "l0"),
    ("dead", "dead_fraction"),
    ("loss", "loss"),
    ("seed_mmcs", "seed_mmcs"),
    ("larger_mmcs", "larger_mmcs"),
    ("lambda_mmcs", "lambda_mmcs"),
    ("l0_slope", "l0_slope"),
    ("ev_knee", "ev_knee"),
]


def _method_choices() -> list[str]:
    # sae.select imports torch; the names are fixed strings, so build them here without it.
    width = ("dead_onset", "loss_elbow", "larger_mmcs")
    lam = ("seed_mmcs", "lambda_mmcs", "l0_plateau", "ev_knee", "loss")
    return ["auto", *lam, *(f"{w}+{m}" for w in width for m in lam)]


@click.command("select")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--method",
    type=click.Choice(_method_choices()),
    metavar="METHOD",
    default="auto",
    show_default=True,
    help="Selection rule: a λ rule, or <width rule>+<λ rule>; auto picks the measured best "
    "the run can feed.",
)
@click.option(
    "--rows",
    type=int,
    default=16_384,
    show_default=True,
    help="Held-out rows (fresh samples for a live toy run) the signals are computed on.",
)
@click.option("--json", "as_json", is_flag=True, help="Print selection.json instead of a table.")
def select_command(run_dir: Path, method: str, rows: int, as_json: bool) -> None:
    """Recommend one SAE of RUN_DIR without ground truth: seed agreement, MMCS between
    neighbouring widths and λ values, dead latents and loss against width, L0 and explained
    variance against λ. Writes RUN_DIR/selection.json."""
    import json
    from collections import Counter

    import torch

    from sae.evaluate import format_scalar
    from sae.run.errors import UsageError
    from sae.run.files import write_json
    from sae.run.layout import RunDir
    from sae.select import select, selection_record, truth_scores

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    if rows < 1:
        raise UsageError("--rows must be >= 1")
    layout = RunDir(run_dir)
    saes = _finished_saes(layout)
    batches, truth = _held_out(layout, rows)
    try:
        sel = select(saes, batches, method, rows)
    except ValueError as e:
        raise UsageError(f"{run_dir}: {e}") from None
    record = selection_record(sel, method)
    record["instance"] = int(saes[sel.instance].cfg.get("instance", sel.instance))
    lines = []
    if truth is not None:
        scores = truth_scores(saes, truth.directions, truth.represented)
        best = max(range(len(scores)), key=scores.__getitem__)
        record["ground_truth"] = {
            "score": "represented/mcc" if truth.represented is not None else "all/mcc",
            "chosen": scores[sel.instance],
            "best": scores[best],
            "best_sae": saes[best].name,
            "regret": scores[best] - scores[sel.instance],
            "per_sae": {s.name: v for s, v in zip(saes, scores)},
        }
        # Width-aware: the matched |cos| summed over the features over the larger of the
        # feature count and the SAE's alive latents (MCC ignores surplus latents).
        rep = truth.represented
        n_true = int(rep.sum()) if rep is not None else truth.directions.shape[0]
        fair = [
            v * n_true / max(n_true, round(s.d_sae * (1 - s.dead_fraction)))
            for v, s in zip(scores, sel.signals)
        ]
        best_fair = max(range(len(fair)), key=fair.__getitem__)
        record["ground_truth"]["width_aware"] = {
            "chosen": fair[sel.instance],
            "best": fair[best_fair],
            "best_sae": saes[best_fair].name,
            "regret": fair[best_fair] - fair[sel.instance],
        }
    write_json(layout.selection, record)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    header = ["sae"] + [c for c, _ in SIGNAL_COLUMNS]
    body = [
        [s.name + (" *" if k == sel.instance else "")]
        + [format_scalar(getattr(s, f), 4) for _, f in SIGNAL_COLUMNS]
        for k, s in enumerate(sel.signals)
    ]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + body]
    for name, chains in sel.widths.items():
        if chains:  # one estimate per width chain (λ, lr, seed): how often each width came out
            counts = Counter(chains.values()).most_common()
            lines.append(
                f"{name}: "
                + ", ".join(f"{w} ({n}/{len(chains)} chains)" for w, n in counts)
                + " (per chain in selection.json)"
            )
    lines.append(f"selected {sel.name} (method {sel.method}); wrote {layout.selection}")
    gt = record.get("ground_truth")
    if gt:
        lines.append(
            f"ground truth ({gt['score']}): selected {gt['chosen']:.4f}, best {gt['best']:.4f} "
            f"({gt['best_sae']}), regret {gt['regret']:.4f}"
        )
        wa = gt["width_aware"]
        lines.append(
            f"ground truth (width-aware: matched |cos| / max(features, alive latents)): "
            f"selected {wa['chosen']:.4f}, best {wa['best']:.4f} ({wa['best_sae']}), "
            f"regret {wa['regret']:.4f}"
        )
    click.echo("\n".join(lines))


def _finished_saes(layout: Any) -> list[Any]:
    """The run's trained SAEs; a run without any is refused in one line."""
    import json

    from sae.io import load_sae
    from sae.run.errors import UsageError
    from sae.run.layout import SAEDir
    from sae.select import SAEView

    names: list[str] = []
    if layout.record.is_file():
        try:
            names = list(json.loads(layout.record.read_text()).get("instances") or [])
        except (json.JSONDecodeError, AttributeError):
            names = []
    folders = [f.root for f in (SAEDir(layout.root / n) for n in names) if f.weights.is_file()]
    if not layout.record.is_file() or not folders:
        raise UsageError(
            f"{layout.root} holds no finished SAEs to select from (train them first: sae train)"
        )
    views = []
    for folder in folders:
        loaded = load_sae(folder)
        views.append(SAEView(folder.name, loaded.cfg, loaded.batched()))
    return views


def _held_out(layout: Any, rows: int) -> tuple[Any, Any]:
    """Batches of held-out activations (no ground truth needed) and the ground truth when the
    data has it (else None)."""
    import json

    from cli.sources import _is_file, in_place
    from sae.activations import ActivationFile, file_ground_truth
    from sae.config import SAERunConfig
    from sae.data import holdout_rows
    from sae.run.config_io import load_config
    from sae.run.errors import UsageError

    record = json.loads(layout.record.read_text())
    config = in_place(load_config(SAERunConfig, layout.config), layout, record.get("source"))
    if not _is_file(config):
        from toymodels.export import ToyActivationSource

        toy = ToyActivationSource(config.data.toy_dir, config.data.toy_instance)
        truth = toy.scoring_ground_truth(rows, min(rows, 8192))
        return (x for x, _ in truth.batches()), truth
    file = ActivationFile(config.data.activations)
    held = (record.get("source") or {}).get("holdout_rows")
    if held is None:
        held = holdout_rows(file.n_rows, config.data.holdout_fraction)
    if held == 0:
        raise UsageError(
            f"{config.data.activations}: the run kept no held-out rows to select on"
            " (data.holdout_fraction = 0)"
        )
    start = file.n_rows - held

    def batches() -> Any:
        for i in range(start, min(file.n_rows, start + rows), 8192):
            yield file.rows(slice(i, min(i + 8192, file.n_rows, start + rows)))

    truth = file_ground_truth(file, start) if file.has_ground_truth else None
    return batches(), truth
