"""``sae train`` from the command line: file and live toy sources, the shipped configs, wandb
offline logging read back from the run's own record file, and errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from synthetic import write_planted_file
from wandb_log import history_and_config

from cli.main import cli, run_cli
from sae.config import SAERunConfig
from sae.io import load_sae
from sae.run.config_io import load_config
from sae.run.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "sae"
QUIET = ["--set", "runtime.progress_bar=false", "--set", "wandb.enabled=false"]


def sae(*argv: str | Path) -> int:
    return run_cli(cli.main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def acts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("acts") / "acts.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=4096, p=0.1, seed=0)
    return path


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    """A briefly trained n=5, m=2 toy model with two instances."""
    out = tmp_path_factory.mktemp("toy") / "toy"
    code = sae(
        "toy", "train", "--out", out,
        "--set", "model.n_features=5", "--set", "model.n_hidden=2",
        "--set", "data.feature_probability=[0.05, 0.1]",
        "--set", "train.steps=200", "--set", "train.eval_samples=1024",
        "--set", "runtime.threads=1", "--set", "runtime.progress_bar=false",
        "--set", "wandb.enabled=false",
    )  # fmt: skip
    assert code == 0
    return out


def test_train_on_an_activation_file(acts, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = sae(
        "train", "--activations", acts, "--out", out,
        "--set", "sae.d_sae=24", "--set", "sweep.l1_coefficient=[0.1, 0.3, 1.0]",
        "--set", "train.steps=50", "--set", "train.batch_size=64", "--set", "train.log_every=10",
        *QUIET,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "wrote 3 SAE(s)" in capsys.readouterr().out
    saved = load_config(SAERunConfig, out / "config.yaml")
    assert saved.sweep.l1_coefficient == [0.1, 0.3, 1.0] and saved.train.steps == 50
    for k, lam in enumerate([0.1, 0.3, 1.0]):
        loaded = load_sae(out / f"sae_{k}")
        assert loaded.cfg["l1_coefficient"] == lam and loaded.cfg["instance"] == k
        # kept relative to the SAE's folder (the run is portable), and where it was
        source = loaded.cfg["source"]
        assert (out / f"sae_{k}" / source["activations"]).resolve() == acts.resolve()
        assert source["activations_absolute"] == os.path.abspath(acts)
        assert loaded.batched().W_enc.shape == (1, 8, 24)
    assert [r["step"] for r in read_metrics(out)] == [9, 19, 29, 39, 49]
    # The folder now holds a run: training into it again is refused without --overwrite.
    assert sae("train", "--activations", acts, "--out", out, *QUIET) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_train_on_a_live_toy_model(toy_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = sae(
        "train", "--toy", toy_dir, "--instance", "1", "--out", out,
        "--set", "sae.d_sae=5", "--set", "sweep.seed=[0, 1]",
        "--set", "train.steps=40", "--set", "train.batch_size=256", "--set", "train.log_every=10",
        *QUIET,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for k in range(2):
        cfg = load_sae(out / f"sae_{k}").cfg
        assert (out / f"sae_{k}" / cfg["source"]["toy_dir"]).resolve() == toy_dir.resolve()
        assert cfg["source"]["toy_instance"] == 1
        assert cfg["d_in"] == 2 and cfg["seed"] == k
    record = read_metrics(out)[-1]
    assert math.isfinite(record["loss/instance_1"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--instance", "0"], "exactly one activation source"),
        (["--toy", "TOY", "--instance", "7"], "out of range"),
        (["--toy", "TOY", "--activations", "ACTS"], "exactly one activation source"),
        (["--activations", "ACTS", "--set", "sae.d_sea=4"], "did you mean 'sae.d_sae'"),
        (["--activations", "ACTS", "--set", "sweep.lr=[1e-3, 1e-3, 1e-3]",
          "--set", "sweep.seed=[0, 1]"], "same length"),
    ],
)  # fmt: skip
def test_bad_input_is_one_error_line(toy_dir, acts, tmp_path, capsys, argv, message) -> None:
    argv = [{"TOY": str(toy_dir), "ACTS": str(acts)}.get(a, a) for a in argv]
    code = sae("train", "--out", tmp_path / "run", *argv, *QUIET)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


# -- the shipped configs ------------------------------------------------------------------


def test_shipped_configs_load_as_documented() -> None:
    pentagon = load_config(SAERunConfig, CONFIGS / "pentagon.yaml")
    assert pentagon.sae.d_sae == 5 and pentagon.resample.method == "anthropic"
    assert pentagon.sweep.n_instances >= 8 and len(set(pentagon.sweep.expanded()[2])) >= 8
    sweep = load_config(SAERunConfig, CONFIGS / "lambda_sweep.yaml")
    assert sweep.sweep.n_instances == 8 and len(set(sweep.sweep.l1_coefficient)) == 8
    default = load_config(SAERunConfig, CONFIGS / "default.yaml")
    for config in (pentagon, sweep, default):
        assert config.runtime.threads is not None


@pytest.mark.parametrize("name", ["default.yaml", "lambda_sweep.yaml"])
def test_shipped_configs_train_on_a_file(acts, tmp_path, capsys, name) -> None:
    out = tmp_path / "run"
    code = sae(
        "train", "--config", CONFIGS / name, "--activations", acts, "--out", out,
        "--set", "train.steps=20", "--set", "train.batch_size=64", *QUIET,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    n = load_config(SAERunConfig, CONFIGS / name).sweep.n_instances
    assert sorted(p.name for p in out.glob("sae_*")) == sorted(f"sae_{k}" for k in range(n))


def test_pentagon_config_trains_on_the_live_toy_model(toy_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = sae(
        "train", "--config", CONFIGS / "pentagon.yaml", "--toy", toy_dir, "--instance", "0",
        "--out", out, "--set", "train.steps=30", *QUIET,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert load_sae(out / "sae_0").batched().W_dec.shape == (1, 5, 2)


# -- wandb --------------------------------------------------------------------------------


def test_wandb_offline_run_holds_the_logged_metrics(acts, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = sae(
        "train", "--activations", acts, "--out", out,
        "--set", "sae.d_sae=16", "--set", "sweep.l1_coefficient=[0.1, 0.5]",
        "--set", "train.steps=40", "--set", "train.batch_size=64", "--set", "train.log_every=10",
        "--set", "train.l1_warmup_steps=0",  # the logged λ is the full λ from the first log
        "--set", "runtime.progress_bar=false",
        "--set", "wandb.enabled=true", "--set", "wandb.mode=offline",
        "--set", "wandb.project=sae-tests",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (run_folder,) = (out / "wandb").glob("offline-run-*")
    history, config, project = history_and_config(run_folder)
    assert project == "sae-tests"
    # wandb names each instance by the sweep value that differs (metrics.jsonl keeps the index)
    names = ["l1=0.1", "l1=0.5"]
    scalar_rows = [r for r in history if "loss/l1=0.1" in r]
    assert [int(r["trainer/global_step"]) for r in scalar_rows] == [9, 19, 29, 39]
    for row in scalar_rows:
        for key in ("loss", "reconstruction", "l0", "explained_variance", "dead_fraction"):
            for name in names:
                assert math.isfinite(row[f"{key}/{name}"]), key
        assert row["l1_coefficient/l1=0.5"] == pytest.approx(0.5)
        assert not any("instance_" in key for key in row)
    # The same numbers went to metrics.jsonl.
    local = read_metrics(out)
    assert [r["loss/instance_1"] for r in local] == pytest.approx(
        [r["loss/l1=0.5"] for r in scalar_rows], rel=1e-6
    )
    # Firing-frequency histograms and the run config were logged too.
    assert any("firing_frequency/l1=0.1/_type" in r for r in history)
    assert config["sweep"]["l1_coefficient"] == [0.1, 0.5]
    assert "config" not in config  # logged once (not again as Lightning's hyperparameters)
    assert torch.isfinite(load_sae(out / "sae_0").W_dec).all()
