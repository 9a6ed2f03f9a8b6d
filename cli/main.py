"""``sae``: the command line. Every command turns bad input into one ``error: ...`` line with exit
status 2 (usage) or 1 (runtime); ``--debug`` shows the traceback instead."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from cli.configs import configs
from cli.evaluate import eval_command
from cli.run import run
from cli.sae_train import train
from cli.select import select_command
from cli.sweep_args import sweep_args_to_sets
from cli.toy import toy
from sae.run.distributed import end_process_group
from sae.run.errors import ToolkitError

# Nothing imported at start-up may import torch, Lightning or wandb: `sae --help` and argument
# errors answer at once (tests/test_cli.py checks); commands import what they need when they run.


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sae-toolkit", prog_name="sae")
@click.option(
    "--debug",
    is_flag=True,
    help="Show full tracebacks and Lightning's own messages (also after the command).",
)
def cli(debug: bool) -> None:
    """Train toy models of superposition, train SAEs on their activations, score the SAEs
    against the known features."""


cli.add_command(toy)
cli.add_command(train)
cli.add_command(eval_command)
cli.add_command(run)
cli.add_command(configs)
cli.add_command(select_command)

_quiet = {"libraries": True}  # run_cli sets it; False with --debug


def _quiet_first(callback: Callable[..., Any]) -> Callable[..., Any]:
    """A command's callback that first quiets the libraries (it runs only after the command
    line parsed, so --help and argument errors never import Lightning)."""

    @functools.wraps(callback)
    def command(*args: Any, **kwargs: Any) -> Any:
        if _quiet["libraries"]:
            quiet_libraries()
        return callback(*args, **kwargs)

    return command


def _wrap_commands(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _wrap_commands(command)
        elif command.callback is not None and command is not configs:  # configs needs none
            command.callback = _quiet_first(command.callback)


_wrap_commands(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group and map failures to exit codes."""
    sys.exit(run_cli(cli.main, argv))


def quiet_libraries() -> None:
    """Keep stderr for our own messages: Lightning's start-up notes (accelerator lines, tips)
    only show with --debug. Called when a command runs (importing Lightning takes seconds)."""
    import logging

    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO; override after)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_warnings()


def quiet_warnings() -> None:
    """Third-party deprecation warnings only show with --debug."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    # torch 2.13 deprecates both; `broadcast_buffers=False` is still the documented way to keep
    # rank-local buffers (the firing counters), and the all_gather is Lightning's.
    warnings.filterwarnings("ignore", message=".*`broadcast_buffers` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` anywhere before a ``--`` (``sae --debug train ...`` or ``sae train --debug
    ...``): the arguments without it, and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return rest, len(rest) != len(argv)


def run_cli(entry: Callable[..., Any], argv: list[str] | None) -> int:
    argv, debug = split_debug(list(argv if argv is not None else sys.argv[1:]))
    _quiet["libraries"] = not debug
    if not debug:
        quiet_warnings()
    try:
        argv = sweep_args_to_sets(argv)  # what wandb's sweep agent passes
        entry(args=argv, standalone_mode=False, prog_name="sae")
        return 0
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except ToolkitError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception as e:  # anything unexpected still gets one line, the trace with --debug
        if debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"error: {type(e).__name__}: {first} (rerun with --debug for details)", err=True)
        return 1
    finally:
        end_process_group()


if __name__ == "__main__":
    main()
