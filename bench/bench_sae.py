"""SAE training throughput on CPU: one SAE and an 8-λ sweep, Lightning path vs a bare loop.

Setting: d_in 64, 256 latents, batch 1024, april2024 recipe (the defaults otherwise: geometric-
median b_dec, per-instance clip 1.0, log every 100 steps). Data comes from

- a FileSource over an activation file in /dev/shm (in memory; a temporary folder otherwise),
  written from a live toy model (256 features, p = 0.05, 64 hidden dims), or
- a GeneratedSource drawing that same toy model live every step.

The Lightning path is ``SAEModule`` + ``make_trainer`` + ``run_fit`` with the callbacks
``train_saes`` adds (MetricsFile, FiringHistogram), progress bar off, wandb disabled. The bare
loop runs the same step (draw, forward, loss, firing counts, backward, InstanceAdam, schedule)
without Lightning; "bare loop, autograd" takes the step's gradients from autograd's graph
(``sae(x)``, then ``backward``) instead of ``forward_backward``, as the step did before. The
matmul reference times the step's five matrix products alone (forward x@W_enc and f@W_dec,
backward dW_enc, df, dW_dec) with the step's shapes.

    python bench/bench_sae.py --steps 300 --repeats 3 --threads 1 2

On a CPU with a core beyond torch's threads the Lightning path draws the live toy model's
activations ahead on it (``runtime.draw_ahead``); the bare loop draws in the step.
``--no-draw-ahead`` compares like with like.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from common import (
    add_repeats,
    add_steps,
    bare_times,
    lightning_times,
    machine,
    memory_folder,
    parser,
)

from sae.activations import ActivationFile, write_activation_file
from sae.config import SAEConfig, SAERunConfig, SAETrainConfig, SweepConfig
from sae.data import FileSource, GeneratedSource
from sae.lightning_module import SAEModule
from sae.run.metrics_log import MetricsFile
from sae.run.runtime import RuntimeConfig, WandbConfig, retain_freed_memory
from sae.run.schedules import warmup_factor
from sae.train import FiringHistogram
from toymodels.data import FeatureDistribution
from toymodels.models import build_model

D_IN, D_SAE, BATCH = 64, 256, 1024
SWEEP_L1 = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0]


DRAW_AHEAD = True
"""``runtime.draw_ahead`` of the project's runs (``--no-draw-ahead`` turns it off)."""


def sae_config(n_instances: int, steps: int, threads: int) -> SAERunConfig:
    l1 = SWEEP_L1[:n_instances] if n_instances > 1 else [3.0]
    return SAERunConfig(
        sae=SAEConfig(d_sae=D_SAE, recipe="april2024"),
        sweep=SweepConfig(l1_coefficient=l1, lr=[1e-3], seed=list(range(len(l1)))),
        train=SAETrainConfig(steps=steps, batch_size=BATCH),
        runtime=RuntimeConfig(threads=threads, progress_bar=False, draw_ahead=DRAW_AHEAD),
        wandb=WandbConfig(enabled=False),
    )


def toy_draw() -> Callable[[int, torch.Generator], torch.Tensor]:
    """A live toy model: 256 features (p = 0.05, uniform magnitudes) -> 64 hidden dims."""
    model = build_model("relu_output", 1, 4 * D_IN, D_IN, seed=123).requires_grad_(False)
    dist = FeatureDistribution(torch.full((1, 4 * D_IN), 0.05), torch.ones(1, 4 * D_IN))

    @torch.no_grad()
    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        return model(dist.sample(n, generator)).hidden[:, 0]

    return draw


