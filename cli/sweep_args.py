"""The arguments wandb's sweep agent passes, read as ``--set`` overrides.

The agent runs the sweep file's ``command:``, expanding ``${args}`` to ``--key=value`` per
parameter and ``${args_no_hyphens}`` to ``key=value``. A parameter named like a config key
(``sweep.l1_coefficient``) therefore arrives as ``--sweep.l1_coefficient=0.3`` or
``sweep.l1_coefficient=0.3``; both mean ``--set sweep.l1_coefficient=0.3``. ``{wandb_run_id}``
in any argument (``--out runs/l1_sweep/{wandb_run_id}``) becomes the id the agent gave the run
(``WANDB_RUN_ID``), so each run of a sweep has its own folder. See configs/sweeps/."""

from __future__ import annotations

import os
import re

from sae.run.errors import UsageError

RUN_ID_PLACEHOLDER = "{wandb_run_id}"
_KEY = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
_DASHED = re.compile(rf"^--({_KEY})=(.*)$", re.S)
_BARE = re.compile(rf"^({_KEY})=(.*)$", re.S)


def sweep_args_to_sets(argv: list[str]) -> list[str]:
    """``argv`` with the agent's ``--a.b=v`` and ``a.b=v`` turned into ``--set a.b=v`` (a value
    that follows ``--set`` is left alone) and ``{wandb_run_id}`` filled in."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        if RUN_ID_PLACEHOLDER in arg:
            run_id = os.environ.get("WANDB_RUN_ID")
            if not run_id:
                raise UsageError(
                    f"{arg}: {RUN_ID_PLACEHOLDER} is filled in by wandb's sweep agent "
                    "(WANDB_RUN_ID is not set)"
                )
            arg = arg.replace(RUN_ID_PLACEHOLDER, run_id)
        after_set = i > 0 and argv[i - 1] == "--set"
        match = None if after_set else (_DASHED.match(arg) or _BARE.match(arg))
        out += ["--set", f"{match[1]}={match[2]}"] if match else [arg]
    return out
