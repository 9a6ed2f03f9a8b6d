"""Reliability of every command: a typo or a broken file costs neither a traceback nor an existing
result; NaN losses and signals stop a run with its last good checkpoint kept; ``--resume`` is
exact; an unreachable wandb server means offline logging, not a failure; writes are atomic.

The commands run in-process through ``run_cli`` (as ``python -m cli.main`` does), except where a
real process is needed: signals and a clean wandb environment.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import torch
import yaml
from cli_runs import SAE, TOY, sae_cli, snapshot, write_yaml
from safetensors.torch import load_file, save_file

from cli.main import cli, run_cli
from sae.activations import ActivationFile, write_activation_file
from sae.data import FileSource
from sae.run.files import atomic_path, write_json

REPO = Path(__file__).resolve().parents[1]
PIPELINE = {"toy": TOY, "export": {"samples": 2000}, "sae": SAE}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- shared artefacts: one real `sae run` gives a toy run, an activation file and an SAE run -----


@dataclass
class Base:
    root: Path
    toy_cfg: Path
    sae_cfg: Path
    pipe_cfg: Path
    pipe_run: Path

    @property
    def toy_run(self) -> Path:
        return self.pipe_run / "toy"

    @property
    def sae_run(self) -> Path:
        return self.pipe_run / "sae"

    @property
    def acts(self) -> Path:
        return self.pipe_run / "activations.safetensors"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("base")
    b = Base(
        root,
        write_yaml(root / "toy.yaml", TOY),
        write_yaml(root / "sae.yaml", SAE),
        write_yaml(root / "pipeline.yaml", PIPELINE),
        root / "run",
    )
    torch.set_num_threads(1)
    code = run_cli(cli.main, ["run", "--config", str(b.pipe_cfg), "--out", str(b.pipe_run)])
    assert code == 0
    assert (b.sae_run / "run.json").exists() and (b.pipe_run / "report.md").exists()
    return b


# -- broken activation files ---------------------------------------------------------------------


def _rand(n: int, d: int) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(0))


def _with(value: float) -> torch.Tensor:
    a = _rand(50, 2)
    a[7, 1] = value
    return a


def _header_garbage(path: Path) -> None:
    body = b"{this is not json}"
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(64))


def _diverging(path: Path) -> None:
    """Activations whose rows drawn at steps 21-27 are 1e20 (finite, but their square overflows
    float32): the loss turns Inf after the step-20 checkpoint. 900 training rows make steps 0-27
    one pass over a permutation, so no earlier step draws a blown-up row."""
    n, batch = 1000, 32
    ids = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 2).contiguous()
    write_activation_file(path, ids)
    source = FileSource(ActivationFile(path), 0.1, 0, batch)
    steps = [source.block(s, 0, batch, torch.device("cpu"))[:, 0].long() for s in range(21, 28)]
    acts = _rand(n, 2) * 0.5
    acts[torch.cat(steps)] = 1e20
    write_activation_file(path, acts, ground_truth=torch.eye(2))


BAD_FILES = {
    "text": lambda p: p.write_text("step,loss\n1,0.5\n2,0.4\n"),
    "truncated": None,  # the first half of the real activation file (written in the test)
    "garbage_header": _header_garbage,
    "no_activations": lambda p: save_file({"ground_truth": torch.eye(2)}, str(p)),
    "f64": lambda p: save_file({"activations": torch.zeros(10, 2, dtype=torch.float64)}, str(p)),
    "gt_width": lambda p: write_activation_file(p, _rand(50, 2), ground_truth=_rand(4, 3)),
    "nan": lambda p: write_activation_file(p, _with(math.nan), ground_truth=torch.eye(2)),
    "inf": lambda p: write_activation_file(p, _with(math.inf), ground_truth=torch.eye(2)),
    "no_rows": lambda p: write_activation_file(p, torch.zeros(0, 2)),
    "width5": lambda p: write_activation_file(p, _rand(50, 5), ground_truth=_rand(4, 5)),
    "no_gt": lambda p: write_activation_file(p, _rand(50, 2)),
    "diverging": _diverging,
}


# -- the table -----------------------------------------------------------------------------------


@dataclass
class Case:
    argv: str
    """The command line; {out} {t} {bad} {toy_cfg} {sae_cfg} {pipe_cfg} {toy_run} {acts} are
    filled in."""
    code: int
    names: tuple[str, ...]
    """What the message must name (same placeholders)."""
    bad: str | None = None
    """A broken activation file (BAD_FILES) written at {bad}."""
    seed: str | None = None
    """An earlier result put into {out} first: toy, sae, pipe (real runs) or acts (a file)."""
    damage: str | None = None
    """A further edit of {out}: no_ckpt, bad_ckpt, bad_weights, moved_acts."""
    absent: tuple[str, ...] = ()


TRAIN = "train --config {sae_cfg} --out {out}"
TOY_TRAIN = "toy train --config {toy_cfg} --out {out}"
CASES: dict[str, Case] = {
    # config: unknown keys, wrong types, values out of range, missing or unreadable files
    "toy-modular-fraction-zero": Case(
        "toy modular --out {out} --set train.train_fraction=0", 2, ("train.train_fraction",)
    ),
    "toy-modular-purity-no-run": Case(
        "toy modular-purity {t}/nothing", 2, ("{t}/nothing", "no trained model")
    ),
    "toy-phase-diagram-not-a-grid": Case(
        "toy phase-diagram --config {toy_cfg} --out {out}", 2, ("phase diagram", "n_features")
    ),
    "toy-unknown-key": Case(
        TOY_TRAIN + " --set model.n_featurs=3", 2, ("'model.n_featurs'", "'model.n_features'")
    ),
    "toy-unknown-key-in-file": Case(
        "toy train --config {t}/typo.yaml --out {out}", 2, ("{t}/typo.yaml", "'trian'", "'train'")
    ),
    "toy-wrong-type": Case(TOY_TRAIN + " --set train.steps=many", 2, ("'train.steps'", "many")),
    "toy-wrong-type-in-file": Case(
        "toy train --config {t}/typed.yaml --out {out}", 2, ("{t}/typed.yaml", "train.batch_size")
    ),
    "toy-probability-above-1": Case(
        TOY_TRAIN + " --set data.feature_probability=[0.5,1.5]",
        2,
        ("data.feature_probability", "1.5"),
        absent=("data.data",),
    ),
    "toy-probability-zero": Case(
        TOY_TRAIN + " --set data.feature_probability=[0]", 2, ("data.feature_probability", "0")
    ),
    "toy-size-zero": Case(TOY_TRAIN + " --set model.n_hidden=0", 2, ("model.n_hidden",)),
    "toy-steps-zero": Case(
        TOY_TRAIN + " --set train.steps=0", 2, ("train.steps", "got 0"), absent=("train.train",)
    ),
    "toy-negative-lr": Case(TOY_TRAIN + " --set optim.lr=-0.1", 2, ("optim.lr", "-0.1")),
    "toy-config-missing": Case(
        "toy train --config {t}/nope.yaml --out {out}", 2, ("{t}/nope.yaml", "not found")
    ),
    "toy-config-not-utf8": Case(
        "toy train --config {t}/binary.yaml --out {out}", 2, ("{t}/binary.yaml",)
    ),
    "toy-config-is-folder": Case("toy train --config {t} --out {out}", 2, ("{t}",)),
    "toy-config-bad-yaml": Case(
        "toy train --config {t}/broken.yaml --out {out}", 2, ("{t}/broken.yaml", "YAML")
    ),
    "toy-override-without-value": Case(TOY_TRAIN + " --set model.n_hidden", 2, ("model.n_hidden",)),
    "toy-devices-zero": Case(TOY_TRAIN + " --devices 0", 2, ("runtime.devices",)),
    "toy-bad-accelerator": Case(TOY_TRAIN + " --accelerator quantum", 2, ("quantum",)),
    "toy-absent-accelerator": Case(TOY_TRAIN + " --accelerator tpu", 2, ("accelerator=tpu",)),
    "sae-negative-lambda": Case(
        TRAIN + " --activations {acts} --set sweep.l1_coefficient=[0.1,-1]",
        2,
        ("sweep.l1_coefficient",),
    ),
    "sae-unknown-section": Case(
        "train --config {t}/sweeps.yaml --activations {acts} --out {out}",
        2,
        ("{t}/sweeps.yaml", "'sweeps'", "'sweep'"),
    ),
    "sae-d_sae-zero": Case(TRAIN + " --activations {acts} --set sae.d_sae=0", 2, ("sae.d_sae",)),
    "sae-wrong-type": Case(TRAIN + " --activations {acts} --set sweep.lr=fast", 2, ("sweep.lr",)),
    "sae-holdout-out-of-range": Case(
        TRAIN + " --activations {acts} --set data.holdout_fraction=1.5",
        2,
        ("data.holdout_fraction", "1.5"),
    ),
    "sae-bad-recipe": Case(
        TRAIN + " --activations {acts} --set sae.recipe=april", 2, ("sae.recipe", "april")
    ),
    "run-unknown-nested-key": Case(
        "run --config {pipe_cfg} --out {out} --set sae.sae.d_sea=4",
        2,
        ("'sae.sae.d_sea'", "'sae.sae.d_sae'"),
    ),
    "run-probability-out-of-range": Case(
        "run --config {pipe_cfg} --out {out} --set toy.data.feature_probability=[2]",
        2,
        ("toy.data.feature_probability", "2"),
        absent=("data.data",),
    ),
    "run-export-samples": Case(
        "run --config {pipe_cfg} --out {out} --set export.samples=1",
        2,
        ("export.samples",),
        absent=("export.export",),
    ),
    "run-config-missing": Case("run --config {t}/none.yaml --out {out}", 2, ("{t}/none.yaml",)),
    # activation files
    **{
        f"sae-acts-{bad}": Case(TRAIN + " --activations {bad}", 2, ("{bad}", *names), bad=bad)
        for bad, names in {
            "text": ("not a safetensors file",),
            "truncated": ("truncated",),
            "garbage_header": ("not a safetensors file",),
            "no_activations": ("'activations'",),
            "f64": ("'activations'", "F64"),
            "gt_width": ("'ground_truth'",),
            "nan": ("NaN",),
            "inf": ("Inf",),
            "no_rows": ("no rows",),
        }.items()
    },
    "sae-acts-missing": Case(TRAIN + " --activations {t}/nope.safetensors", 2, ("{t}/nope",)),
    "sae-acts-is-folder": Case(TRAIN + " --activations {t}", 2, ("{t}",)),
    "sae-two-sources": Case(TRAIN + " --activations {acts} --toy {toy_run}", 2, ("--toy",)),
    "sae-toy-instance-out-of-range": Case(
        TRAIN + " --toy {toy_run} --instance 3", 2, ("instance 3", "{toy_run}")
    ),
    "sae-toy-broken-model": Case(
        TRAIN + " --toy {t}/broken_toy", 2, ("{t}/broken_toy/model.safetensors",)
    ),
    "eval-acts-nan": Case("eval {out} --activations {bad}", 2, ("{bad}", "NaN"), "nan", "sae"),
    "eval-acts-width": Case("eval {out} --activations {bad}", 2, ("{bad}", "5"), "width5", "sae"),
    "eval-acts-no-ground-truth": Case(
        "eval {out} --activations {bad}", 2, ("{bad}", "ground_truth"), "no_gt", "sae"
    ),
    "eval-acts-truncated": Case(
        "eval {out} --activations {bad}", 2, ("{bad}", "truncated"), "truncated", "sae"
    ),
    "eval-training-file-gone": Case(
        "eval {out}", 2, ("{t}/moved.safetensors",), seed="sae", damage="moved_acts"
    ),
    "eval-corrupt-weights": Case(
        "eval {out}", 2, ("sae_weights.safetensors",), seed="sae", damage="bad_weights"
    ),
    "eval-no-run": Case("eval {out}", 2, ("{out}", "run.json")),
    "configs-extra-argument": Case("configs {t}", 2, ("{t}",)),
    "select-no-run": Case("select {t}", 2, ("{t}", "no finished SAEs to select from")),
    # scoring on a device this machine lacks
    **(
        {}
        if torch.cuda.is_available()
        else {"eval-absent-cuda": Case("eval {out} --accelerator cuda", 2, ("'cuda'",), seed="sae")}
    ),
    "export-broken-model": Case(
        "toy export {t}/broken_toy --out {out}/acts.safetensors",
        2,
        ("{t}/broken_toy/model.safetensors",),
        seed="acts",
    ),
    "export-no-model": Case(
        "toy export {t}/nothing --out {out}/acts.safetensors", 2, ("{t}/nothing",), seed="acts"
    ),
    "export-instance-out-of-range": Case(
        "toy export {toy_run} --instance 7 --out {out}/acts.safetensors",
        2,
        ("instance 7",),
        seed="acts",
    ),
    "export-samples-zero": Case(
        "toy export {toy_run} --samples 0 --out {out}/acts.safetensors",
        2,
        ("--samples",),
        seed="acts",
    ),
    "export-out-is-folder": Case("toy export {toy_run} --out {out}", 2, ("--out", "{out}")),
    "export-out-exists": Case(
        "toy export {toy_run} --out {out}/acts.safetensors",
        2,
        ("{out}/acts.safetensors", "--overwrite"),
        seed="acts",
    ),
    # output folders holding a run
    "toy-out-holds-run": Case(TOY_TRAIN, 2, ("{out}", "--resume", "--overwrite"), seed="toy"),
    "sae-out-holds-run": Case(
        TRAIN + " --activations {acts}", 2, ("{out}", "--resume", "--overwrite"), seed="sae"
    ),
    "run-out-holds-run": Case(
        "run --config {pipe_cfg} --out {out}", 2, ("{out}", "--resume", "--overwrite"), seed="pipe"
    ),
    "sae-overwrite-with-broken-input": Case(
        TRAIN + " --activations {bad} --overwrite", 2, ("{bad}", "NaN"), "nan", "sae"
    ),
    "toy-out-under-a-file": Case(
        "toy train --config {toy_cfg} --out {out}/keep.txt/run", 2, ("{out}/keep.txt/run",)
    ),
    "toy-resume-nothing": Case("toy train --resume {out}", 2, ("{out}", "config.yaml")),
    "toy-resume-no-checkpoint": Case(
        "toy train --resume {out}", 2, ("{out}", "last.ckpt"), seed="toy", damage="no_ckpt"
    ),
    "toy-resume-corrupt-checkpoint": Case(
        "toy train --resume {out}", 2, ("last.ckpt",), seed="toy", damage="bad_ckpt"
    ),
    "sae-resume-corrupt-checkpoint": Case(
        "train --resume {out}", 2, ("last.ckpt",), seed="sae", damage="bad_ckpt"
    ),
    "sae-resume-with-config": Case(
        "train --resume {out} --config {sae_cfg}", 2, ("--config",), seed="sae"
    ),
    # runtime failures: exit 1
    "sae-diverges": Case(
        TRAIN + " --activations {bad} --set train.steps=60",
        1,
        ("training diverged", "last.ckpt"),
        bad="diverging",
    ),
}


def _prepare(case: Case, t: Path, base: Base) -> dict[str, str]:
    out = t / "out"
    out.mkdir()
    (out / "keep.txt").write_text("a file the user put here\n")
    write_yaml(t / "typo.yaml", {**TOY, "trian": {"steps": 5}})
    write_yaml(t / "typed.yaml", {**TOY, "train": {"batch_size": "big"}})
    write_yaml(t / "sweeps.yaml", {**SAE, "sweeps": {"l1_coefficient": [0.1]}})
    (t / "binary.yaml").write_bytes(b"model:\n  kind: \xff\xfe\x00\n")
    (t / "broken.yaml").write_text("model: {kind: linear, n_features: [3\n")
    (t / "broken_toy").mkdir()
    (t / "broken_toy" / "model.safetensors").write_bytes(b"\x00" * 7 + b"not a model" * 10)
    bad = t / "bad.safetensors"
    if case.bad == "truncated":
        data = base.acts.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case.bad is not None:
        BAD_FILES[case.bad](bad)
    seeds = {"toy": base.toy_run, "sae": base.sae_run, "pipe": base.pipe_run}
    if case.seed in seeds:
        shutil.copytree(seeds[case.seed], out, dirs_exist_ok=True)
        if case.seed == "sae":  # the run travels with its data (its paths are relative to it)
            shutil.copy(base.acts, t / "activations.safetensors")
    elif case.seed == "acts":
        shutil.copy(base.acts, out / "acts.safetensors")
    ckpt = out / "checkpoints" / "last.ckpt"
    if case.damage in ("no_ckpt", "bad_ckpt"):  # an interrupted run: no final results yet
        for name in ("run.json", "model.safetensors", "metrics.json"):
            (out / name).unlink(missing_ok=True)
    if case.damage == "no_ckpt":
        shutil.rmtree(out / "checkpoints")
    elif case.damage == "bad_ckpt":
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    elif case.damage == "bad_weights":
        weights = out / "sae_0" / "sae_weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif case.damage == "moved_acts":
        config = yaml.safe_load((out / "config.yaml").read_text())
        config["data"]["activations"] = str(t / "moved.safetensors")
        write_yaml(out / "config.yaml", config)
    return {
        "t": str(t),
        "out": str(out),
        "bad": str(bad),
        "toy_cfg": str(base.toy_cfg),
        "sae_cfg": str(base.sae_cfg),
        "pipe_cfg": str(base.pipe_cfg),
        "toy_run": str(base.toy_run),
        "acts": str(base.acts),
    }


def _command(argv: str) -> str:
    words = argv.split()
    return " ".join(words[:2]) if words[0] == "toy" else words[0]


def _cli_commands(group: click.Group = cli, words: str = "") -> set[str]:
    """Every command the CLI has (``toy train``, ``eval``, ...), read from the CLI itself."""
    found = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= _cli_commands(command, f"{words}{name} ")
        else:
            found.add(f"{words}{name}")
    return found


def test_the_table_covers_every_command() -> None:
    # Against the CLI, not a list written here: a new command fails this until it has a case.
    assert {_command(c.argv) for c in CASES.values()} == _cli_commands()
    assert {"toy train", "toy export", "train", "eval", "run"} <= _cli_commands()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(
    name: str, base: Base, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    fill = _prepare(case, tmp_path, base)
    before = snapshot(tmp_path)
    code, _, err = sae_cli(case.argv.format(**fill).split(), capsys)
    after = snapshot(tmp_path)

    assert code == case.code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][7:].strip(), err
    for part in case.names:
        assert part.format(**fill) in lines[0], (part.format(**fill), lines[0])
    for part in case.absent:
        assert part not in lines[0], lines[0]
    # Every file that was there is still there, byte for byte.
    assert {k: after.get(k) for k in before} == before
    if case.code == 2:  # bad input: nothing was written at all
        assert after.keys() == before.keys()


@pytest.mark.parametrize(
    "name", ["toy-unknown-key", "sae-acts-nan", "toy-resume-corrupt-checkpoint"]
)
def test_debug_shows_the_traceback(
    name: str,
    base: Base,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = CASES[name]
    fill = _prepare(case, tmp_path, base)
    code, _, err = sae_cli(["--debug", *case.argv.format(**fill).split()], capsys)
    assert code == case.code
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("error: ")


# -- signals and resume --------------------------------------------------------------------------


# Run as `python -c PAUSE_AFTER_FIRST_CHECKPOINT sae-args...`: the CLI, except that after writing
# its first checkpoint the run prints "checkpoint saved" and waits until SIGINT or SIGTERM has
# reached the run's own handler, then goes on (and stops at the end of that chunk).
PAUSE_AFTER_FIRST_CHECKPOINT = """
import signal, sys, time
from sae.run.guards import AtomicCheckpointIO
save, state = AtomicCheckpointIO.save_checkpoint, {"paused": False, "signalled": False}

