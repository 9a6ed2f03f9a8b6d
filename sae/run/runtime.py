"""Shared run settings (devices, strategy, precision, threads) and the wandb logger.

``sae.run.fit`` turns them into a Lightning ``Trainer``; toy-model and SAE training both go
through its ``fit``, so there is one training path with one set of device, logging and
checkpoint behaviour.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sae.run.config_io import Config
from sae.run.layout import RunDir

RUN_ID_ENV = "SAE_TOOLKIT_RUN_ID"


@dataclass
class RuntimeConfig(Config):
    """Where and how a run executes."""

    accelerator: str = "auto"
    """Lightning accelerator: auto (a GPU when there is one, else the CPU), cpu, gpu, cuda,
    mps."""
    devices: int = 1
    """Processes (devices) per node. More than 1 means data-parallel training."""
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_fork"] = "auto"
    """Lightning strategy; 'auto' picks ddp when devices > 1."""
    num_nodes: int = 1
    """Machines taking part (launched by torchrun or SLURM, see the README)."""
    threads: int | None = None
    """torch intra-op threads per process; None keeps torch's default. Tiny models run
    fastest on 1 thread."""
    progress_bar: bool = True
    """Show a progress bar while training."""
    collective_timeout_s: float = 120.0
    """Seconds a rank waits in a collective before the run fails (a crashed peer)."""
    precision: Literal["32-true", "bf16-mixed", "64-true"] = "32-true"
    """Lightning precision: 32-true (float32 weights and math), bf16-mixed (float32 weights,
    bfloat16 autocast of the forward pass), 64-true (float64 throughout)."""
    tf32: bool = True
    """On CUDA GPUs that have them (Ampere and newer), float32 matmuls use TF32 tensor cores
    during training (about 2x faster, ~1e-3 relative error per product, what PyTorch's
    set_float32_matmul_precision("high") does). No effect on the CPU or on scoring."""
    steps_per_call: int | None = None
    """Optimizer steps run inside one Lightning training call. None: chosen from the measured
    cost of a step (about 50 ms of work a call). Results do not depend on it."""
    cuda_graphs: bool = False
    """Replay the model's forward and backward from a CUDA graph (``sae/run/graphs.py``): one
    launch instead of dozens a step, for the small models where launches dominate. Applies on a
    CUDA device with one process and 32-true or 64-true precision (ignored elsewhere); the data
    draw, the optimizer and logging stay eager. Off by default until measured on a GPU."""
    draw_ahead: bool = True
    """On a CPU with a core beyond torch's threads, make the coming steps' data (toy features,
    a live toy model's activations for ``sae train --toy``) on it while the current step trains
    (``sae/run/prefetch.py``; activation-file rows are gathered in the step, which measured
    faster). The batches are the same either way; false on a machine whose other core is busy
    with other work."""

    def validate(self) -> None:
        if self.devices < 1:
            raise ValueError(f"runtime.devices must be >= 1, got {self.devices}")
        if self.num_nodes < 1:
            raise ValueError(f"runtime.num_nodes must be >= 1, got {self.num_nodes}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"runtime.threads must be >= 1, got {self.threads}")
        if self.collective_timeout_s <= 0:
            raise ValueError("runtime.collective_timeout_s must be > 0")
        if self.steps_per_call is not None and self.steps_per_call < 1:
            raise ValueError(f"runtime.steps_per_call must be >= 1, got {self.steps_per_call}")


@dataclass
class WandbConfig(Config):
    """Weights & Biases logging. The mode comes from here, else WANDB_MODE, else it is
    'online' when credentials exist and 'offline' when they do not."""

    enabled: bool = True
    """Log to wandb at all."""
    project: str = "sae-toolkit"
    """wandb project name."""
    entity: str | None = None
    """wandb entity (team or user); None uses the default."""
    name: str | None = None
    """Run name; None lets wandb pick one."""
    mode: Literal["online", "offline", "disabled"] | None = None
    """Force a mode; None decides from the environment (see above)."""
    tags: list[str] = field(default_factory=list)
    """Tags attached to the run."""
    log_artifacts: bool = False
    """Log model files as wandb artifacts: each sae_<k>/ folder, the toy model (with its
    config.yaml and metrics.json), and the activation file's metadata (a reference, not the
    rows)."""
    group: str | None = None
    """wandb group. None: the run's own id (its evaluation joins it); `sae run` puts its toy
    run, SAE run and evaluation in one group named after its output folder."""


def check_data_shards(data_shards: int | None, batch_size: int, runtime: RuntimeConfig) -> None:
    """The global batch is drawn in ``data_shards`` equal blocks, ``data_shards / world`` per
    rank; raise ValueError (a config error) when that split does not come out even."""
    world = runtime.devices * runtime.num_nodes
    shards = data_shards or world
    if shards % world or batch_size % shards:
        raise ValueError(
            f"train.data_shards ({shards}) must be a multiple of the device count ({world}) "
            f"and divide train.batch_size ({batch_size})"
        )


def apply_threads(runtime: RuntimeConfig) -> None:
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)


MMAP_THRESHOLD = 32 << 20
"""Allocations below this come from malloc's heap, whose freed memory is reused (32 MiB: the
largest value glibc before 2.35 accepts on 64-bit)."""
TRIM_THRESHOLD = 256 << 20
"""Free memory at the heap's top that malloc keeps instead of handing back to the kernel."""


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation (``mallopt``); False (and
    nothing changed) where the C library is not glibc or refuses the setting.

    A CPU training step frees and allocates the same few 0.1-2 MB tensors every step. By default
    glibc serves such sizes with fresh ``mmap``s, or trims them off the heap's top once freed,
    so every step faults their pages in again (tests/test_engine.py: 99,200 faults in 128,000
    pages written; almost none kept). The toy sweep's training ran 1.1-1.25x faster for it
    (BENCHMARKS.md). The setting is process-wide and stays after training: freed blocks under
    ``MMAP_THRESHOLD`` are kept for reuse, not handed back (the toy sweep's peak RSS grew by
    32 MB)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt: musl and other C libraries
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    # Setting either turns off glibc's own threshold adjustment, and the trim threshold alone
    # faults more than the defaults: set it only once the mmap threshold is accepted.
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(
        mallopt(m_trim_threshold, TRIM_THRESHOLD)
    )


