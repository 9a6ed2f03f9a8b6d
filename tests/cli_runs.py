"""Helpers for tests that drive the ``sae`` command in this process and check its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import cli, run_cli

# Tiny, quiet runs (one thread, no progress bar, no wandb) for tests of the commands' behaviour.
QUIET = {"runtime": {"threads": 1, "progress_bar": False}, "wandb": {"enabled": False}}
TOY = {
    "model": {"kind": "relu_output", "n_features": 4, "n_hidden": 2},
    "data": {"feature_probability": [0.1]},
    "train": {"steps": 20, "batch_size": 32, "log_every": 10, "eval_samples": 256},
    **QUIET,
}
SAE = {
    "sae": {"d_sae": 8, "recipe": "constrained", "b_dec_init": "zeros"},
    "sweep": {"l1_coefficient": [0.1]},
    "train": {"steps": 20, "batch_size": 32, "log_every": 10, "checkpoint_every": 10},
    "data": {"init_samples": 64},
    **QUIET,
}


def sae_cli(argv: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``sae ARGV`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = run_cli(cli.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` and its bytes: what a command must leave untouched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
