"""A long single-SAE training on CPU with denormal floats flushed to zero and kept.

A latent that stops firing gets zero gradients, and its Adam moments decay by β each step until
they reach the smallest denormal, where rounding holds them (0.9 · 1.4e-45 rounds back to
1.4e-45); x86 computes on denormals ~100 times slower. The project's training flushes them
(``sae.run.runtime.flush_denormals``, called by ``sae.run.fit``); this shows what that is worth.

Setting: bench_sae.py's single SAE (d_in 64, 256 latents, batch 1024, april2024, λ 3, a file of
a live toy model's activations in /dev/shm), trained by bench_sae.py's bare loop (the module's
step without Lightning) for ``--warmup`` untimed steps, then ``--steps`` timed ones. Each run is
a fresh process (the setting is process-wide), flushed and kept alternating over ``--repeats``;
the table gives medians and the share of Adam's moments that are denormal at the end.

    python bench/bench_denormals.py --warmup 2500 --steps 500 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import add_repeats, add_steps, machine, memory_folder, parser


def child(mode: str, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    """One run in this process: steps/s of the timed steps and the denormal share at the end."""
    import torch
    from bench_sae import BATCH, bare_run, make_sources, sae_module

    from sae.run.runtime import flush_denormals, retain_freed_memory

    torch.set_num_threads(threads)
    retain_freed_memory()
    flushing = mode == "flush" and flush_denormals()
    with tempfile.TemporaryDirectory(dir=memory_folder()) as folder:
        module = sae_module(1, make_sources(Path(folder), 131_072)["file"](), warmup + steps, 1)
        made = module.configure_optimizers
        optimizers: list[Any] = []
        module.configure_optimizers = lambda: optimizers.append(made()) or optimizers[-1]
        timing = bare_run(module, warmup, steps)
    state = optimizers[0]["optimizer"].state.values()
    moments = torch.cat([s[k].flatten() for s in state for k in ("exp_avg", "exp_avg_sq")])
    tiny = torch.finfo(moments.dtype).tiny
    denormal = ((moments != 0) & (moments.abs() < tiny)).float().mean().item()
    return {
        "flushing": flushing,
        "rate": timing.rate,
        "samples": timing.rate * BATCH,
        "cpu_ms": timing.cpu_ms,
        "denormal": denormal,
    }


def main() -> None:
    ap = parser(__doc__)
    add_steps(ap, 500, "timed steps per run", warmup=2500)
    add_repeats(ap, 3, 1)
    ap.add_argument("--child", choices=["flush", "keep"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.warmup, args.steps, args.threads)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"flush": [], "keep": []}
    for _ in range(args.repeats):  # alternating, so drifting load hits both alike
        for mode in runs:
            command = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads)]
            command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"a {mode} run failed:\n{out.stderr}")
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{machine(load=True)}; {args.threads} torch thread(s)")
    print(f"{args.steps} timed steps after {args.warmup}, {args.repeats} repeats\n")
    print(
        "| denormals | steps/s (median) | min - max | CPU ms/step (median) "
        "| Adam moments denormal at the end | vs kept |"
    )
    print("|---|---|---|---|---|---|")
    kept = statistics.median(r["rate"] for r in runs["keep"])
    for mode, rs in runs.items():
        rates = [r["rate"] for r in rs]
        rate = statistics.median(rates)
        label = {"flush": "flushed", "keep": "kept"}[mode]
        if mode == "flush" and not all(r["flushing"] for r in rs):
            label += " (this CPU cannot: kept)"
        print(
            f"| {label} | {rate:,.1f} | {min(rates):,.1f} - {max(rates):,.1f} "
            f"| {statistics.median(r['cpu_ms'] for r in rs):.2f} "
            f"| {statistics.median(r['denormal'] for r in rs):.0%} | {rate / kept:.2f}x |"
        )


if __name__ == "__main__":
    main()
