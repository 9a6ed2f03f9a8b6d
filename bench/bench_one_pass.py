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

from bench_select import DATASETS  # noqa: E402

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


def write_data(
    path: Path, rows: int, n_features: int, d: int, data_seed: int | None = None
) -> None:
    from bench_select import DATA_SEED, zipf_correlated

    seed = DATA_SEED if data_seed is None else data_seed

    from sae.activations import write_activation_file

    xs, directions = [], None
    # DATA_SEED's rows are those of the first measurements; other data seeds get other rows
    for chunk in range(0, rows, 100_000):
        n = min(100_000, rows - chunk)
        # the same directions and copula for every chunk (the data seed); the rows differ by chunk
        x, directions, _, _ = zipf_correlated(
            n_features,
            d,
            n,
            seed=seed,
            p_max=0.25,
            alpha=0.7,
            row_seed=1 + chunk + 10**7 * (seed - DATA_SEED),
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


RECIPES: dict[str, dict] = {
    # configs/sae/default.yaml and lambda_sweep.yaml before the switch
    "constrained, lr 1e-3 (old default.yaml)": {
        "sae": {"recipe": "constrained", "b_dec_init": "geometric_median"},
        "lr": 1e-3,
        "train": {"lr_warmup_steps": 100},
        "resample": {"method": "anthropic", "every": 1000, "window": 500, "stop_after": 3500},
    },
    # sae/config.py's code defaults before the switch
    "april2024, lr 1e-3 (old code defaults)": {
        "sae": {"recipe": "april2024", "b_dec_init": "geometric_median"},
        "lr": 1e-3,
        "train": {},
        "resample": {"method": "none"},
    },
    # configs/sae/one_pass.yaml
    "april2024, lr 1e-2, warm-ups (one_pass.yaml)": {
        "sae": {"recipe": "april2024", "b_dec_init": "geometric_median"},
        "lr": 1e-2,
        "train": {"lr_warmup_steps": 200, "l1_warmup_steps": 50},
        "resample": {"method": "none"},
    },
    # configs/sae/default.yaml after the switch: the one-pass recipe with default.yaml's
    # resampling (never fires within one pass of 976 steps)
    "april2024, lr 1e-2, warm-ups, resampling (new default.yaml)": {
        "sae": {"recipe": "april2024", "b_dec_init": "geometric_median"},
        "lr": 1e-2,
        "train": {"lr_warmup_steps": 200, "l1_warmup_steps": 50},
        "resample": {"method": "anthropic", "every": 1000, "window": 500, "stop_after": 3500},
    },
}
"""The recipes ``--compare`` trains on every data set (each with the same λ grid and steps)."""

CURVE_RECIPES = list(RECIPES)[:3]
"""The recipes ``--curves`` draws (the fourth equals the third within one pass)."""

COMPARE_SETS = [
    *DATASETS,
    "zipf512_seed1000",
    "zipf512_seed1001",
    "zipf512_seed1002",
]
"""bench_select.py's data sets (widths n and 2n in one run) and the 512-feature Zipf set
(width 512) at three data seeds."""


def held_out_scores(folder: Path, data: Path, first_row: int, rows: int = 16_384) -> dict:
    """MCC (over the represented features), explained variance and L0 of one SAE on held-out
    rows."""
    from sae.activations import ActivationFile
    from sae.io import load_sae
    from sae.metrics import evaluate_dictionary

    file = ActivationFile(data)
    loaded = load_sae(folder)
    truth, represented = file.tensor("ground_truth"), file.tensor("represented")
    scores = evaluate_dictionary(truth, loaded.W_dec, represented)
    mcc = (scores.represented or scores.all).mcc
    x = file.rows(slice(first_row, min(file.n_rows, first_row + rows))).double()
    with torch.no_grad():
        out = loaded.batched().double()(x)
    x_hat, codes = out.x_hat[0], out.codes[0]
    var = x.square().sum(-1).mean() - x.mean(0).square().sum()
    ev = 1 - (x - x_hat).square().sum(-1).mean() / var
    return {"mcc": float(mcc), "ev": float(ev), "l0": float((codes > 0).sum(-1).float().mean())}


def compare(args) -> None:
    """Every recipe of RECIPES on every data set of ``--datasets``, ``--steps`` steps each (0:
    one pass over the training rows), a λ sweep in one batched run."""
    from bench_select import DATA_SEED, write_dataset
    from synthetic import file_source, sae_config

    from sae.train import train_saes

    results_path = args.out / "compare.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for kind in args.datasets:
        folder = args.out / kind
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "acts.safetensors"
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            if kind.startswith("zipf512"):
                seed = int(kind.partition("_seed")[2] or DATA_SEED)
                write_data(data, args.rows, 512, 128, seed)
                meta = {"n_features": 512, "d": 128}
            else:
                meta = write_dataset(kind, data, args.rows)
            meta_path.write_text(json.dumps(meta))
        meta = json.loads(meta_path.read_text())
        n = meta["n_features"]
        widths = [n] if n >= 512 else [n, 2 * n]
        lams = args.zipf512_l1 if n >= 512 else args.l1
        grid = [(lam, w) for w in widths for lam in lams]
        train_rows = int(args.rows / 1.1)
        for recipe, r in RECIPES.items():
            if recipe not in (args.recipes or RECIPES):
                continue
            steps = args.steps or train_rows // 1024
            key = f"{kind} | {recipe} | {steps}"
            if key in results:
                continue
            config = sae_config(
                sae=r["sae"] | {"d_sae": None},
                sweep={
                    "l1_coefficient": [g[0] for g in grid],
                    "d_sae": [g[1] for g in grid],
                    "lr": [r["lr"]],
                    "seed": [0],
                },
                train=r["train"]
                | {"steps": steps, "batch_size": 1024, "log_every": 500, "checkpoint_every": 10**9},
                resample=r["resample"],
                data={"activations": str(data), "holdout_fraction": 1 - train_rows / args.rows},
            )
            slug = "".join(c if c.isalnum() else "_" for c in f"{recipe}_{steps}")
            start = time.perf_counter()
            folders = train_saes(config, file_source(data, config), folder / slug)
            seconds = time.perf_counter() - start
            per_sae = [
                {"l1": lam, "d_sae": w} | held_out_scores(f, data, train_rows)
                for (lam, w), f in zip(grid, folders)
            ]
            results[key] = {"seconds": seconds, "saes": per_sae}
            results_path.write_text(json.dumps(results, indent=2))
            best = max(per_sae, key=lambda e: e["mcc"])
            print(f"{key}: best MCC {best['mcc']:.3f} ({best}) in {seconds:.0f} s", flush=True)
    print(compare_table(results))


def compare_table(results: dict) -> str:
    """Per data set and recipe: the best MCC over the λ × width grid, with that SAE's EV, L0."""
    lines = [
        "| data set | recipe | steps | best MCC | λ, width | EV | L0 | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        kind, recipe, steps = key.split(" | ")
        b = max(r["saes"], key=lambda e: e["mcc"])
        lines.append(
            f"| {kind} | {recipe} | {steps} | {b['mcc']:.3f} | {b['l1']:g}, {b['d_sae']} | "
            f"{b['ev']:.3f} | {b['l0']:.1f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def curves(args) -> None:
    """MCC against samples seen during one pass over the 512-feature Zipf set, for every recipe
    of ``--recipes`` (a λ sweep each; the decoder is copied every ``runtime.steps_per_call``
    steps and scored after training). Writes ``curves.json`` and the figure ``--figure``."""
    from synthetic import file_source, sae_config

    from sae.activations import ActivationFile
    from sae.lightning_module import SAEModule
    from sae.metrics import evaluate_dictionary
    from sae.run.engine import ChunkCallback
    from sae.run.fit import fit

    data = args.out / "zipf512.safetensors"
    if not data.exists():
        write_data(data, args.rows, 512, 128)
    truth = ActivationFile(data).tensor("ground_truth")
    train_rows = int(args.rows / 1.1)
    steps = train_rows // 1024
    results_path = args.out / "curves.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    class Snapshots(ChunkCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.decoders: list[torch.Tensor] = []

        def on_chunk_end(self, trainer, module, out) -> None:
            self.steps.append(trainer.global_step)
            self.decoders.append(module.sae.decoder.detach().clone())

    for recipe in args.recipes or CURVE_RECIPES:
        if recipe in results:
            continue
        r = RECIPES[recipe]
        config = sae_config(
            sae=r["sae"] | {"d_sae": 512},
            sweep={"l1_coefficient": args.zipf512_l1, "lr": [r["lr"]], "seed": [0]},
            train=r["train"]
            | {"steps": steps, "batch_size": 1024, "log_every": 500, "checkpoint_every": 10**9},
            resample=r["resample"],
            data={"activations": str(data), "holdout_fraction": 1 - train_rows / args.rows},
            runtime={"steps_per_call": 16},
        )
        source = file_source(data, config)
        module = SAEModule(config, source.d, source)
        snaps = Snapshots()
        start = time.perf_counter()
        fit(module, config, args.out / "curve_run", False, [snaps])
        seconds = time.perf_counter() - start
        source.close()
        mcc = {
            f"{lam:g}": [float(evaluate_dictionary(truth, d[k]).all.mcc) for d in snaps.decoders]
            for k, lam in enumerate(args.zipf512_l1)
        }
        results[recipe] = {"steps": snaps.steps, "batch_size": 1024, "mcc": mcc, "s": seconds}
        results_path.write_text(json.dumps(results, indent=2))
        final = {lam: round(v[-1], 3) for lam, v in mcc.items()}
        print(f"{recipe}: final MCC {final} in {seconds:.0f} s", flush=True)
    plot_curves(results, args.figure)


def plot_curves(results: dict, out: Path) -> None:
    """One line per recipe: the λ with the highest MCC at the end of the pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae.run.files import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for recipe, r in results.items():
        lam = max(r["mcc"], key=lambda k: r["mcc"][k][-1])
        samples = [s * r["batch_size"] / 1e6 for s in r["steps"]]
        ax.plot(samples, r["mcc"][lam], label=f"{recipe}, λ={lam}")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("training samples seen (millions); one pass = 1M")
    ax.set_ylabel("MCC (512 true features)")
    ax.set_ylim(0, 1)
    ax.set_title("One pass, 512 Zipf-firing correlated features in 128 dims")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, out)


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
    ap.add_argument(
        "--compare",
        action="store_true",
        help="Train RECIPES on --datasets instead of the variants on the Zipf set.",
    )
    ap.add_argument(
        "--curves",
        action="store_true",
        help="MCC against samples seen for --recipes on the Zipf set, drawn into --figure.",
    )
    ap.add_argument("--figure", type=Path, default=Path("docs/figures/one_pass_curves.png"))
    ap.add_argument("--datasets", nargs="+", default=COMPARE_SETS)
    ap.add_argument(
        "--recipes", nargs="+", default=None, help="Names in RECIPES (default: all; --curves: 3)"
    )
    ap.add_argument("--steps", type=int, default=0, help="--compare: steps (0: one pass)")
    ap.add_argument("--zipf512-l1", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3])
    args = ap.parse_args()
    if args.plot is not None:
        plot(args.results, args.plot)
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        compare(args)
        return
    if args.curves:
        curves(args)
        return
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
