"""Whole-process timing: the ``sae`` commands as a user runs them vs a hand-written PyTorch loop.

Each run is a fresh process (start-up, imports, training, saving: everything a user waits for):

- toy, project: ``sae toy train --config configs/toy/basic_results.yaml --out <tmp>
  --set wandb.enabled=false --set runtime.progress_bar=false`` (10k steps, 7 instances, n = 20,
  m = 5, batch 1024, AdamW lr 1e-3, 1 thread). It also evaluates every instance on 65,536
  fresh samples and draws its plots: that is part of the command.
- toy, bare: ``bench/bare_toy_loop.py``, the same model, data, loss and optimizer in a plain
  loop, then the weights (safetensors) and a small JSON.
- SAE, project: ``sae train`` of one april2024 SAE (d_in 64, 256 latents, batch 1024, λ = 0.3) on
  an activation file made once per benchmark (a planted dictionary: 256 unit directions in 64
  dimensions, nonnegative codes with density 0.05, 131,072 rows).
- SAE, bare: ``bench/bare_sae_loop.py``, the same step on random batches of the same file
  loaded into memory.

Wall clock (``time.perf_counter``) and the child's CPU time (user + system from
``resource.getrusage(RUSAGE_CHILDREN)`` before and after) are taken for each run. The variants
run interleaved (A, B, C, D, A, B, ...) so drifting load hits all alike; the table gives the
median over repeats, the min - max, and the ratio project / bare of the medians (> 1: the
project takes longer). Unless ``--no-fixed-cost``, 1-step runs of each are timed too, and
"training only" rows give full − 1-step: the steady-state cost of the steps without start-up,
evaluation, plots and saving.

    python bench/bench_cli_vs_bare.py --steps 10000 --repeats 3 --threads 1

``--extra-set KEY=VALUE`` (repeatable) is passed on to every project command as ``--set``
(e.g. ``--extra-set runtime.steps_per_call=1``); the bare loops ignore it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    add_extra_set,
    add_repeats,
    add_steps,
    load_averages,
    machine,
    parser,
    write_planted,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
TOY_CONFIG = REPO / "configs" / "toy" / "basic_results.yaml"
SAE_D_IN, SAE_D_SAE, SAE_BATCH, SAE_L1 = 64, 256, 1024, 0.3
SAE_ROWS, SAE_FEATURES, SAE_DENSITY = 131_072, 256, 0.05
PLANTED_SOURCE = "bench_cli_vs_bare planted dictionary"


@dataclass
class Variant:
    task: str
    path: str
    steps: int
    command: list[str]
    out_flag: str = "--out"
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)


def sae_command() -> list[str]:
    """The ``sae`` entry point beside this interpreter when it runs this checkout's code, else
    ``python -m cli.main`` from the checkout (e.g. for a copy of the repo elsewhere)."""
    entry = Path(sys.executable).with_name("sae")
    probe = "import cli, pathlib; print(pathlib.Path(cli.__file__).resolve().parent.parent)"
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True
    ).stdout.strip()
    if entry.exists() and found and Path(found) == REPO:
        return [str(entry)]
    return [sys.executable, "-m", "cli.main"]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(variant: Variant, scratch: Path) -> None:
    """Run the command once in a fresh output folder; record its wall and CPU seconds."""
    out = Path(tempfile.mkdtemp(dir=scratch)) / "run"
    cmd = [*variant.command, variant.out_flag, str(out)]
    c0, t0 = child_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, child_cpu() - c0
    shutil.rmtree(out.parent, ignore_errors=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    variant.walls.append(wall)
    variant.cpus.append(cpu)
    print(
        f"  {variant.task:4} {variant.path:8} {variant.steps:>6} steps: wall {wall:7.2f} s, "
        f"CPU {cpu:7.2f} s, load {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
        flush=True,
    )


def variants(args: argparse.Namespace, acts: Path | None, sae: list[str]) -> list[Variant]:
    py = sys.executable
    sets = [a for s in args.extra_set for a in ("--set", s)]
    common = ["--set", "wandb.enabled=false", "--set", "runtime.progress_bar=false"]
    threads = ["--set", f"runtime.threads={args.threads}"]
    step_counts = [args.steps] + ([] if args.no_fixed_cost else [1])
    sae_steps = [args.sae_steps or args.steps] + ([] if args.no_fixed_cost else [1])
    out: list[Variant] = []
    if args.only in (None, "toy"):
        for n in step_counts:
            project = [*sae, "toy", "train", "--config", str(TOY_CONFIG), *common, *threads]
            project += ["--set", f"train.steps={n}", *sets]
            bare = [py, str(BENCH / "bare_toy_loop.py"), "--steps", str(n)]
            bare += ["--threads", str(args.threads)]
            out += [Variant("toy", "project", n, project), Variant("toy", "bare", n, bare)]
    if args.only in (None, "sae"):
        assert acts is not None
        for n in sae_steps:
            project = [*sae, "train", "--activations", str(acts), *common, *threads]
            for s in (
                f"sae.d_sae={SAE_D_SAE}",
                "sae.recipe=april2024",
                f"sweep.l1_coefficient=[{SAE_L1}]",
                f"train.steps={n}",
                f"train.batch_size={SAE_BATCH}",
                # the bare loop's optimizer: lr 1e-3, no warm-ups (not the code defaults)
                "sweep.lr=[0.001]",
                "train.lr_warmup_steps=0",
                "train.l1_warmup_steps=0",
            ):
                project += ["--set", s]
            project += sets
            bare = [py, str(BENCH / "bare_sae_loop.py"), "--activations", str(acts)]
            bare += ["--steps", str(n), "--d-sae", str(SAE_D_SAE), "--batch-size", str(SAE_BATCH)]
            bare += ["--l1", str(SAE_L1), "--threads", str(args.threads)]
            out += [Variant("sae", "project", n, project), Variant("sae", "bare", n, bare)]
    return out


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} - {max(values):.2f}"


def table(runs: list[Variant], args: argparse.Namespace) -> str:
    lines = [
        "| task | path | steps | wall s (median) | min - max | child CPU s (median) | min - max "
        "| steps/s (wall) | project / bare (wall) | project / bare (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(v.task, v.path, v.steps): v for v in runs}
    med = {k: (statistics.median(v.walls), statistics.median(v.cpus)) for k, v in by_key.items()}
    for (task, path, steps), (wall, cpu) in med.items():
        v = by_key[(task, path, steps)]
        bare = med[(task, "bare", steps)]
        ratios = f"{wall / bare[0]:.2f} | {cpu / bare[1]:.2f}"
        label = "**" + path + "**" if path == "project" else path
        lines.append(
            f"| {task} | {label} | {steps} | {wall:.2f} | {spread(v.walls)} | {cpu:.2f} "
            f"| {spread(v.cpus)} | {f'{steps / wall:,.0f}' if steps > 1 else '—'} | {ratios} |"
        )
    if not args.no_fixed_cost:  # steady-state rows: full run minus the 1-step run
        for task in dict.fromkeys(v.task for v in runs):
            n = next(v.steps for v in runs if v.task == task and v.steps != 1)
            rows = {}
            for path in ("project", "bare"):
                full, one = med[(task, path, n)], med[(task, path, 1)]
                rows[path] = (full[0] - one[0], full[1] - one[1])
            for path, (wall, cpu) in rows.items():
                bare = rows["bare"]
                lines.append(
                    f"| {task} | {path}: training only ({n} − 1 steps) | {n - 1} | {wall:.2f} | "
                    f"| {cpu:.2f} | | {(n - 1) / wall:,.0f} | {wall / bare[0]:.2f} "
                    f"| {cpu / bare[1]:.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    add_steps(ap, 10_000, "training steps (toy and SAE)")
    ap.add_argument("--sae-steps", type=int, default=None, help="SAE steps (default: --steps)")
    add_repeats(ap, 3, 1, "torch threads, every process")
    ap.add_argument("--only", choices=["toy", "sae"], default=None)
    ap.add_argument("--no-fixed-cost", action="store_true", help="skip the 1-step runs")
    add_extra_set(ap, "passed to every project command as --set KEY=VALUE (repeatable)")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))  # this checkout's project code, even if another is installed
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_cli_vs_bare_") as tmp:
        scratch = Path(tmp)
        acts = None
        if args.only in (None, "sae"):
            acts = scratch / "acts.safetensors"
            write_planted(acts, SAE_ROWS, SAE_FEATURES, SAE_D_IN, SAE_DENSITY, PLANTED_SOURCE)
        sae = sae_command()
        runs = variants(args, acts, sae)
        print(f"{len(runs)} variants x {args.repeats} repeats, interleaved", file=sys.stderr)
        for _ in range(args.repeats):
            for variant in runs:
                run_once(variant, scratch)
    load1 = os.getloadavg()

    print(f"\n{machine(python=True)}")
    print(
        f"project command: {' '.join(sae)}; {args.repeats} repeats, interleaved; "
        f"{args.threads} torch thread(s); extra --set: {args.extra_set or 'none'}"
    )
    print(load_averages(load0, load1) + "\n")
    print(table(runs, args))


if __name__ == "__main__":
    main()
