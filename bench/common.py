"""Pieces the benchmark scripts in this folder share.

The scripts run as ``python bench/X.py``, so Python puts this folder first on ``sys.path`` and
they import this module as ``common``. Importing it needs the standard library only: torch,
Lightning and the project are imported inside the functions that use them, so the plain loops
(``bare_*_loop.py``) can use it and still run no project code.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


# -- command line ----------------------------------------------------------------------------
def parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring."""
    return argparse.ArgumentParser(description=doc.splitlines()[0])


def add_steps(
    ap: argparse.ArgumentParser, steps: int, help: str, warmup: int | None = None
) -> None:
    """``--steps`` and, with a default for it, ``--warmup`` (untimed steps first)."""
    ap.add_argument("--steps", type=int, default=steps, help=help)
    if warmup is not None:
        ap.add_argument("--warmup", type=int, default=warmup, help="untimed steps first")


def add_repeats(
    ap: argparse.ArgumentParser, repeats: int, threads: int | list[int], help: str | None = None
) -> None:
    """``--repeats`` and ``--threads`` (torch threads; a list of them where the default is one)."""
    ap.add_argument("--repeats", type=int, default=repeats)
    nargs = "+" if isinstance(threads, list) else None
    ap.add_argument("--threads", type=int, nargs=nargs, default=threads, help=help)


def add_extra_set(ap: argparse.ArgumentParser, help: str) -> None:
    """``--extra-set KEY=VALUE`` (repeatable): a run-config override for the project's runs."""
    ap.add_argument("--extra-set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_device_flags(ap: argparse.ArgumentParser) -> None:
    """``--threads``, ``--device`` and ``--seed`` of the plain loops."""
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)


# -- the machine -------------------------------------------------------------------------------
def machine(cpu: str = "", *, load: bool = False, python: bool = False) -> str:
    """``CPU model, N cores[, load average L][, Python V], torch V``; the model from
    /proc/cpuinfo, else ``cpu``, else ``platform.machine()``."""
    import torch

    model = cpu or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [model, f"{os.cpu_count()} cores"]
    if load:
        one = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        parts.append(f"load average {one:.1f}")
    if python:
        parts.append(f"Python {platform.python_version()}")
    return ", ".join([*parts, f"torch {torch.__version__}"])


def load_averages(before: Sequence[float], after: Sequence[float]) -> str:
    """The 1/5/15-minute load averages before and after the runs, in one line."""
    return (
        f"load average (1/5/15 min) before: {before[0]:.2f} / {before[1]:.2f} / {before[2]:.2f}, "
        f"after: {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f}"
    )


def memory_folder() -> Path | None:
    """/dev/shm where it is writable (files there stay in memory), else None (the default
    temporary folder)."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


# -- data --------------------------------------------------------------------------------------
def write_planted(
    path: Path, rows: int, features: int, d_in: int, density: float, source: str | None = None
) -> None:
    """An activation file of a planted dictionary: ``features`` random unit directions in
    ``d_in`` dims, nonnegative codes (each on with probability ``density``, U[0, 1] scaled), with
    the directions as ground truth; with ``source``, also the feature probabilities and
    ``info={"source": source}``."""
    import torch

    from sae.activations import write_activation_file

    g = torch.Generator().manual_seed(0)
    directions = torch.randn(features, d_in, generator=g)
    directions /= directions.norm(dim=-1, keepdim=True)
    u = torch.rand(rows, features, generator=g)
    codes = torch.where(u < density, u / density, 0.0)
    extra: dict[str, Any] = {}
    if source is not None:
        extra["feature_probability"] = torch.full((features,), density)
        extra["info"] = {"source": source}
    write_activation_file(path, codes @ directions, ground_truth=directions, **extra)


# -- timing the project's Lightning path and the same step by hand ------------------------------
class StepClock:
    """Lightning callback hooks that read the clock after step ``start`` and after the last
    step (one int compare a step); ``lightning_times`` mixes them into a ``Callback``."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.t0 = self.t1 = self.c0 = self.c1 = 0.0
        self.first = start

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        # One Lightning call runs many steps: start at the first call ending at or past start.
        step = trainer.global_step
        if step >= self.start and not self.t0:
            self.t0, self.c0, self.first = time.perf_counter(), time.process_time(), step
        elif step == self.end:
            self.t1, self.c1 = time.perf_counter(), time.process_time()

    @property
    def steps(self) -> int:
        return self.end - self.first


def lightning_times(
    module: Any,
    runtime: Any,
    warmup: int,
    total: int,
    log_every: int,
    checkpoint_every: int,
    callbacks: Callable[[Path], list[Any]] = lambda out: [],
) -> tuple[int, float, float]:
    """Fit ``module`` for ``total`` steps as the commands do (``make_trainer`` + ``run_fit``,
    into a temporary folder, with ``callbacks(folder)`` too); (steps, wall s, CPU s) timed
    from the first step at or past ``warmup`` to the last."""
    import tempfile

    from lightning.pytorch.callbacks import Callback

    from sae.run.fit import make_trainer, run_fit

    class Clock(StepClock, Callback):
        pass

    clock = Clock(warmup, total)
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(
            runtime,
            total,
            Path(out),
            None,
            callbacks=[clock, *callbacks(Path(out))],
            log_every=log_every,
            checkpoint_every=checkpoint_every,
        )
        run_fit(trainer, module, range(total), Path(out), resume=False)
    return clock.steps, clock.t1 - clock.t0, clock.c1 - clock.c0


def bare_times(
    module: Any, warmup: int, total: int, loss: Callable[[int], Any]
) -> tuple[float, float]:
    """The module's training step without Lightning: ``loss(step)``, zero_grad, backward (unless
    ``loss`` set the gradients itself and returned a loss without a graph), the module's
    optimizer and LR schedule; (wall s, CPU s) of the steps after ``warmup``."""
    opt = module.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    t0 = c0 = 0.0
    for step in range(total):
        if step == warmup:
            t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        value = loss(step)
        if value.requires_grad:
            value.backward()
        optimizer.step()
        schedule.step()
    return time.perf_counter() - t0, time.process_time() - c0