def make_sources(folder: Path, rows: int) -> dict[str, Callable[[], Any]]:
    draw = toy_draw()
    g = torch.Generator().manual_seed(7)
    path = folder / "acts.safetensors"
    write_activation_file(path, torch.cat([draw(8192, g) for _ in range(rows // 8192)]))
    file = ActivationFile(path)
    return {
        "file": lambda: FileSource(file, 0.1, 0, BATCH),
        "generated": lambda: GeneratedSource(draw, D_IN, 0),
    }


class Timing(NamedTuple):
    rate: float
    """steps per second, wall clock"""
    cpu_ms: float
    """process CPU time per step in ms (user + system, all threads)"""


def sae_module(n_instances: int, source: Any, total: int, threads: int) -> SAEModule:
    """A fresh module of the benchmark's config, for ``total`` steps."""
    return SAEModule(sae_config(n_instances, total, threads), D_IN, source)


def lightning_run(module: SAEModule, warmup: int, steps: int) -> Timing:
    """Steps/s of train_saes' path: SAEModule + make_trainer(+MetricsFile, FiringHistogram)."""
    config = module.config
    n, wall, cpu = lightning_times(
        module,
        config.runtime,
        warmup,
        warmup + steps,
        config.train.log_every,
        config.train.checkpoint_every,
        lambda out: [MetricsFile(out), FiringHistogram()],
    )
    return Timing(n / wall, cpu / n * 1e3)


def bare_run(module: SAEModule, warmup: int, steps: int, autograd: bool = False) -> Timing:
    """The same step without Lightning (no metric logging); with ``autograd``, its gradients
    from autograd's graph (``sae(x)``, then ``backward``) instead of ``forward_backward``."""
    module.initialize_from_data()
    source, device, l1_warmup = module.source, module.device, module.config.train.l1_warmup_steps

    def loss(step: int) -> torch.Tensor:
        x = source.block(step, 0, BATCH, device) * module.input_scale
        l1 = module.l1_coefficient * warmup_factor(step, l1_warmup)
        # the training step's gradients, as SAEModule; or the loss to run backward on
        out = module.sae(x) if autograd else module.sae.forward_backward(x, l1)
        per_instance = out.reconstruction + l1 * out.sparsity
        fired = torch.gt(out.codes, 0, out=torch.empty_like(out.codes)).sum(1)
        module.log_fired += fired
        module.log_samples += x.shape[0]
        return per_instance.sum()

    wall, cpu = bare_times(module, warmup, warmup + steps, loss)
    return Timing(steps / wall, cpu / steps * 1e3)


class Product(NamedTuple):
    cpu_ms: float
    wall_ms: float
    gflops: float
    """from the wall time"""


def _median_times(fn: Callable[[], Any], n: int, repeats: int = 7) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        walls.append((time.perf_counter() - t0) / n)
        cpus.append((time.process_time() - c0) / n)
    return statistics.median(cpus), statistics.median(walls)


def matmul_reference(n_instances: int, n: int = 20) -> dict[str, Product]:
    """Time of each of the step's matrix products alone, with the step's shapes and calls."""
    I, B, d, s = n_instances, BATCH, D_IN, D_SAE
    g = torch.Generator().manual_seed(0)
    x, b = torch.randn(B, d, generator=g), torch.randn(I, 1, d, generator=g)
    W_enc, W_dec = torch.randn(I, d, s, generator=g), torch.randn(I, s, d, generator=g)
    f, g_out = torch.randn(I, B, s, generator=g).relu(), torch.randn(I, B, d, generator=g)
    g_pre = torch.randn(I, B, s, generator=g)
    flops = 2.0 * I * B * d * s
    products = {
        "x@W_enc": lambda: torch.matmul(x, W_enc),
        "f@W_dec (+b_dec)": lambda: torch.baddbmm(b, f, W_dec),
        "dW_enc = xᵀ·g": lambda: torch.matmul(x.t(), g_pre),
        "df = g·W_decᵀ": lambda: torch.bmm(g_out, W_dec.transpose(1, 2)),
        "dW_dec = fᵀ·g": lambda: torch.bmm(f.transpose(1, 2), g_out),
    }
    result = {}
    for name, fn in products.items():
        fn()
        cpu, wall = _median_times(fn, n)
        result[name] = Product(cpu * 1e3, wall * 1e3, flops / wall / 1e9)
    return result


def main() -> None:
    ap = parser(__doc__)
    add_steps(ap, 300, "timed steps per repeat", warmup=30)
    add_repeats(ap, 3, [1, 2])
    ap.add_argument("--rows", type=int, default=131_072, help="rows in the activation file")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sources", nargs="+", default=["file", "generated"])
    ap.add_argument(
        "--no-draw-ahead",
        action="store_true",
        help="runtime.draw_ahead=false for the Lightning path (the bare loop draws in the step)",
    )
    args = ap.parse_args()
    global DRAW_AHEAD
    DRAW_AHEAD = not args.no_draw_ahead
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    retain_freed_memory()  # as training does (sae.run.fit); process-wide: both paths get it

    root = memory_folder()
    print(f"SAE d_in {D_IN}, {D_SAE} latents, batch {BATCH}, april2024; {machine(load=True)}")
    with tempfile.TemporaryDirectory(dir=root) as folder:
        sources = make_sources(Path(folder), args.rows)
        for threads in args.threads:
            torch.set_num_threads(threads)
            run_threads(args, sources, threads, root)


def run_threads(args: Any, sources: dict[str, Callable[[], Any]], threads: int, root: Any) -> None:
    # Same numbers: the Lightning path and the bare loop must end with identical weights.
    n_check = max(args.instances)
    a = sae_module(n_check, sources["file"](), 25, threads)
    lightning_run(a, 5, 20)
    b = sae_module(n_check, sources["file"](), 25, threads)
    bare_run(b, 5, 20)
    identical = torch.equal(a.sae.W_enc, b.sae.W_enc)
    print(
        f"\n### {threads} torch thread(s)\n\n{args.steps} timed steps after {args.warmup} "
        f"warm-up, {args.repeats} repeats; activation file in {root or 'a temporary folder'}; "
        f"lightning and bare loop identical after 25 steps: {identical}\n"
    )
    variants = [
        (n_inst, src, path)
        for n_inst in args.instances
        for src in args.sources
        for path in ("lightning", "bare loop", "bare loop, autograd")
    ]
    runs: dict[Any, list[Timing]] = {k: [] for k in variants}
    run = {
        "lightning": lightning_run,
        "bare loop": bare_run,
        "bare loop, autograd": lambda *a: bare_run(*a, autograd=True),
    }
    for _ in range(args.repeats):  # interleaved, so drifting load hits every variant alike
        for n_inst, src, path in variants:
            module = sae_module(n_inst, sources[src](), args.warmup + args.steps, threads)
            timing = run[path](module, args.warmup, args.steps)
            runs[(n_inst, src, path)].append(timing)

    refs = {n: matmul_reference(n) for n in args.instances}
    print(
        "| SAEs | source | path | steps/s (median) | min - max | samples/s | CPU ms/step "
        "(median) | min - max | speed vs bare (wall) | vs bare (CPU) | matmul share (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (n_inst, src, path), r in runs.items():
        rate, cpu = [x.rate for x in r], [x.cpu_ms for x in r]
        med_rate, med_cpu = statistics.median(rate), statistics.median(cpu)
        bare = runs[(n_inst, src, "bare loop")]
        bare_rate = statistics.median(x.rate for x in bare)
        bare_cpu = statistics.median(x.cpu_ms for x in bare)
        ref_ms = sum(v.cpu_ms for v in refs[n_inst].values())
        print(
            f"| {n_inst} | {src} | {path} | {med_rate:,.1f} | {min(rate):,.1f} - {max(rate):,.1f} "
            f"| {med_rate * BATCH:,.0f} | {med_cpu:.2f} | {min(cpu):.2f} - {max(cpu):.2f} "
            f"| {med_rate / bare_rate:.2f}x | {bare_cpu / med_cpu:.2f}x | {ref_ms / med_cpu:.0%} |"
        )
    print("\nMatmul reference (the step's five products alone, same shapes and calls):\n")
    print("| SAEs | product | CPU ms | wall ms | GFLOP/s (wall) |")
    print("|---|---|---|---|---|")
    for n_inst, ref in refs.items():
        for name, m in ref.items():
            print(f"| {n_inst} | {name} | {m.cpu_ms:.3f} | {m.wall_ms:.3f} | {m.gflops:.1f} |")
        cpu = sum(m.cpu_ms for m in ref.values())
        wall = sum(m.wall_ms for m in ref.values())
        flops = 5 * 2.0 * n_inst * BATCH * D_IN * D_SAE
        print(f"| {n_inst} | all five | {cpu:.3f} | {wall:.3f} | {flops / wall / 1e6:.1f} |")
    if 1 in args.instances and 8 in args.instances:
        print()
        for src in args.sources:
            for path in ("lightning", "bare loop"):
                one = statistics.median(x.cpu_ms for x in runs[(1, src, path)])
                eight = statistics.median(x.cpu_ms for x in runs[(8, src, path)])
                print(
                    f"- 8-λ sweep, {src} source, {path}: one 8-instance step costs "
                    f"{eight / one:.2f}x a single-SAE step (CPU), i.e. {eight / one / 8:.2f}x "
                    "the cost of 8 separate runs"
                )


if __name__ == "__main__":
    main()
