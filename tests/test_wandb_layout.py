"""How runs appear in wandb: instance names, groups and job types, scores, sweeps, artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from synthetic import write_planted_file
from wandb_log import artifacts, history_and_config, run_identity

from cli.main import cli, run_cli
from cli.sweep_args import sweep_args_to_sets
from sae.run.errors import UsageError
from sae.run.instance_names import instance_labels, name_instances
from toymodels.config import ToyConfig
from toymodels.lightning_module import toy_instance_labels

REPO = Path(__file__).resolve().parents[1]


def test_instances_are_named_by_the_sweep_values_that_differ():
    assert instance_labels({"l1": [0.1, 0.5], "lr": [1e-3, 1e-3], "seed": [0, 0]}) == [
        "l1=0.1",
        "l1=0.5",
    ]
    assert instance_labels({"l1": [0.3, 0.3], "lr": [1e-3, 1e-2], "seed": [0, 1]}) == [
        "lr=0.001,seed=0",
        "lr=0.01,seed=1",
    ]
    # identical instances: the index too; one instance: bare metric names (a sweep's runs agree)
    assert instance_labels({"l1": [0.3, 0.3]}) == ["l1=0.3,instance=0", "l1=0.3,instance=1"]
    assert instance_labels({"l1": [0.3], "lr": [1e-3], "seed": [0]}) == [""]
    assert name_instances({"loss/instance_0": 1.0, "train/loss": 2.0}, [""]) == {
        "loss": 1.0,
        "train/loss": 2.0,
    }


def test_instance_keys_are_renamed_and_others_kept():
    record = {"step": 9, "loss/instance_1": 1.0, "train/loss": 2.0, "final/l0/instance_0": 3}
    assert name_instances(record, ["l1=0.1", "l1=0.5"]) == {
        "step": 9,
        "loss/l1=0.5": 1.0,
        "train/loss": 2.0,
        "final/l0/l1=0.1": 3,
    }
    assert name_instances(record, None) == record


def test_toy_instances_follow_the_data_order():
    config = ToyConfig()
    config.data.feature_probability = [0.1, 0.01]
    config.data.repeats = 2
    assert toy_instance_labels(config) == [
        "p=0.1,repeat=0",
        "p=0.1,repeat=1",
        "p=0.01,repeat=0",
        "p=0.01,repeat=1",
    ]
    assert toy_instance_labels(config, restarts=2)[:3] == [
        "p=0.1,repeat=0,restart=0",
        "p=0.1,repeat=0,restart=1",
        "p=0.1,repeat=1,restart=0",
    ]


PIPELINE_SETS = [
    "toy.model.n_features=5", "toy.model.n_hidden=2", "toy.train.steps=30",
    "toy.train.batch_size=64", "toy.train.eval_samples=256", "toy.train.log_every=10",
    "export.samples=2000",
    "sae.sae.d_sae=8", "sae.sweep.l1_coefficient=[0.1, 0.5]", "sae.train.steps=30",
    "sae.train.batch_size=64", "sae.train.log_every=10", "sae.resample.method=none",
]  # fmt: skip


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.mark.slow
def test_one_sae_run_is_one_wandb_group_and_eval_has_its_own_run(tmp_path, capsys):
    out = tmp_path / "pipe"
    stage = [f"{s}.{k}" for s in ("toy", "sae") for k in
             ("runtime.progress_bar=false", "runtime.threads=1", "wandb.mode=offline",
              "wandb.project=sae-tests")]  # fmt: skip
    code = run_cli(cli.main, ["run", "--out", str(out), *_sets(*PIPELINE_SETS, *stage)])
    assert code == 0, capsys.readouterr().err
    (toy,) = (out / "toy" / "wandb").glob("offline-run-*")
    runs = [run_identity(f) for f in (out / "sae" / "wandb").glob("offline-run-*")]
    by_job = {r["job_type"]: r for r in [run_identity(toy), *runs]}
    assert sorted(by_job) == ["eval", "sae", "toy"] and len(runs) == 2
    groups = {r["group"] for r in by_job.values()}
    assert len(groups) == 1 and groups.pop().startswith("pipe-")
    assert len({r["id"] for r in by_job.values()}) == 3
    assert all(r["runs"] == "1" for r in by_job.values())  # nothing resumed
    # the scores went to the eval run, named like the training instances
    (eval_folder,) = [
        f for f in (out / "sae" / "wandb").glob("offline-run-*")
        if run_identity(f)["job_type"] == "eval"
    ]  # fmt: skip
    history, config, _ = history_and_config(eval_folder)
    keys = {k for row in history for k in row}
    assert "eval/l1=0.5/represented/mcc" in keys and "eval/l1=0.1/explained_variance" in keys
    assert config["saes"] == {"l1=0.1": "sae_0", "l1=0.5": "sae_1"}
    assert config["train_run"] == by_job["sae"]["id"]
    # the group is saved with the run's config, so --resume keeps it
    saved = yaml.safe_load((out / "config.yaml").read_text())
    group = by_job["toy"]["group"]
    assert saved["toy"]["wandb"]["group"] == saved["sae"]["wandb"]["group"] == group


# -- wandb's sweep agent ---------------------------------------------------------------------


def agent_command(sweep_file: Path, parameters: dict[str, object]) -> list[str]:
    """The command wandb's agent runs for one set of parameter values: its own functions
    (wandb.sdk.launch.sweeps.utils) and its macro expansion (wandb_agent.Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    spec = yaml.safe_load(sweep_file.read_text())
    command = sweep_utils.create_sweep_command(spec["command"])
    sweep_vars = sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in parameters.items()}}
    )
    sweep_vars |= {"interpreter": ["python"], "program": [spec["program"]]}
    sweep_vars["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for c in map(str, command):
        out += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return out


def test_agent_arguments_become_sets(monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "abc")
    argv = ["train", "--set", "a.b=1", "--out", "runs/{wandb_run_id}", "--sweep.lr=0.01"]
    assert sweep_args_to_sets([*argv, "sweep.seed=3"]) == [
        "train", "--set", "a.b=1", "--out", "runs/abc",
        "--set", "sweep.lr=0.01", "--set", "sweep.seed=3",
    ]  # fmt: skip
    assert sweep_args_to_sets(["train", "--out", "x=y", "--", "sweep.a=1"]) == [
        "train", "--out", "x=y", "--", "sweep.a=1",
    ]  # fmt: skip
    monkeypatch.delenv("WANDB_RUN_ID")
    with pytest.raises(UsageError, match="sweep agent"):
        sweep_args_to_sets(["--out", "runs/{wandb_run_id}"])


@pytest.mark.slow
def test_the_example_sweep_runs_sae_train_as_the_agent_calls_it(tmp_path):
    sweep_file = REPO / "configs" / "sweeps" / "l1_sweep.yaml"
    (tmp_path / "configs" / "sae").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "sae" / "lambda_sweep.yaml", tmp_path / "configs" / "sae")
    write_planted_file(tmp_path / "acts.safetensors", n_features=8, d=4, n_rows=1024, p=0.1)
    # the sweep's own parameters, plus fixed ones a user would add as `value:` parameters
    parameters = {
        "sweep.l1_coefficient": 0.3, "sweep.lr": 0.003, "train.steps": 30,
        "train.batch_size": 32, "train.log_every": 10, "sae.d_sae": 8,
        "resample.method": "none", "runtime.progress_bar": False,
    }  # fmt: skip
    command = agent_command(sweep_file, parameters)
    assert command[:3] == ["/usr/bin/env", "sae", "train"]
    assert "--sweep.l1_coefficient=0.3" in command
    # the agent's environment, without this test process's own wandb-core service
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "WANDB_RUN_ID": "agentrun1",
        "WANDB_SWEEP_ID": "sweep42",
        "WANDB_PROJECT": "sweep-project",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "l1_sweep" / "agentrun1"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["sweep"]["l1_coefficient"] == [0.3] and config["sweep"]["lr"] == [0.003]
    assert config["train"]["steps"] == 30 and config["sae"]["d_sae"] == 8
    (folder,) = (run / "wandb").glob("offline-run-*")
    identity = run_identity(folder)
    assert identity["id"] == "agentrun1" and identity["job_type"] == "sae"
    history, _, project = history_and_config(folder)
    assert project == "sweep-project"
    rows = [r for r in history if "loss" in r]  # one SAE: bare metric names
    assert len(rows) == 3 and all("l0" in r and "explained_variance" in r for r in rows)


