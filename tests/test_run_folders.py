"""Run folders keep what is not theirs and travel: ``--overwrite`` removes only a run's own
files, ``--resume`` keeps the history in ``metrics.jsonl``, and a run folder scores from any
working directory after it was moved.

Commands run in this process (``run_cli``, as ``python -m cli.main`` does). An interrupted run
is made without timing: a callback sends the process SIGINT at a fixed step, which the run's
own signal handler turns into a checkpoint and a stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_runs import SAE as ONE_SAE
from cli_runs import TOY, sae_cli, snapshot, write_yaml

from cli.main import cli, run_cli
from sae.run.metrics_log import MetricsFile, read_metrics

SAE = {**ONE_SAE, "sweep": {"l1_coefficient": [0.1, 0.3]}}
PIPELINE = {"toy": TOY, "export": {"samples": 2000}, "sae": SAE}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real ``sae run``: a toy run, an activation file and an SAE run of two SAEs."""
    root = tmp_path_factory.mktemp("pipe")
    cfg = write_yaml(root / "pipeline.yaml", PIPELINE)
    torch.set_num_threads(1)
    assert run_cli(cli.main, ["run", "--config", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run"


def _commands(pipe: Path, tmp: Path) -> dict[str, list[Any]]:
    return {
        "toy": ["toy", "train", "--config", write_yaml(tmp / "toy.yaml", TOY)],
        "sae": [
            "train",
            "--config",
            write_yaml(tmp / "sae.yaml", SAE),
            "--activations",
            pipe / "activations.safetensors",
        ],
        "pipe": ["run", "--config", write_yaml(tmp / "pipe.yaml", PIPELINE)],
    }


def _seed(kind: str, pipe: Path, out: Path) -> None:
    source = {"toy": pipe / "toy", "sae": pipe / "sae", "pipe": pipe}[kind]
    shutil.copytree(source, out, dirs_exist_ok=True)


# -- --overwrite ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("toy", "top"),
        ("sae", "top"),
        ("pipe", "top"),
        ("sae", "inside_sae_folder"),
        ("pipe", "inside_sae_folder"),
        ("pipe", "inside_stage"),
    ],
)
def test_overwrite_refuses_a_folder_holding_other_files(
    kind: str, where: str, pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exp"
    _seed(kind, pipe, out)
    sae_folder = {"toy": None, "sae": out / "sae_0", "pipe": out / "sae" / "sae_0"}[kind]
    draft = {
        "top": out / "paper_draft.md",
        "inside_sae_folder": (sae_folder or out) / "notes.txt",
        "inside_stage": out / "toy" / "notes.txt",
    }[where]
    draft.write_text("three weeks of writing\n")
    argv = [*_commands(pipe, tmp_path)[kind], "--out", out, "--overwrite"]
    before = snapshot(tmp_path)
    code, _, err = sae_cli(argv, capsys)

    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith("error: ") and str(draft) in line, line
    assert snapshot(tmp_path) == before  # nothing removed, nothing written


def test_overwrite_of_the_working_directory_keeps_the_users_files(
    pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    _seed("toy", pipe, work)
    (work / "analysis.py").write_text("print('mine')\n")
    argv = _commands(pipe, tmp_path)["toy"]
    monkeypatch.chdir(work)
    before = snapshot(work)
    code, _, err = sae_cli([*argv, "--out", ".", "--overwrite"], capsys)
    assert code == 2 and "analysis.py" in err and len(err.splitlines()) == 1, err
    assert snapshot(work) == before


@pytest.mark.parametrize("kind", ["toy", "sae", "pipe"])
def test_overwrite_replaces_a_run_holding_only_its_own_files(
    kind: str, pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exp"
    _seed(kind, pipe, out)
    stale = {"toy": out / "plots" / "old.png", "sae": out / "sae_7", "pipe": out / "sae" / "sae_7"}
    stale[kind].mkdir(parents=True) if kind != "toy" else stale[kind].write_bytes(b"png")
    if kind != "toy":
        (stale[kind] / "cfg.json").write_text("{}")
    argv = [*_commands(pipe, tmp_path)[kind], "--out", out, "--overwrite"]
    code, _, err = sae_cli(argv, capsys)
    assert code == 0, err
    assert not stale[kind].exists()  # the old run's outputs went
    assert (out / "config.yaml").exists()


def test_overwrite_never_deletes_an_input_of_the_command(
    pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sae train --toy exp --out exp --overwrite`` would delete the toy model it trains on."""
    out = tmp_path / "exp"
    _seed("toy", pipe, out)
    sae_yaml = write_yaml(tmp_path / "sae.yaml", SAE)
    argv = ["train", "--config", sae_yaml, "--toy", out, "--out", out, "--overwrite"]
    before = snapshot(tmp_path)
    code, _, err = sae_cli(argv, capsys)
    assert code == 2 and "input" in err and len(err.splitlines()) == 1, err
    assert snapshot(tmp_path) == before


# -- --resume ------------------------------------------------------------------------------------


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Send this process SIGINT after the first chunk that ends at or past ``step``; the run's
    own handler (StopOnSignal) then checkpoints and stops, as it does for a user's Ctrl-C."""
    original = MetricsFile.on_chunk_end
    sent: list[int] = []

    def on_chunk_end(self: Any, trainer: Any, module: Any, out: Any) -> None:
        original(self, trainer, module, out)
        if trainer.global_step >= step and not sent:
            sent.append(trainer.global_step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(MetricsFile, "on_chunk_end", on_chunk_end)


RESUMED = {
    "sae": (["train"], {**SAE, "train": {**SAE["train"], "steps": 60}}),
    "toy": (["toy", "train"], {**TOY, "train": {**TOY["train"], "steps": 60}}),
}


@pytest.mark.parametrize("kind", list(RESUMED))
def test_resume_keeps_the_history_of_metrics_jsonl(
    kind: str,
    pipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    command, config = RESUMED[kind]
    config = {**config, "runtime": {**config["runtime"], "steps_per_call": 5}}  # 5-step chunks
    cfg = write_yaml(tmp_path / "config.yaml", config)
    source = ["--activations", pipe / "activations.safetensors"] if kind == "sae" else []
    out, ref = tmp_path / "run", tmp_path / "reference"

    code, _, err = sae_cli([*command, "--config", cfg, *source, "--out", ref], capsys)
    assert code == 0, err
    with monkeypatch.context() as m:
        _interrupt_at(m, 30)
        code, _, err = sae_cli([*command, "--config", cfg, *source, "--out", out], capsys)
    assert code == 130 and "interrupted at step" in err, err
    cut = read_metrics(out)
    assert 0 < len(cut) < len(read_metrics(ref))

    code, _, err = sae_cli([*command, "--resume", out], capsys)
    assert code == 0, err
    resumed, reference = read_metrics(out), read_metrics(ref)
    assert [r["step"] for r in reference] == [9, 19, 29, 39, 49, 59]
    assert resumed == reference  # same steps, same values (records hold no timing field)
    assert resumed[: len(cut)] == cut


@pytest.mark.parametrize("kind", ["toy", "sae", "pipe"])
def test_resume_of_a_finished_run_says_so_and_changes_nothing(
    kind: str, pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exp"
    _seed(kind, pipe, out)
    command = {"toy": ["toy", "train"], "sae": ["train"], "pipe": ["run"]}[kind]
    before = snapshot(tmp_path)
    code, stdout, err = sae_cli([*command, "--resume", out], capsys)
    assert code == 0, err
    assert err.splitlines() == [f"{out} holds a finished run: nothing to resume, nothing changed"]
    assert stdout == ""
    assert snapshot(tmp_path) == before


# -- portable runs -------------------------------------------------------------------------------


def _scores(capsys: pytest.CaptureFixture[str], run: str | Path) -> dict[str, Any]:
    code, out, err = sae_cli(["eval", run, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_a_run_scores_from_any_directory_and_after_moving(
    pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(pipe / "activations.safetensors", project / "acts.safetensors")
    cfg = write_yaml(tmp_path / "sae.yaml", SAE)
    monkeypatch.chdir(project)  # paths as a user types them: relative to where they stand
    code, _, err = sae_cli(
        ["train", "--config", cfg, "--activations", "acts.safetensors", "--out", "runs/a"],
        capsys,
    )
    assert code == 0, err
    run = project / "runs" / "a"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    record = json.loads((run / "run.json").read_text())
    assert saved["data"]["activations"] == "../../acts.safetensors"  # relative to the run
    assert record["source"]["activations"] == "../../acts.safetensors"
    sae_cfg = json.loads((run / "sae_0" / "cfg.json").read_text())
    assert sae_cfg["source"]["activations"] == "../../../acts.safetensors"
    reference = _scores(capsys, "runs/a")

    monkeypatch.chdir(tmp_path)  # another working directory
    assert _scores(capsys, run) == reference
    lonely = tmp_path / "lonely" / "a"  # the run copied alone: its data stayed where it was
    shutil.copytree(run, lonely)
    assert _scores(capsys, lonely) == reference
    moved = tmp_path / "elsewhere" / "project"  # the project moved, data and run together
    shutil.move(project, moved)
    monkeypatch.chdir(moved / "runs" / "a")
    assert _scores(capsys, ".") == reference

    # Runs written before paths were kept relative: absolute paths, and paths relative to
    # the directory the run was started from (read from there), still score.
    config = moved / "runs" / "a" / "config.yaml"
    saved["data"]["activations"] = str(moved / "acts.safetensors")
    write_yaml(config, saved)
    monkeypatch.chdir(tmp_path)
    assert _scores(capsys, moved / "runs" / "a") == reference
    saved["data"]["activations"] = "acts.safetensors"
    write_yaml(config, saved)
    monkeypatch.chdir(moved)
    assert _scores(capsys, "runs/a") == reference


def test_an_interrupted_run_resumes_after_moving(
    pipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(pipe / "activations.safetensors", project / "acts.safetensors")
    config = {**SAE, "train": {**SAE["train"], "steps": 60}}
    config["runtime"] = {**config["runtime"], "steps_per_call": 5}
    cfg = write_yaml(tmp_path / "sae.yaml", config)
    monkeypatch.chdir(project)
    argv = ["train", "--config", cfg, "--activations", "acts.safetensors", "--out", "run"]
    with monkeypatch.context() as m:
        _interrupt_at(m, 30)
        code, _, err = sae_cli(argv, capsys)
    assert code == 130, err
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)
    code, _, err = sae_cli(["train", "--resume", moved / "run"], capsys)
    assert code == 0, err
    assert [r["step"] for r in read_metrics(moved / "run")] == [9, 19, 29, 39, 49, 59]
    saved = yaml.safe_load((moved / "run" / "config.yaml").read_text())
    assert saved["data"]["activations"] == "../acts.safetensors"
