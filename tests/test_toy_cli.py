"""``sae toy train`` and ``sae toy export`` end to end, in-process: the run folder, bit-identical
reruns from the saved config, the activation file and its ground truth, one-line usage errors,
and the offline wandb run with its logged history."""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_runs import sae_cli, write_yaml
from safetensors import safe_open
from safetensors.torch import load_file
from wandb_log import history_and_config

from cli.main import cli, run_cli
from sae.activations import ActivationFile
from sae.run.config_io import load_config
from sae.run.runtime import RUN_ID_ENV
from toymodels.config import ToyConfig
from toymodels.lightning_module import ToyModelModule

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = {
    "model": {"kind": "relu_output", "n_features": 5, "n_hidden": 2},
    "data": {"feature_probability": [1.0, 0.1], "importance_decay": 0.9},
    "optim": {"lr": 0.01},
    "train": {
        "steps": 200,
        "batch_size": 256,
        "seed": 3,
        "eval_samples": 4096,
        "log_every": 50,
    },
    "runtime": {"threads": 1, "progress_bar": False},
    "wandb": {"enabled": False},
}
RECORD_KEYS = {
    "loss",
    "feature_probability",
    "n_represented",
    "dims_per_feature",
    "feature_dimensionality",
    "feature_norms",
    "interference",
}


