"""Options and helpers shared by the commands: config loading, device flags, output folders."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from cli.config_view import announce, flush, warn
from sae.run.config_io import load_config
from sae.run.errors import UsageError
from sae.run.layout import RunDir

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_FOLDER = click.Path(file_okay=False, path_type=Path)


_CONFIG_OPTIONS = (
    click.option(
        "--config", "config_path", type=click.Path(path_type=Path), help="YAML config file."
    ),
    click.option("--out", "out_dir", type=_FOLDER, help="Output folder."),
    click.option(
        "--resume", "resume_dir", type=_FOLDER, help="Continue the interrupted run in this folder."
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing run in the output folder."),
    click.option(
        "--print-config",
        is_flag=True,
        help="Print the resolved config (defaults, file, --set) as YAML and exit.",
    ),
)
_DEVICE_OPTIONS = (
    click.option("--devices", type=int, help="Devices (processes) per node."),
    click.option(
        "--strategy",
        type=click.Choice(["auto", "ddp", "ddp_spawn", "ddp_fork"]),
        help="Lightning strategy for several devices.",
    ),
    click.option("--num-nodes", type=int, help="Machines taking part."),
    click.option("--accelerator", help="cpu, gpu, cuda or auto."),
)


@dataclass
class RunOptions:
    """What ``sae toy train``, ``sae train`` and ``sae run`` share: the config, its overrides,
    the output folder and the device flags (which set ``runtime.*``)."""

    config_path: Path | None
    overrides: tuple[str, ...]
    out_dir: Path | None
    resume_dir: Path | None
    overwrite: bool
    devices: int | None
    strategy: str | None
    num_nodes: int | None
    accelerator: str | None
    print_config: bool = False

    def device_overrides(self, sections: tuple[str, ...] = ("",)) -> list[str]:
        """``runtime.<flag>=<value>`` for each device flag given, under each of ``sections``
        (a pipeline sets both its stages)."""
        pairs = {
            "devices": self.devices,
            "strategy": self.strategy,
            "num_nodes": self.num_nodes,
            "accelerator": self.accelerator,
        }
        flags = [f"runtime.{k}={v}" for k, v in pairs.items() if v is not None]
        return [f"{section}{flag}" for section in sections for flag in flags]

    def resolve(
        self,
        cls: type[T],
        extra: list[str] = (),
        *,
        sections: tuple[str, ...] = ("",),
        prepare: bool = True,
        needs_checkpoint: bool = False,
        layout: type[RunDir] = RunDir,
    ) -> tuple[T, Path, bool]:
        """``resolve_run`` with the --set overrides, then the device flags, then ``extra``;
        ``needs_checkpoint``: a resumed run must have its checkpoint; ``layout``: the kind of
        run folder (what --overwrite may remove)."""
        overrides = list(self.overrides) + self.device_overrides(sections) + list(extra)
        announce(
            cls,
            self.config_path,
            self.resume_dir,
            overrides,
            self.print_config,
            is_main_process(),
        )
        config, out, resuming = resolve_run(
            cls,
            self.config_path,
            overrides,
            self.out_dir,
            self.resume_dir,
            self.overwrite,
            prepare,
            layout,
        )
        if resuming and layout(out).finished():
            # Nothing to continue: say so and leave the folder as it is (exit status 0).
            click.echo(f"{out} holds a finished run: nothing to resume, nothing changed", err=True)
            raise click.exceptions.Exit(0)
        if resuming and needs_checkpoint:
            require_checkpoint(out)
        warn(config, is_main_process())
        if prepare:  # else the caller checks its inputs first, then calls config_view.flush()
            flush()
        return config, out, resuming


def run_options(*between: Callable[[F], F], example: str = "model.n_hidden=5") -> Callable[[F], F]:
    """The options of a run command, passed to it as one ``RunOptions`` (its first argument):
    the config options, then the command's own options ``between``, then the device flags.
    ``example``: the ``--set`` of the help text (a valid override of this command's config)."""
    override = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help=f"Override a config value, e.g. --set {example} (repeatable).",
    )

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(**kwargs: Any) -> Any:
            run = RunOptions(**{k: kwargs.pop(k) for k in RunOptions.__dataclass_fields__})
            return f(run, **kwargs)

        options = _CONFIG_OPTIONS[:1] + (override,) + _CONFIG_OPTIONS[1:]
        for option in reversed(options + between + _DEVICE_OPTIONS):
            command = option(command)
        return command  # type: ignore[return-value]

    return decorate


def resolve_run(
    cls: type[T],
    config_path: Path | None,
    overrides: list[str],
    out_dir: Path | None,
    resume_dir: Path | None,
    overwrite: bool,
    prepare: bool = True,
    layout: type[RunDir] = RunDir,
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
        prepare_out_dir(out_dir, overwrite, layout)
    return config, out_dir, False


def require_checkpoint(out_dir: Path) -> None:
    """--resume of a training command needs the checkpoint; say so before any setup runs."""
    run = RunDir(out_dir)
    if not run.last_checkpoint.is_file():
        raise UsageError(f"nothing to resume in {out_dir}: no {RunDir.RESUME_FROM}")


def prepare_out_dir(
    out_dir: Path,
    overwrite: bool,
    layout: type[RunDir] = RunDir,
    inputs: Sequence[str | Path | None] = (),
) -> None:
    """Create ``out_dir``; a folder that already holds a run is refused, or with ``overwrite``
    emptied of that run's outputs (``layout(out_dir).outputs()``) and nothing else. Anything
    else in it (a user's file), or one of the command's ``inputs`` among the outputs, refuses
    the overwrite before anything is removed."""
    if not is_main_process():  # a rank Lightning launched: rank 0 already prepared the folder
        out_dir.mkdir(parents=True, exist_ok=True)
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output folder {out_dir} is a file")
    run = layout(out_dir)
    if run.holds_run():
        if not overwrite:
            raise UsageError(
                f"{out_dir} already holds a run; use --resume {out_dir} to continue "
                "it or --overwrite to replace it"
            )
        owned, foreign = run.outputs()
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise UsageError(
                f"--overwrite removes only a run's own files, and {out_dir} also holds "
                f"{foreign[0]}{more}; move it away or choose another --out"
            )
        for path in (Path(p).resolve() for p in inputs if p is not None):
            for entry in (e.resolve() for e in owned):
                if path == entry or entry in path.parents or path in entry.parents:
                    raise UsageError(
                        f"--overwrite would delete {path}, an input of this command; "
                        "choose another --out"
                    )
        for entry in owned:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out_dir}: {e.strerror}") from None


def is_main_process() -> bool:
    """False in the extra ranks Lightning launches by re-running the command."""
    import os

    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
