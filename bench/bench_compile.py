"""Does ``torch.compile`` pay off for the toy step on this CPU? Compile time against time saved.

The basic-results sweep's forward, loss and backward (the module's own ``per_instance_loss``,
``configs/toy/basic_results.yaml``: 7 instances, n = 20, m = 5, batch 1024) run eagerly and
compiled (inductor's default mode), alternating, on the same 8 pre-drawn batches. The first
compiled call's time is the compile time (inductor reuses its on-disk cache across processes, so
a second run of this script shows the warm-cache cost; ``--fresh-cache`` points the cache at an
empty folder). Prints the break-even number of steps: compile time / (eager − compiled) per step.

    python bench/bench_compile.py --steps 2000 --repeats 3 --threads 1 --fresh-cache
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from common import add_repeats, add_steps, machine, parser

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "toy" / "basic_results.yaml"


def main() -> None:
    ap = parser(__doc__)
    add_steps(ap, 2000, "timed forward+backward passes per repeat")
    add_repeats(ap, 3, 1)
    ap.add_argument("--fresh-cache", action="store_true", help="compile with an empty cache")
    args = ap.parse_args()
    if args.fresh_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")

    import torch

    from sae.run.config_io import load_config
    from toymodels.config import ToyConfig
    from toymodels.lightning_module import ToyModelModule

    torch.set_num_threads(args.threads)
    config = load_config(ToyConfig, CONFIG, ["wandb.enabled=false"])
    module = ToyModelModule(config)
    generator = torch.Generator()
    batches = [module.distribution.sample(1024, generator.manual_seed(s)) for s in range(8)]

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = module.per_instance_loss(x).sum()
        loss.backward()
        return loss

    def timed(fn) -> float:
        t0 = time.perf_counter()
        for i in range(args.steps):
            fn(batches[i % 8])
            module.model.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / args.steps * 1e3

    compiled = torch.compile(step)
    t0 = time.perf_counter()
    compiled(batches[0])
    compile_s = time.perf_counter() - t0
    timed(step)  # warm both
    timed(compiled)
    eager_ms, compiled_ms = [], []
    for _ in range(args.repeats):
        eager_ms.append(timed(step))
        compiled_ms.append(timed(compiled))
    e, c = statistics.median(eager_ms), statistics.median(compiled_ms)
    saved = e - c
    print(f"machine: {machine(load=True)}, {args.threads} thread(s)")
    print(f"compile (first call): {compile_s:.1f} s{' (fresh cache)' if args.fresh_cache else ''}")
    print(f"forward+backward: eager {e:.3f} ms, compiled {c:.3f} ms (medians of {args.repeats})")
    if saved > 0:
        print(f"break-even after {compile_s / (saved / 1e3):,.0f} steps")
    else:
        print("compiled is not faster: it never pays off")


if __name__ == "__main__":
    main()
