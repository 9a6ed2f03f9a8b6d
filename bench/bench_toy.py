"""Throughput of the paper's basic-results sweep (n=20, m=5, I=0.7^i, 7 sparsities, batch 1024).

Times optimizer steps per second (a) through the Lightning path exactly as ``sae toy train``
builds it (``make_trainer`` + ``ToyModelModule``, progress bar off, wandb disabled) and (b) a
bare PyTorch loop over the same module: same data draw, same AdamW and schedule, no Lightning.

    python bench/bench_toy.py --steps 2000 --repeats 5 --threads 1

Each repeat builds a fresh module (and trainer), runs ``--warmup`` steps untimed, then times
``--steps`` steps. The table gives the median over repeats and the min-max spread.
"""

from __future__ import annotations

import logging
import platform
import statistics
from collections.abc import Callable
from typing import NamedTuple

import torch
from common import add_repeats, add_steps, bare_times, lightning_times, machine, parser

from sae.run.runtime import RuntimeConfig, WandbConfig, retain_freed_memory
from toymodels.config import ToyConfig, ToyDataConfig, ToyModelConfig, ToyTrainConfig
from toymodels.lightning_module import ToyModelModule

SPARSITY_SWEEP = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]  # 1 - S


def toy_config(steps: int, threads: int, log_every: int = 100) -> ToyConfig:
    return ToyConfig(
        model=ToyModelConfig(kind="relu_output", n_features=20, n_hidden=5),
        data=ToyDataConfig(feature_probability=list(SPARSITY_SWEEP), importance_decay=0.7),
        train=ToyTrainConfig(steps=steps, batch_size=1024, log_every=log_every),
        runtime=RuntimeConfig(threads=threads, progress_bar=False),
        wandb=WandbConfig(enabled=False),
    )


class Timing(NamedTuple):
    rate: float
    """steps per second, wall clock"""
    cpu_us: float
    """process CPU time per step in µs (user + system, all threads): less sensitive to other
    processes competing for the cores than the wall clock"""


def lightning_run(
    warmup: int, steps: int, threads: int, log_every: int = 100, checkpoint_every: int = 1000
) -> tuple[Timing, ToyModelModule]:
    """Steps/s through make_trainer + ToyModelModule + run_fit, as toymodels.train does."""
    total = warmup + steps
    config = toy_config(total, threads, log_every)
    module = ToyModelModule(config)
    n, wall, cpu = lightning_times(
        module, config.runtime, warmup, total, log_every, checkpoint_every
    )
    return Timing(n / wall, cpu / n * 1e6), module


def bare_run(warmup: int, steps: int, threads: int) -> tuple[Timing, ToyModelModule]:
    """The same step without Lightning: draw, loss, zero_grad, backward, AdamW, schedule."""
    total = warmup + steps
    module = ToyModelModule(toy_config(total, threads))
    wall, cpu = bare_times(
        module, warmup, total, lambda step: module.per_instance_loss(module.draw_batch(step)).sum()
    )
    return Timing(steps / wall, cpu / steps * 1e6), module


def main() -> None:
    ap = parser(__doc__)
    add_steps(ap, 2000, "timed steps per repeat", warmup=200)
    add_repeats(ap, 5, 1, "torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as training does (sae.run.fit); process-wide: both paths get it
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    w, n, t = args.warmup, args.steps, args.threads
    variants: dict[str, Callable[[], Timing]] = {
        "lightning, as `sae toy train` (log every 100, ckpt every 1000)": lambda: lightning_run(
            w, n, t
        )[0],
        "lightning, no logging or checkpoint in the timed window": lambda: lightning_run(
            w, n, t, 10**9, 10**9
        )[0],
        BARE: lambda: bare_run(w, n, t)[0],
    }
    # Same numbers: the Lightning path and the bare loop must end with identical weights.
    a = lightning_run(10, 40, t, 10**9, 10**9)[1].model.W
    b = bare_run(10, 40, t)[1].model.W
    identical = torch.equal(a, b)

    runs: dict[str, list[Timing]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every variant alike
        for name, fn in variants.items():
            runs[name].append(fn())

    print(
        f"toy sweep: 7 instances, n=20, m=5, batch 1024; {n} timed steps after {w} warm-up, "
        f"{args.repeats} repeats, {t} torch thread(s); {machine(platform.processor(), load=True)}"
    )
    print(f"lightning and bare loop give identical weights after 50 steps: {identical}\n")
    print(table(runs, BARE))


BARE = "bare PyTorch loop"


def table(runs: dict[str, list[Timing]], bare_key: str) -> str:
    """Markdown: wall steps/s (median, min-max), CPU µs/step (median, min-max), ratios."""
    bare_rate = statistics.median(r.rate for r in runs[bare_key])
    bare_cpu = statistics.median(r.cpu_us for r in runs[bare_key])
    lines = [
        "| path | steps/s (median) | min - max | CPU µs/step (median) | min - max "
        "| speed vs bare (wall) | vs bare (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        rate = [x.rate for x in r]
        cpu = [x.cpu_us for x in r]
        med_rate, med_cpu = statistics.median(rate), statistics.median(cpu)
        lines.append(
            f"| {name} | {med_rate:,.0f} | {min(rate):,.0f} - {max(rate):,.0f} | "
            f"{med_cpu:,.0f} | {min(cpu):,.0f} - {max(cpu):,.0f} | "
            f"{med_rate / bare_rate:.2f}x | {bare_cpu / med_cpu:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