def sae(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    return sae_cli(list(args), capsys)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny run shared by the tests that only read it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("toy_cli")
    config = write_yaml(root / "tiny.yaml", TINY)
    out = root / "run"
    code = run_cli(cli.main, ["toy", "train", "--config", str(config), "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_the_run_folder(tiny_run: Path) -> None:
    for name in ("config.yaml", "model.safetensors", "metrics.json"):
        assert (tiny_run / name).is_file(), name
    config = load_config(ToyConfig, tiny_run / "config.yaml")
    assert config.model.n_features == 5 and config.data.feature_probability == [1.0, 0.1]
    assert config.train.steps == 200 and config.train.seed == 3

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["kind"] == "relu_output"
    records = metrics["instances"]
    assert [r["instance"] for r in records] == [0, 1]
    assert [r["feature_probability"] for r in records] == [1.0, 0.1]
    for r in records:
        assert set(r) >= RECORD_KEYS, RECORD_KEYS - set(r)
        for key in ("feature_dimensionality", "feature_norms", "interference"):
            assert len(r[key]) == 5 and all(math.isfinite(v) for v in r[key])
        norms = torch.tensor(r["feature_norms"])
        assert r["n_represented"] == sum(r["represented"])
        assert r["dims_per_feature"] == pytest.approx(2 / float(norms.square().sum()), rel=1e-5)
        assert 0 < r["loss"] < 0.2
    # Trained: the dense instance represents ~2 features, the sparse one more.
    assert records[0]["n_represented"] == 2
    assert records[1]["n_represented"] > 2

    weights = load_file(str(tiny_run / "model.safetensors"))
    assert weights["W"].shape == (2, 5, 2) and weights["b"].shape == (2, 5)
    assert torch.equal(weights["feature_probability"][:, 0], torch.tensor([1.0, 0.1]))
    torch.testing.assert_close(
        torch.tensor([r["feature_norms"] for r in records]), weights["W"].norm(dim=-1)
    )
    # "represented": a lone x_i = 1 moves output i by ReLU(‖W_i‖² + b_i) − ReLU(b_i) > 0.5.
    b = weights["b"]
    response = torch.relu(weights["W"].square().sum(-1) + b) - torch.relu(b)
    assert [r["represented"] for r in records] == (response > 0.5).tolist()

    pngs = sorted((tiny_run / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"wtw.png", "feature_norms.png", "geometry.png", "dimensionality.png"} <= names
    assert {"adversarial.png"} <= names and len(names) == 5  # grids, not one file per instance
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000, png


def test_saved_config_reproduces_the_weights(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = tmp_path / "again"
    code, out, err = sae(
        capsys, "toy", "train", "--config", tiny_run / "config.yaml", "--out", again
    )
    assert code == 0, err
    assert "instance 1: 1-S=0.1" in out
    first = load_file(str(tiny_run / "model.safetensors"))
    second = load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    m1 = json.loads((tiny_run / "metrics.json").read_text())
    m2 = json.loads((again / "metrics.json").read_text())
    assert m1["instances"] == m2["instances"]
    # A different seed gives different weights (the seed is really used).
    other = tmp_path / "other"
    code, _, err = sae(
        capsys,
        "toy",
        "train",
        "--config",
        tiny_run / "config.yaml",
        "--set",
        "train.seed=4",
        "--set",
        "train.steps=5",
        "--out",
        other,
    )
    assert code == 0, err
    assert not torch.equal(load_file(str(other / "model.safetensors"))["W"], first["W"])


def test_refuses_to_overwrite_a_run(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = sae(
        capsys, "toy", "train", "--config", tiny_run / "config.yaml", "--out", tiny_run
    )
    assert code == 2
    assert err.startswith("error: ") and "--overwrite" in err


@pytest.mark.parametrize("instance", [0, 1])
def test_export_activations_with_ground_truth(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], instance: int
) -> None:
    out = tmp_path / "acts.safetensors"
    n = 3000
    args = ["toy", "export", tiny_run, "--instance", instance, "--samples", n, "--out", out]
    code, stdout, err = sae(capsys, *args)
    assert code == 0, err
    assert str(out) in stdout
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert set(t) == {
        "activations",
        "ground_truth",
        "feature_probability",
        "represented",
        "feature_acts",
    }
    assert t["activations"].shape == (n, 2) and t["activations"].dtype == torch.float32
    assert t["ground_truth"].shape == (5, 2)
    assert t["feature_acts"].shape == (n, 5)
    assert t["represented"].dtype == torch.uint8
    p = [1.0, 0.1][instance]
    assert torch.equal(t["feature_probability"], torch.full((5,), p))

    W = load_file(str(tiny_run / "model.safetensors"))["W"][instance]
    assert torch.equal(t["ground_truth"], W)
    metrics = json.loads((tiny_run / "metrics.json").read_text())["instances"][instance]
    assert t["represented"].tolist() == [int(v > 0.5) for v in metrics["feature_norms"]]
    # relu_output: h = Wx, so every activation is the true codes times the ground truth.
    torch.testing.assert_close(
        t["activations"], t["feature_acts"] @ t["ground_truth"], rtol=1e-5, atol=1e-6
    )
    # The codes follow the instance's distribution.
    acts = t["feature_acts"]
    assert acts.min() >= 0 and acts.max() <= 1
    frac = float((acts != 0).double().mean())
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / acts.numel()) + 1e-9

    assert meta["format"] == "sae-toolkit/activations"
    info = json.loads(meta["info"])
    assert info["instance"] == instance and info["model_kind"] == "relu_output"
    assert info["samples"] == n and info["feature_names"] == ["0", "1", "2", "3", "4"]
    assert info["config"]["model"]["n_features"] == 5

    # The file satisfies the activation-file contract reader.
    read = ActivationFile(out)
    assert (read.n_rows, read.d) == (n, 2) and read.has_ground_truth and read.has_feature_acts


def test_export_is_seeded_and_can_drop_codes(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def export(name: str, *extra: Any) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        code, _, err = sae(
            capsys,
            "toy",
            "export",
            tiny_run,
            "--instance",
            1,
            "--samples",
            500,
            "--out",
            out,
            *extra,
        )
        assert code == 0, err
        return load_file(str(out))

    a, b, c = export("a.st", "--seed", 5), export("b.st", "--seed", 5), export("c.st", "--seed", 6)
    assert torch.equal(a["activations"], b["activations"])
    assert not torch.equal(a["activations"], c["activations"])
    slim = export("slim.st", "--seed", 5, "--no-feature-acts")
    assert "feature_acts" not in slim
    assert torch.equal(slim["activations"], a["activations"])


def test_export_rejects_a_missing_instance(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.safetensors"
    code, _, err = sae(capsys, "toy", "export", tiny_run, "--instance", 2, "--out", out)
    assert code == 2
    assert err.startswith("error: ") and "0..1" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = sae(capsys, "toy", "export", tmp_path / "nothing", "--out", out)
    assert code == 2 and "sae toy train" in err


# -- usage errors ----------------------------------------------------------------------------


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_unknown_key_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_yaml(tmp_path / "c.yaml", TINY)
    out = tmp_path / "run"
    code, _, err = sae(
        capsys, "toy", "train", "--config", config, "--set", "model.n_hiden=3", "--out", out
    )
    assert code == 2
    line = one_line_error(err)
    assert "model.n_hiden" in line and "did you mean 'model.n_hidden'" in line
    assert not out.exists()

    bad = dict(TINY, train={**TINY["train"], "stpes": 10})
    code, _, err = sae(
        capsys, "toy", "train", "--config", write_yaml(tmp_path / "b.yaml", bad), "--out", out
    )
    assert code == 2
    assert "did you mean 'train.steps'" in one_line_error(err)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.steps=abc", "integer"),
        ("train.steps=1.5", "integer"),
        ("data.feature_probability={a: 1}", "list"),  # a single number is a list of one
        ("model.kind=cubic", "one of"),
        ("wandb.enabled=maybe", "true or false"),
        ("data.feature_probability=[0.0]", "(0, 1]"),
    ],
)
def test_wrong_type_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, words: str
) -> None:
    config = write_yaml(tmp_path / "c.yaml", TINY)
    code, _, err = sae(
        capsys, "toy", "train", "--config", config, "--set", override, "--out", tmp_path / "r"
    )
    assert code == 2
    line = one_line_error(err)
    assert words in line and override.split("=")[0] in line


# -- wandb -----------------------------------------------------------------------------------


def replay_losses(config: ToyConfig, steps: list[int]) -> dict[int, torch.Tensor]:
    """Per-instance training loss at each step in ``steps``, by re-running the optimisation
    outside Lightning (same module, same data stream, same optimizer and schedule)."""
    module = ToyModelModule(config)
    opt_config = module.configure_optimizers()
    opt, schedule = opt_config["optimizer"], opt_config["lr_scheduler"]["scheduler"]
    losses = {}
    for step in range(max(steps) + 1):
        per_instance = module.per_instance_loss(module.draw_batch(step))
        if step in steps:
            losses[step] = per_instance.detach().clone()
        opt.zero_grad()
        per_instance.sum().backward()
        opt.step()
        schedule.step()
    return losses


def test_wandb_offline_run_holds_the_logged_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    # A fresh run id for this run only (the id is shared through the environment).
    monkeypatch.setenv(RUN_ID_ENV, f"toyclitest{secrets.token_hex(4)}")
    data = dict(TINY, wandb={"enabled": True, "project": "toy-test"})
    data["train"] = {**TINY["train"], "steps": 30, "log_every": 10}
    config_path = write_yaml(tmp_path / "w.yaml", data)
    out = tmp_path / "run"
    code, _, err = sae(capsys, "toy", "train", "--config", config_path, "--out", out)
    assert code == 0, err
    (run_folder,) = (out / "wandb").glob("offline-run-*")
    history, logged_config, _ = history_and_config(run_folder)
    # The run config, logged once (from wandb.init; not again as Lightning's hyperparameters).
    assert logged_config["model"]["n_features"] == 5
    assert logged_config["train"]["log_every"] == 10
    assert "config" not in logged_config

    # wandb names each instance by its feature probability (metrics.jsonl keeps the index)
    train_rows = [h for h in history if "train/loss" in h]
    # Logged every 10 steps, stamped with the step whose loss it is.
    assert [h["trainer/global_step"] for h in train_rows] == [9, 19, 29]
    for h in train_rows:
        for key in ("loss/p=1", "loss/p=0.1", "n_represented/p=0.1"):
            assert key in h, (key, sorted(h))
        assert h["train/loss"] == pytest.approx(h["loss/p=1"] + h["loss/p=0.1"])
    replay = replay_losses(load_config(ToyConfig, out / "config.yaml"), [9, 19, 29])
    for h in train_rows:
        expected = replay[h["trainer/global_step"]]
        logged = [h["loss/p=1"], h["loss/p=0.1"]]
        assert logged == pytest.approx(expected.tolist(), rel=1e-5)

    final = [h for h in history if "final/loss/p=1" in h]
    assert len(final) == 1
    metrics = json.loads((out / "metrics.json").read_text())["instances"]
    assert final[0]["final/loss/p=0.1"] == pytest.approx(metrics[1]["loss"])
    assert final[0]["final/n_represented/p=1"] == metrics[0]["n_represented"]
    assert any(key.startswith("plots/wtw") for key in final[0])
