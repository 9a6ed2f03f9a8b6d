"""Single-SAE training throughput, this project vs SAELens, side by side on the same data.

Setting: d_in 64, 256 latents, batch 1024, L1 penalty weighted by decoder norms (this project's
``april2024`` recipe; SAELens's ``StandardTrainingSAE``, its standard/L1 SAE), λ = 0.3, Adam
lr 1e-3 (β = 0.9, 0.999), gradient-norm clip 1.0, decoder rows of norm 0.1 at init with
W_enc = W_decᵀ, constant LR, no wandb, on CPU with ``--threads`` torch threads (default 1).

Data: a planted dictionary (256 unit directions in 64 dims, nonnegative codes of density 0.05,
131,072 rows) written once as an activation file in /dev/shm (in memory). The last 10% of the
rows are held out by both.

- This project: ``sae.train.train_saes`` (the function ``sae train`` calls: Lightning trainer,
  MetricsFile, checkpoints, saving) over a ``FileSource`` of that file.
- SAELens: its own loop, ``SAETrainer.fit`` with ``StandardTrainingSAE`` (forward, loss, firing
  statistics, backward, clip, Adam, LR and coefficient schedulers), fed by an iterator over the
  same rows, loaded into memory, walking random permutations.

Both are timed the same way, by the data: the clock is read when batch ``--warmup`` is drawn
and when the last batch is drawn, so start-up, initialisation and saving are outside the window
and exactly ``steps − 1`` steps are inside it. Runs alternate (project, SAELens, SAELens with
denormals flushed, project, ...) over ``--repeats``: the project's training flushes denormal
floats to zero on the CPU (``sae.run.runtime.flush_denormals``) and SAELens does not, so SAELens
runs once as it runs by default (the ratios are against this run) and once flushed. The table
gives medians and min - max, CPU time is the process's (all threads). At the end each side's
final weights (of the last repeat) are scored with one formula on held-out rows (reconstruction +
λ·sparsity) to show both trained the same recipe.

SAELens is an optional benchmark dependency, installed in its own venv so that the project's
venv stays as it is (always pin torch first: an unpinned torch pulls gigabytes of CUDA wheels):

    python3 -m venv /tmp/saelens-venv
    /tmp/saelens-venv/bin/pip install torch==2.13.0
    /tmp/saelens-venv/bin/pip install sae-lens -e /work/main

The table:

    /tmp/saelens-venv/bin/python bench/bench_saelens.py --steps 2000 --repeats 3 --threads 1

Without sae-lens the script says so and exits 0. ``--extra-set KEY=VALUE`` (repeatable) sets a
field of the project's run config (e.g. ``--extra-set runtime.steps_per_call=1``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from common import (
    add_extra_set,
    add_repeats,
    add_steps,
    load_averages,
    machine,
    memory_folder,
    parser,
    write_planted,
)

REPO = Path(__file__).resolve().parent.parent
D_IN, D_SAE, BATCH, L1, LR = 64, 256, 1024, 0.3, 1e-3
ROWS, FEATURES, DENSITY, HOLDOUT = 131_072, 256, 0.05, 0.1


class Timing(NamedTuple):
    rate: float
    """samples per second (wall clock) inside the window"""
    cpu_us: float
    """process CPU µs per step inside the window (user + system, all threads)"""


class Clock:
    """Reads the clocks when batch ``start`` and batch ``end`` are drawn."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.t = [0.0, 0.0]
        self.c = [0.0, 0.0]

    def tick(self, step: int) -> None:
        if step in (self.start, self.end):
            i = int(step == self.end)
            self.t[i], self.c[i] = time.perf_counter(), time.process_time()

    def timing(self) -> Timing:
        steps = self.end - self.start
        wall, cpu = self.t[1] - self.t[0], self.c[1] - self.c[0]
        return Timing(steps * BATCH / wall, cpu / steps * 1e6)


def set_field(config: Any, dotted: str) -> None:
    """``runtime.threads=1`` on a dataclass tree; the value is parsed as YAML."""
    import yaml

    key, _, raw = dotted.partition("=")
    *parents, name = key.strip().split(".")
    node = config
    for part in parents:
        node = getattr(node, part)
    if not hasattr(node, name):
        sys.exit(f"--extra-set {dotted}: the project's config has no key {key!r}")
    setattr(node, name, yaml.safe_load(raw))


