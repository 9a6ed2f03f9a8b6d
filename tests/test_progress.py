"""Progress goes to stderr: a bar in a terminal, plain lines every few percent elsewhere."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from synthetic import write_planted_file

from sae.run.progress import (
    LINE_EVERY_PERCENT,
    StepProgressBar,
    StepProgressLines,
    progress_callback,
)

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^step (\d+)/(\d+) \((\d+)%\) loss \S+$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_only_in_a_terminal():
    assert isinstance(progress_callback(_Terminal()), StepProgressBar)
    assert isinstance(progress_callback(io.StringIO()), StepProgressLines)


def test_training_in_a_pipe_writes_plain_lines_to_stderr(tmp_path):
    acts = tmp_path / "acts.safetensors"
    write_planted_file(acts, n_features=8, d=4, n_rows=1024, p=0.1, seed=0)
    out = tmp_path / "run"
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "cli.main", "train",
            "--activations", str(acts), "--out", str(out),
            "--set", "sae.d_sae=8", "--set", "train.steps=400", "--set", "train.batch_size=32",
            "--set", "train.log_every=10", "--set", "runtime.threads=1",
            "--set", "runtime.steps_per_call=7", "--set", "wandb.enabled=false",
        ],  # fmt: skip
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    lines = [m for m in map(LINE.match, proc.stderr.splitlines()) if m]
    assert 100 // LINE_EVERY_PERCENT - 2 <= len(lines) <= 100 // LINE_EVERY_PERCENT + 1
    steps = [int(m[1]) for m in lines]
    assert steps == sorted(set(steps)) and steps[-1] == 400
    assert all(int(m[2]) == 400 for m in lines)
    assert not any(LINE.match(s) for s in proc.stdout.splitlines())  # results only on stdout
    assert proc.stdout.strip()
