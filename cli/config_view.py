"""What a run command says about its config before it runs: which defaults a missing --config
means, the resolved config (``--print-config``), and settings that will not do what they seem
to (one ``warning:`` line each). The printed config goes to stdout; the notes and warnings go to
stderr once the command has checked its input (``flush``), so bad input stays one error line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sae.run.config_io import config_to_yaml, load_config
from sae.run.layout import RunDir

_pending: list[str] = []


def announce(
    cls: type,
    config_path: Path | None,
    resume_dir: Path | None,
    overrides: list[str],
    print_config: bool,
    main_process: bool = True,
) -> None:
    """Note which defaults a run without --config uses; with ``print_config`` print the resolved
    config (defaults, then the file or the resumed run's config, then the overrides) as YAML and
    end the command with status 0, before any folder is touched."""
    _pending.clear()
    if config_path is None and resume_dir is None and main_process:
        _pending.append(
            f"note: no --config given: using the built-in defaults of {cls.__name__} plus any "
            "--set (see them with --print-config)"
        )
    if not print_config:
        return
    path = RunDir(resume_dir).config if resume_dir is not None else config_path
    config = load_config(cls, path, overrides)
    warn(config, main_process)
    flush()
    click.echo(config_to_yaml(config), nl=False)
    raise click.exceptions.Exit(0)


def warn(config: Any, main_process: bool = True) -> None:
    """A ``warning:`` line for each of the config's ``warnings()``, shown by ``flush``."""
    if main_process:
        _pending.extend(f"warning: {line}" for line in getattr(config, "warnings", list)())


def flush() -> None:
    """Show the notes and warnings: the command's input checked out and the run goes ahead."""
    for line in _pending:
        click.echo(line, err=True)
    _pending.clear()