def flush_denormals() -> bool:
    """Make the CPU flush denormal floats to zero (``torch.set_flush_denormal``); False where
    the CPU cannot (not x86 with SSE3 or AArch64).

    Adam's moments of a latent that stops firing decay by β each step and end at the smallest
    denormal, where rounding holds them forever (0.9 · 1.4e-45 rounds back to 1.4e-45): a long
    SAE run ends with most of a dead latent's moments denormal, and x86 computes on those ~100
    times slower (torch's fused Adam took 530 µs a step instead of 30 at d_in 64, 256 latents).
    Flushed, they become 0 and a step keeps its speed; values under 1.2e-38 (float32) become 0
    (a 1,500-step SAE run ended with bit-identical weights either way). The setting is the
    calling thread's and is inherited by threads it starts later (torch's CPU thread pool among
    them when it does not exist yet); it stays after training."""
    return torch.set_flush_denormal(True)


def wandb_mode(config: WandbConfig) -> str:
    """The mode this run uses: config, then WANDB_MODE, then credentials decide."""
    if not config.enabled:
        return "disabled"
    if config.mode is not None:
        return config.mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if _has_wandb_credentials() else "offline"


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


_runs_made = 0


def shared_run_id() -> str:
    """A run id that every rank agrees on without talking: a base made once by the first
    process (inherited through the environment by the ranks Lightning launches) plus a counter
    of runs made in this process, which every rank advances in the same order."""
    global _runs_made
    base = os.environ.get(RUN_ID_ENV)
    if not base:
        base = secrets.token_hex(4)
        os.environ[RUN_ID_ENV] = base
    _runs_made += 1
    return f"{base}{_runs_made}"