def project_run(acts: Path, warmup: int, steps: int, threads: int, extra: list[str]) -> Timing:
    """train_saes, as ``sae train`` calls it, over a FileSource whose draws read the clock."""
    from sae.activations import ActivationFile
    from sae.config import SAERunConfig
    from sae.data import FileSource
    from sae.train import train_saes

    total = warmup + steps
    clock = Clock(warmup, total - 1)

    class ClockedFileSource(FileSource):
        def block(self, step: int, shard: int, size: int, device: Any) -> Any:
            clock.tick(step)
            return super().block(step, shard, size, device)

    config = SAERunConfig()
    for item in (
        f"sae.d_sae={D_SAE}",
        "sae.recipe=april2024",
        f"sweep.l1_coefficient=[{L1}]",
        f"sweep.lr=[{LR}]",
        "sweep.seed=[0]",
        f"train.steps={total}",
        f"train.batch_size={BATCH}",
        # no warm-ups, as measured before the defaults had them (the SAELens run sets none)
        "train.lr_warmup_steps=0",
        "train.l1_warmup_steps=0",
        f"runtime.threads={threads}",
        "runtime.progress_bar=false",
        "wandb.enabled=false",
        *extra,
    ):
        set_field(config, item)
    source = ClockedFileSource(ActivationFile(acts), HOLDOUT, 0, BATCH)
    with tempfile.TemporaryDirectory() as out:
        train_saes(config, source, out)
        weights = load_weights(Path(out) / "sae_0" / "sae_weights.safetensors")
    PROJECT_WEIGHTS.update(weights)
    return clock.timing()


def load_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


PROJECT_WEIGHTS: dict[str, Any] = {}
SAELENS_WEIGHTS: dict[str, Any] = {}


def saelens_run(acts: Path, warmup: int, steps: int, threads: int) -> Timing:
    """SAELens's SAETrainer.fit over an iterator of in-memory batches that reads the clock."""
    import torch
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    data = load_file(str(acts))["activations"]
    n_train = data.shape[0] - int(round(data.shape[0] * HOLDOUT))
    data = data[:n_train]
    total = warmup + steps
    clock = Clock(warmup, total - 1)

    def batches() -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        step, per_epoch = 0, n_train // BATCH
        while True:
            perm = torch.randperm(n_train, generator=g)
            for i in range(per_epoch):
                clock.tick(step)
                step += 1
                yield data[perm[i * BATCH : (i + 1) * BATCH]]

    torch.manual_seed(0)
    sae = StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, l1_coefficient=L1, decoder_init_norm=0.1, device="cpu"
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=total * BATCH,
        train_batch_size_samples=BATCH,
        lr=LR,
        lr_end=LR / 10,  # what SAELens's runner config fills in; the constant schedule ignores it
        adam_beta1=0.9,
        adam_beta2=0.999,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches())
    with open(os.devnull, "w") as devnull:  # its tqdm bar
        stderr, sys.stderr = sys.stderr, devnull
        try:
            trainer.fit()
        finally:
            sys.stderr = stderr
    SAELENS_WEIGHTS.update({k: v.detach().clone() for k, v in sae.state_dict().items()})
    return clock.timing()


def heldout_loss(weights: dict[str, Any], acts: Path) -> tuple[float, float, float]:
    """(reconstruction, sparsity, total) of SAELens-layout weights on the held-out rows."""
    import torch
    from safetensors.torch import load_file

    data = load_file(str(acts))["activations"]
    x = data[data.shape[0] - int(round(data.shape[0] * HOLDOUT)) :]
    W_enc, W_dec, b_enc, b_dec = (weights[k].float() for k in ("W_enc", "W_dec", "b_enc", "b_dec"))
    with torch.no_grad():
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        x_hat = f @ W_dec + b_dec
        rec = (x_hat - x).square().sum(-1).mean().item()
        sparsity = (f * W_dec.norm(dim=-1)).sum(-1).mean().item()
    return rec, sparsity, rec + L1 * sparsity