def save_then_wait(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if state["paused"]:
        return
    state["paused"] = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        def noted(signum, frame, handler=handler):
            state["signalled"] = True
            handler(signum, frame)
        signal.signal(sig, noted)
    print("checkpoint saved", flush=True)
    while not state["signalled"]:
        time.sleep(0.01)

AtomicCheckpointIO.save_checkpoint = save_then_wait
from cli.main import main
main(sys.argv[1:])
"""


def _spawn(
    argv: list[Any], env: dict[str, str] | None = None, prelude: str | None = None
) -> subprocess.Popen[str]:
    entry = ["-c", prelude] if prelude is not None else ["-m", "cli.main"]
    return subprocess.Popen(
        [sys.executable, *entry, *map(str, argv)],
        cwd=REPO,
        env=env or {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SIGNAL_RUNS = {
    # command, config, final weights, signal. Toy runs checkpoint every 1000 steps (fixed).
    "sae-SIGINT": (
        ["train"],
        {**SAE, "train": {**SAE["train"], "steps": 1500, "checkpoint_every": 25}},
        "sae_0/sae_weights.safetensors",
        signal.SIGINT,
    ),
    "toy-SIGTERM": (
        ["toy", "train"],
        {**TOY, "train": {**TOY["train"], "steps": 2500, "log_every": 100}},
        "model.safetensors",
        signal.SIGTERM,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIGNAL_RUNS))
def test_signal_saves_a_checkpoint_and_resume_is_exact(
    name: str, base: Base, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, config, weights, sig = SIGNAL_RUNS[name]
    cfg = write_yaml(tmp_path / "config.yaml", config)
    source = ["--activations", base.acts] if command == ["train"] else []
    out, ref = tmp_path / "run", tmp_path / "reference"
    ckpt = out / "checkpoints" / "last.ckpt"

    # Event-driven, not timed: the run pauses after its first checkpoint until the signal comes
    # (PAUSE_AFTER_FIRST_CHECKPOINT), so however busy the machine, the signal lands mid-run.
    proc = _spawn(
        [*command, "--config", cfg, *source, "--out", out], prelude=PAUSE_AFTER_FIRST_CHECKPOINT
    )
    line = proc.stdout.readline()  # blocks until the run has checkpointed (or died)
    assert line.strip() == "checkpoint saved", line + proc.communicate(timeout=600)[1]
    assert ckpt.exists()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)

    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert "interrupted at step" in line and "--resume" in line and str(out) in line, line
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step < config["train"]["steps"]
    assert not (out / weights).exists()

    code, _, err = sae_cli([*command, "--resume", out], capsys)
    assert code == 0, err
    code, _, err = sae_cli([*command, "--config", cfg, *source, "--out", ref], capsys)
    assert code == 0, err

    resumed, reference = load_file(str(out / weights)), load_file(str(ref / weights))
    assert resumed.keys() == reference.keys()
    for key in reference:  # bit-identical, not merely close
        assert torch.equal(resumed[key], reference[key]), key


# -- NaN ---------------------------------------------------------------------------------------


def test_divergence_stops_with_the_last_good_checkpoint(
    base: Base, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts, out = tmp_path / "diverging.safetensors", tmp_path / "run"
    _diverging(acts)
    argv = ["train", "--config", base.sae_cfg, "--activations", acts, "--out", out]
    code, _, err = sae_cli([*argv, "--set", "train.steps=60"], capsys)

    assert code == 1
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: training diverged") and "step 30" in line, line
    ckpt = out / "checkpoints" / "last.ckpt"
    assert str(ckpt) in line
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 20  # the checkpoint before the blow-up (steps 21-27)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (out / "sae_0").exists() and not (out / "run.json").exists()


# -- wandb -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unreachable_wandb_goes_offline_with_one_warning(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "toy.yaml", {**TOY, "wandb": {"enabled": True}})
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens, and it is loopback only
    env = {
        **os.environ,
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
        "WANDB_BASE_URL": dead,
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "NO_PROXY": "",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_SILENT": "true",
    }
    env.pop("NETRC", None)
    out = tmp_path / "run"
    proc = _spawn(["toy", "train", "--config", cfg, "--out", out], env)
    _, err = proc.communicate(timeout=600)

    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if "wandb" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: wandb server unreachable"), err
    assert not error_lines(err) and "Traceback" not in err
    assert (out / "model.safetensors").exists()
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].glob("*.wandb")), list((out / "wandb").iterdir())


def test_wandb_reachability_probes_the_configured_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from sae.run.runtime import _wandb_reachable

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert _wandb_reachable(timeout_s=1.0)
    assert not _wandb_reachable(timeout_s=1.0)  # closed: refused at once
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:not-a-port")
    assert not _wandb_reachable(timeout_s=1.0)


# -- atomic writes -------------------------------------------------------------------------------


def test_atomic_path_keeps_the_original_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"loss": 0.5})
    original = target.read_bytes()

    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_text('{"loss": 0.')  # half a file
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left over

    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write("{")
        raise KeyboardInterrupt
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    write_json(target, {"loss": 0.25})  # and a write that succeeds replaces it whole
    assert json.loads(target.read_text()) == {"loss": 0.25}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
