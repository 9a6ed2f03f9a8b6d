"""One SAE training step with its gradients from ``forward_backward`` against autograd, interleaved.

Setting: bench_sae.py's modules (d_in 64, 256 latents, april2024, a file of a live toy model's
activations in /dev/shm), batch ``--batch`` (1024; 8 leaves the fixed cost per step alone). Both
variants run on one module, alternating in blocks of ``--block`` steps for ``--rounds`` rounds
(drifting load on a shared machine hits both alike): ``SAEModule.train_step`` (which calls
``SparseAutoencoder.forward_backward``) against the same step with ``sae(x)`` and ``backward``,
each followed by InstanceAdam's step. Thread CPU time per step, min and median over the rounds.

    python bench/bench_sae_step.py --instances 1 8 --batch 1024 8
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_sae import make_sources, sae_module
from common import machine, memory_folder, parser

from sae.run.runtime import flush_denormals, retain_freed_memory
from sae.run.schedules import warmup_factor


def variants(n_instances: int, batch: int, source_of: Callable) -> dict[str, Callable[[], None]]:
    """The two steps on one module (the log step never comes: logging needs a trainer)."""
    module = sae_module(n_instances, source_of(), 10**9, 1)
    module.config.train.batch_size = batch
    module.config.train.log_every = 10**9
    module.initialize_from_data()
    module.source.prepare(module.device, range(1), batch, 0, 10**9, False)
    optimizer = module.configure_optimizers()["optimizer"]
    state = {"step": 0}

    def graph_free() -> None:
        state["step"] += 1
        module.train_step(state["step"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def autograd() -> None:  # what train_step did before forward_backward
        step = state["step"] = state["step"] + 1
        x = module.draw_batch(step)
        out = module.sae(x)
        l1 = module.l1_coefficient * warmup_factor(step, module.config.train.l1_warmup_steps)
        per_instance = out.reconstruction + l1 * out.sparsity
        # (not into out.codes, as train_step does: autograd saved them for the backward)
        fired = torch.gt(out.codes, 0, out=torch.empty_like(out.codes)).sum(1)
        module.log_fired.add_(fired)
        module.log_samples.add_(x.shape[0])
        per_instance.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"forward_backward": graph_free, "autograd": autograd}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batch", type=int, nargs="+", default=[1024, 8])
    ap.add_argument("--block", type=int, default=50, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    retain_freed_memory()  # as training does (sae.run.fit)
    flush_denormals()
    print(
        f"{machine(load=True)}; 1 torch thread; blocks of {args.block} steps, {args.rounds} rounds"
    )
    print(
        "\n| SAEs | batch | gradients from | µs/step (min) | (median) "
        "| vs autograd (min) | (median) |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=memory_folder()) as folder:
        source_of = make_sources(Path(folder), 131_072)["file"]
        for n_instances in args.instances:
            for batch in args.batch:
                steps = variants(n_instances, batch, source_of)
                times: dict[str, list[float]] = {name: [] for name in steps}
                for fn in steps.values():
                    for _ in range(10):
                        fn()
                for _ in range(args.rounds):
                    for name, fn in steps.items():
                        t0 = time.thread_time()
                        for _ in range(args.block):
                            fn()
                        times[name].append((time.thread_time() - t0) / args.block * 1e6)
                ref = times["autograd"]
                for name, t in times.items():
                    print(
                        f"| {n_instances} | {batch} | {name} | {min(t):,.0f} "
                        f"| {statistics.median(t):,.0f} | {min(ref) / min(t):.2f}x "
                        f"| {statistics.median(ref) / statistics.median(t):.2f}x |"
                    )


if __name__ == "__main__":
    main()