def main() -> None:
    ap = parser(__doc__)
    add_steps(ap, 2000, "timed steps per run", warmup=100)
    add_repeats(ap, 3, 1)
    add_extra_set(ap, "set a field of the project's run config (repeatable)")
    args = ap.parse_args()
    try:
        import sae_lens
    except ImportError:
        print(
            "sae-lens is not installed in this Python, so there is nothing to compare against "
            "(it is an optional benchmark dependency). Install it in its own venv, as this "
            "script's docstring says, and run the script with that venv's python."
        )
        return
    sys.path.insert(0, str(REPO))  # this checkout's project code, even if another is installed
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO; quiet them after)
    import torch

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    torch.set_num_threads(args.threads)
    from sae.run.runtime import retain_freed_memory

    # What the project's training sets (sae.run.fit) from the start, so its first repeat runs
    # as the later ones; process-wide, so SAELens runs with it too.
    retain_freed_memory()
    # The project's training also flushes denormals (sae.run.fit, process-wide). SAELens runs
    # twice per repeat: as it runs by default (not flushed: the ratios are against this), and
    # flushed, as it would run after the project's training in one process.
    flushed = "SAELens (SAETrainer), denormals flushed"

    root = memory_folder()
    runs: dict[str, list[Timing]] = {
        "this project (train_saes)": [],
        "SAELens (SAETrainer)": [],
        flushed: [],
    }
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=root) as folder:
        acts = Path(folder) / "acts.safetensors"
        write_planted(acts, ROWS, FEATURES, D_IN, DENSITY)
        for r in range(args.repeats):  # alternating, so drifting load hits both alike
            a = project_run(acts, args.warmup, args.steps, args.threads, args.extra_set)
            torch.set_flush_denormal(False)
            b = saelens_run(acts, args.warmup, args.steps, args.threads)
            default_score = heldout_loss(SAELENS_WEIGHTS, acts)
            torch.set_flush_denormal(True)
            c = saelens_run(acts, args.warmup, args.steps, args.threads)
            for name, t in zip(runs, (a, b, c)):
                runs[name].append(t)
                print(
                    f"  repeat {r + 1}: {name}: {t.rate:,.0f} samples/s, {t.cpu_us:,.0f} µs "
                    f"CPU/step, load {os.getloadavg()[0]:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        scores = {
            "this project (train_saes)": heldout_loss(PROJECT_WEIGHTS, acts),
            "SAELens (SAETrainer)": default_score,
            flushed: heldout_loss(SAELENS_WEIGHTS, acts),
        }
    load1 = os.getloadavg()

    print(f"\n{machine()}, sae-lens {getattr(sae_lens, '__version__', '?')}")
    print(
        f"d_in {D_IN}, {D_SAE} latents, batch {BATCH}, λ {L1}, lr {LR}; {args.steps} timed steps "
        f"after {args.warmup} warm-up, {args.repeats} repeats; {args.threads} torch thread(s); "
        f"activation file in {root or 'a temporary folder'}; extra: {args.extra_set or 'none'}"
    )
    print(load_averages(load0, load1) + "\n")
    print(
        "| trainer | samples/s (median) | min - max | steps/s | CPU µs/step (median) | min - max "
        "| vs SAELens (samples/s) | vs SAELens (CPU) | held-out rec / sparsity / loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ref = runs["SAELens (SAETrainer)"]
    ref_rate = statistics.median(t.rate for t in ref)
    ref_cpu = statistics.median(t.cpu_us for t in ref)
    for name, timings in runs.items():
        rates, cpus = [t.rate for t in timings], [t.cpu_us for t in timings]
        rate, cpu = statistics.median(rates), statistics.median(cpus)
        rec, sparsity, loss = scores[name]
        print(
            f"| {name} | {rate:,.0f} | {min(rates):,.0f} - {max(rates):,.0f} | {rate / BATCH:,.1f} "
            f"| {cpu:,.0f} | {min(cpus):,.0f} - {max(cpus):,.0f} | {rate / ref_rate:.2f}x "
            f"| {ref_cpu / cpu:.2f}x | {rec:.4f} / {sparsity:.4f} / {loss:.4f} |"
        )


if __name__ == "__main__":
    main()
