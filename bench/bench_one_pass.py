"""One pass over 1M samples: which schedule / initialisation reaches the highest MCC?

Data like SAELens's synthetic set (512 features with Zipf firing probabilities and correlated
firing, random unit directions in 128 dims; ``bench_select.zipf_correlated``, not SAELens's own
generator), 1M training rows plus 10% held out. Every variant trains a small λ sweep in one
batched run for exactly one pass over the training rows and is scored by MCC against the true
directions. Prints a markdown table.

    python bench/bench_one_pass.py --out /tmp/one_pass         # minutes per variant, 1 thread
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BASE = {
    # configs/sae/lambda_sweep.yaml's recipe
    "sae": {"recipe": "constrained", "b_dec_init": "geometric_median", "d_sae": 512},
    "train": {"batch_size": 1024, "lr_warmup_steps": 200, "lr_schedule": "constant"},
    "resample": {"method": "anthropic", "every": 2500, "window": 500, "stop_after": 7500},
    "lr": 1e-3,
}
VARIANTS: dict[str, dict] = {
    "lambda_sweep.yaml recipe": {},
    "lr 3e-3, cosine decay": {"lr": 3e-3, "train": {"lr_schedule": "cosine"}},
    "data init": {"sae": {"init": "data"}},
    "data init, lr 3e-3, cosine": {
        "sae": {"init": "data"},
        "lr": 3e-3,
        "train": {"lr_schedule": "cosine"},
    },
    "resample every 200 (to step 600)": {
        "resample": {"every": 200, "window": 100, "stop_after": 600}
    },
    "data init, batch 256, lr 1e-3, cosine": {
        "sae": {"init": "data"},
        "train": {"batch_size": 256, "lr_schedule": "cosine"},
    },
    "april2024 recipe (SAELens default)": {
        "sae": {"recipe": "april2024"},
        "train": {"l1_warmup_steps": 50},
    },
    "april2024, data init": {
        "sae": {"recipe": "april2024", "init": "data"},
        "train": {"l1_warmup_steps": 50},
    },
    "april2024, data init, batch 256, cosine": {
        "sae": {"recipe": "april2024", "init": "data"},
        "train": {"l1_warmup_steps": 200, "batch_size": 256, "lr_schedule": "cosine"},
    },
    "april2024, lr 1e-2, cosine": {
        "sae": {"recipe": "april2024"},
        "lr": 1e-2,
        "train": {"l1_warmup_steps": 50, "lr_schedule": "cosine"},
    },
    "lr 1e-2, cosine": {"lr": 1e-2, "train": {"lr_schedule": "cosine"}},
    "april2024, lr 1e-2, constant": {
        "sae": {"recipe": "april2024"},
        "lr": 1e-2,
        "train": {"l1_warmup_steps": 50},
    },
    "april2024, lr 3e-3, cosine": {
        "sae": {"recipe": "april2024"},
        "lr": 3e-3,
        "train": {"l1_warmup_steps": 50, "lr_schedule": "cosine"},
    },
    "april2024, data init, lr 1e-2, cosine": {
        "sae": {"recipe": "april2024", "init": "data"},
        "lr": 1e-2,
        "train": {"l1_warmup_steps": 50, "lr_schedule": "cosine"},
    },
    "april2024, batch 256, lr 3e-3, cosine": {
        "sae": {"recipe": "april2024"},
        "lr": 3e-3,
        "train": {"l1_warmup_steps": 200, "batch_size": 256, "lr_schedule": "cosine"},
    },
    "april2024, data init, lr 3e-3, cosine": {
        "sae": {"recipe": "april2024", "init": "data"},
        "lr": 3e-3,
        "train": {"l1_warmup_steps": 50, "lr_schedule": "cosine"},
    },
}


PLOTTED = (
    "lambda_sweep.yaml recipe",
    "data init",
    "lr 1e-2, cosine",
    "april2024 recipe (SAELens default)",
    "april2024, lr 3e-3, cosine",
    "april2024, data init, lr 1e-2, cosine",
    "april2024, batch 256, lr 3e-3, cosine",
    "april2024, lr 1e-2, cosine",
    "april2024, lr 1e-2, constant",
)
"""The variants the figure shows (the others are in the table)."""


def write_data(path: Path, rows: int, n_features: int, d: int) -> None:
    from bench_select import DATA_SEED, zipf_correlated

    from sae.activations import write_activation_file

    xs, directions = [], None
    for chunk in range(0, rows, 100_000):
        n = min(100_000, rows - chunk)
        # the same directions and copula for every chunk (DATA_SEED); the rows differ by chunk
        x, directions, _, _ = zipf_correlated(
            n_features, d, n, seed=DATA_SEED, p_max=0.25, alpha=0.7, row_seed=1 + chunk
        )
        xs.append(x)
    write_activation_file(
        path,
        torch.cat(xs),
        ground_truth=directions,
        represented=torch.ones(n_features, dtype=torch.bool),
        info={"source": "bench_one_pass zipf_correlated", "p_max": 0.25, "alpha": 0.7},
    )


def merged(variant: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for k, v in variant.items():
        out[k] = out[k] | v if isinstance(v, dict) else v
    return out


def run_variant(name: str, variant: dict, data: Path, out: Path, args) -> dict:
    from synthetic import file_source, sae_config

    from sae.io import load_sae
    from sae.metrics import evaluate_dictionary
    from sae.train import train_saes

    cfg = merged(variant)
    train_rows = int(args.rows / 1.1)
    steps = train_rows // cfg["train"]["batch_size"]  # one pass over the training rows
    config = sae_config(
        sae=cfg["sae"],
        sweep={"l1_coefficient": args.l1, "lr": [cfg["lr"]], "seed": [0]},
        train=cfg["train"] | {"steps": steps, "log_every": 200, "checkpoint_every": 10**9},
        resample=cfg["resample"],
        data={"activations": str(data), "holdout_fraction": 1 - train_rows / args.rows},
    )
    start = time.perf_counter()
    folders = train_saes(config, file_source(data, config), out, resume=False)
    seconds = time.perf_counter() - start
    from sae.activations import ActivationFile

    truth = ActivationFile(data).tensor("ground_truth")
    mcc = [float(evaluate_dictionary(truth, load_sae(f).W_dec).all.mcc) for f in folders]
    return {"steps": steps, "seconds": seconds, "mcc": dict(zip(map(str, args.l1), mcc))}


def plot(results_files: list[Path], out: Path) -> None:
    """MCC against λ for every variant found in ``results_files`` (their λ grids merged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae.run.files import save_figure

    curves: dict[str, dict[float, float]] = {}
    for path in results_files:
        for name, r in json.loads(Path(path).read_text()).items():
            curves.setdefault(name, {}).update({float(k): v for k, v in r["mcc"].items()})
    fig, ax = plt.subplots(figsize=(9, 4.2))
    shown = [n for n in PLOTTED if n in curves]
    colors = plt.get_cmap("tab10").colors
    for i, name in enumerate(sorted(shown, key=lambda n: -max(curves[n].values()))):
        points = curves[name]
        lams = sorted(points)
        ax.plot(lams, [points[v] for v in lams], marker="o", label=name, color=colors[i % 10])
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("MCC after one pass over 1M rows")
    ax.set_title("One pass, 512 Zipf-firing correlated features in 128 dims")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/one_pass"))
    ap.add_argument("--rows", type=int, default=1_100_000, help="rows written (10%% held out)")
    ap.add_argument("--l1", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="Only draw MCC against λ from --results files into this PNG.",
    )
    ap.add_argument("--results", nargs="*", type=Path, default=[])
    args = ap.parse_args()
    if args.plot is not None:
        plot(args.results, args.plot)
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "zipf512.safetensors"
    if not data.exists():
        write_data(data, args.rows, 512, 128)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.variants:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        results[name] = run_variant(name, VARIANTS[name], data, args.out / slug, args)
        results_path.write_text(json.dumps(results, indent=2))
        print(name, json.dumps(results[name]), flush=True)
    lines = [
        "| variant | steps | " + " | ".join(f"MCC λ={v:g}" for v in args.l1) + " | best | s |",
        "|---|---|" + "---|" * (len(args.l1) + 2),
    ]
    for name, r in results.items():
        mccs = [r["mcc"].get(str(v)) for v in args.l1]
        cells = " | ".join("-" if m is None else f"{m:.3f}" for m in mccs)
        best = max(m for m in mccs if m is not None)
        lines.append(f"| {name} | {r['steps']} | {cells} | {best:.3f} | {r['seconds']:.0f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
