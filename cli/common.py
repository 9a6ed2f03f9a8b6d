"""Options and helpers shared by the commands: config loading, device flags, output folders."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sae.run.config_io import load_config
from sae.run.errors import UsageError
from sae.run.layout import RunDir

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def config_options(f: F) -> F:
    """--config, --set, --out, --resume, --overwrite."""
    f = click.option(
        "--overwrite", is_flag=True, help="Replace an existing run in the output folder."
    )(f)
    f = click.option(
        "--resume",
        "resume_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Continue the interrupted run in this folder.",
    )(f)
    f = click.option(
        "--out",
        "out_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Output folder.",
    )(f)
    f = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set model.n_hidden=5 (repeatable).",
    )(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="YAML config file.",
    )(f)
    return f


def device_options(f: F) -> F:
    """--devices, --strategy, --num-nodes, --accelerator (override runtime.*)."""
    f = click.option("--accelerator", default=None, help="cpu, gpu, cuda or auto.")(f)
    f = click.option("--num-nodes", type=int, default=None, help="Machines taking part.")(f)
    f = click.option(
        "--strategy",
        type=click.Choice(["auto", "ddp", "ddp_spawn", "ddp_fork"]),
        default=None,
        help="Lightning strategy for several devices.",
    )(f)
    f = click.option("--devices", type=int, default=None, help="Devices (processes) per node.")(f)
    return f


def device_overrides(
    devices: int | None, strategy: str | None, num_nodes: int | None, accelerator: str | None
) -> list[str]:
    pairs = {
        "devices": devices,
        "strategy": strategy,
        "num_nodes": num_nodes,
        "accelerator": accelerator,
    }
    return [f"runtime.{k}={v}" for k, v in pairs.items() if v is not None]


def resolve_run(
    cls: type[T],
    config_path: Path | None,
    overrides: list[str],
    out_dir: Path | None,
    resume_dir: Path | None,
    overwrite: bool,
    prepare: bool = True,
) -> tuple[T, Path, bool]:
    """The config and output folder of a run; refuses to clobber an existing run. With
    ``prepare=False`` the caller checks its inputs first, then calls ``prepare_out_dir`` (so a
    broken input never costs a run that --overwrite was about to replace)."""
    if resume_dir is not None:
        if config_path is not None:
            raise UsageError("--resume reads the config saved in the run folder; drop --config")
        if out_dir is not None and out_dir != resume_dir:
            raise UsageError("--resume DIR is the output folder; drop --out")
        saved = RunDir(resume_dir).config
        if not saved.exists():
            raise UsageError(f"nothing to resume in {resume_dir}: no {RunDir.CONFIG}")
        return load_config(cls, saved, list(overrides)), resume_dir, True
    if out_dir is None:
        raise UsageError("missing option '--out'")
    config = load_config(cls, config_path, list(overrides))
    if prepare:
        prepare_out_dir(out_dir, overwrite)
    return config, out_dir, False


def require_checkpoint(out_dir: Path) -> None:
    """--resume of a training command needs the checkpoint; say so before any setup runs."""
    run = RunDir(out_dir)
    if not run.last_checkpoint.is_file():
        raise UsageError(f"nothing to resume in {out_dir}: no {RunDir.RESUME_FROM}")


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if not is_main_process():  # a rank Lightning launched: rank 0 already prepared the folder
        out_dir.mkdir(parents=True, exist_ok=True)
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output folder {out_dir} is a file")
    if RunDir(out_dir).holds_run():
        if not overwrite:
            raise UsageError(
                f"{out_dir} already holds a run; use --resume {out_dir} to continue "
                "it or --overwrite to replace it"
            )
        shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out_dir}: {e.strerror}") from None


def is_main_process() -> bool:
    """False in the extra ranks Lightning launches by re-running the command."""
    import os

    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