def sweep_agent_run() -> dict[str, str] | None:
    """The run wandb's sweep agent launched this process for (``WANDB_SWEEP_ID`` and
    ``WANDB_RUN_ID`` set): its id, and the sweep's project and entity when the agent set them;
    None outside a sweep. The SAE training run takes that id, so the sweep sees its metrics."""
    run_id, sweep_id = os.environ.get("WANDB_RUN_ID"), os.environ.get("WANDB_SWEEP_ID")
    if not (run_id and sweep_id):
        return None
    return {
        "id": run_id,
        "sweep": sweep_id,
        "project": os.environ.get("WANDB_PROJECT", ""),
        "entity": os.environ.get("WANDB_ENTITY", ""),
    }


def make_wandb_logger(
    config: WandbConfig, out_dir: Path, run_config: dict[str, Any], job_type: str | None = None
) -> Any:
    """Lightning's real ``WandbLogger`` writing under ``out_dir/wandb``, or None when disabled;
    ``job_type`` ("toy", "sae") tells the runs of a group apart."""
    mode = wandb_mode(config)
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "online" and not _wandb_reachable():
        print(
            "warning: wandb server unreachable; logging offline (sync later with `wandb sync`)",
            file=sys.stderr,
        )
        mode = "offline"
    RunDir(out_dir).wandb.mkdir(parents=True, exist_ok=True)
    run_id = shared_run_id()
    project, entity = config.project, config.entity
    agent = sweep_agent_run()
    if agent is not None and job_type == "sae":  # the run the agent started: its id, project
        run_id = agent["id"]
        project = agent.get("project") or project
        entity = agent.get("entity") or entity
    logger = WandbLogger(
        project=project,
        entity=entity,
        name=config.name,
        id=run_id,
        group=config.group or run_id,
        job_type=job_type,
        save_dir=str(out_dir),
        tags=config.tags or None,
        mode=mode,
        config=run_config,
        resume="allow",
    )
    # Lightning always passes anonymous=None, which wandb >= 0.19 answers with a warning line.
    # Private: the logger's init arguments have no public setter (WandbLogger(anonymous=...)
    # maps False to None too); tests/test_library_contracts.py fails if they move.
    logger._wandb_init.pop("anonymous", None)
    return logger


def _wandb_reachable(timeout_s: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
        return True
    except (OSError, ValueError):
        return False


def wandb_run_info(logger: Any) -> dict[str, Any] | None:
    """What a later command needs to add to the same wandb run (None without wandb)."""
    if logger is None:
        return None
    run = logger.experiment
    return {
        "id": run.id,
        "project": run.project,
        "entity": run.entity or None,
        "group": run.group or None,
        "dir": str(logger.save_dir),
        "mode": "offline" if run.offline else "online",
    }


def eval_wandb_run(info: dict[str, Any] | None, config: dict[str, Any] | None = None) -> Any:
    """A new wandb run (job_type "eval") in the training run's group, for its scores: a finished
    run is never resumed (offline resume is unreliable in wandb). Older records without a group
    use the training run's id as the group."""
    if not info:
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        id=f"{info['id']}-eval-{secrets.token_hex(3)}",
        project=info["project"],
        entity=info.get("entity"),
        group=info.get("group") or info["id"],
        job_type="eval",
        dir=info["dir"],
        mode=info["mode"],
        config={"train_run": info["id"], **(config or {})},
    )


def finish_wandb(logger: Any) -> None:
    """Close the wandb run on rank 0 so its files are complete (required under DDP)."""
    if logger is None:
        return
    import wandb

    if wandb.run is not None:
        wandb.run.finish()