# -- artifacts -------------------------------------------------------------------------------


@pytest.mark.slow
def test_model_files_become_artifacts_when_asked(tmp_path, capsys):
    acts = tmp_path / "acts.safetensors"
    write_planted_file(acts, n_features=8, d=4, n_rows=1024, p=0.1)
    common = [
        "train.batch_size=32", "train.log_every=10", "runtime.progress_bar=false",
        "runtime.threads=1", "wandb.mode=offline",
    ]  # fmt: skip
    sae_sets = _sets(*common, "sae.d_sae=8", "sweep.l1_coefficient=[0.1, 0.5]", "train.steps=20")
    off = tmp_path / "off"
    assert (
        run_cli(cli.main, ["train", "--activations", str(acts), "--out", str(off), *sae_sets]) == 0
    )
    (folder,) = (off / "wandb").glob("offline-run-*")
    assert artifacts(folder) == []  # off by default

    out = tmp_path / "sae"
    argv = ["train", "--activations", str(acts), "--out", str(out), *sae_sets]
    assert run_cli(cli.main, [*argv, "--set", "wandb.log_artifacts=true"]) == 0, (
        capsys.readouterr().err
    )
    (folder,) = (out / "wandb").glob("offline-run-*")
    run_id = run_identity(folder)["id"]
    logged = {a["name"]: a for a in artifacts(folder)}
    assert sorted(logged) == [f"{run_id}-activations", f"{run_id}-sae_0", f"{run_id}-sae_1"]
    sae_1 = logged[f"{run_id}-sae_1"]
    assert sae_1["type"] == "sae"
    assert sae_1["paths"] == ["sae_1/cfg.json", "sae_1/sae_weights.safetensors"]
    data = logged[f"{run_id}-activations"]
    assert data["type"] == "dataset" and data["paths"] == ["acts.safetensors"]
    assert data["metadata"]["format"] == "sae-toolkit/activations"
    assert data["metadata"]["tensors"]["activations"] == [1024, 4]
    assert data["refs"] == [acts.resolve().as_uri()]

    toy = tmp_path / "toy"
    toy_sets = _sets(
        *common, "model.n_features=5", "model.n_hidden=2", "train.steps=20",
        "train.eval_samples=256", "wandb.log_artifacts=true",
    )  # fmt: skip
    assert run_cli(cli.main, ["toy", "train", "--out", str(toy), *toy_sets]) == 0
    (folder,) = (toy / "wandb").glob("offline-run-*")
    (model,) = artifacts(folder)
    assert model["type"] == "model" and model["name"].endswith("-toy_model")
    assert model["paths"] == ["config.yaml", "metrics.json", "model.safetensors"]
