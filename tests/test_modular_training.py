"""The modular-addition toy model end to end: a short full-batch run through the shared engine
learns the task, its key frequencies carry the embedding's power, unmixing keeps the logits; the
export writes the pure-frequency ground truth; the CLI runs it; the controls train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_runs import QUIET, sae_cli, write_yaml

from sae.activations import ActivationFile
from sae.metrics import score_dictionary
from sae.run.config_io import from_dict
from sae.run.errors import UsageError
from toymodels.modular.config import ModularConfig
from toymodels.modular.export import (
    export_modular,
    latent_frequency_purity,
    pair_inputs,
    pure_frequencies,
    unmixing_dictionary,
)
from toymodels.modular.io import load_modular
from toymodels.modular.lightning_module import ModularModule
from toymodels.modular.model import all_pairs, logits
from toymodels.modular.train import train_modular

SHORT: dict[str, Any] = {
    "model": {"p": 31, "d": 4, "m": 8},
    "optim": {"lr": 0.01},
    "train": {"steps": 1500, "seeds": [0, 1, 2], "log_every": 500, "checkpoint_every": 1500},
    **QUIET,
}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("modular")
    metrics = train_modular(from_dict(ModularConfig, SHORT), out)
    return out, metrics


@pytest.mark.slow
def test_short_run_learns_with_key_frequencies_dominating(short_run) -> None:
    out, metrics = short_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {p.name for p in (out / "plots").iterdir()} >= {
        "spectrum_instance0.png",
        "bilinear_instance2.png",
    }
    for r in metrics["instances"]:
        assert r["train_accuracy"] >= 0.95, r
        # a few frequencies (at most d) carry at least 90% of the embeddings' power
        assert 1 <= len(r["key_frequencies"]) <= 4
        assert r["key_power_share"] >= 0.9
        total = sum(r["power_per_frequency"])
        top = sorted(r["power_per_frequency"], reverse=True)[: len(r["key_frequencies"])]
        assert sum(top) / total == pytest.approx(r["key_power_share"])
        # AdamW with weight decay 1: the bilinear weights sit near ±c
        assert r["bilinear_pm_fraction"] >= 0.7 and 0.5 < r["c"] < 2.0
        assert r["unmix_involutory_error"] < 1e-9
        assert r["unmix_max_logit_change"] < 1e-4
        # unmixing never makes the power-weighted columns less pure, nor L and R denser
        assert r["unmixed_weighted_column_purity"] >= r["weighted_column_purity"] - 2e-3
        assert r["unmixed_L_zero_fraction"] >= r["L_zero_fraction"]


@pytest.mark.slow
def test_saved_weights_reproduce_the_trained_logits(short_run) -> None:
    out, metrics = short_run
    loaded = load_modular(out)
    a, b, y = all_pairs(31)
    acc = (logits(loaded.weights, a, b).argmax(-1) == y).float().mean(1)
    assert acc.tolist() == pytest.approx([r["accuracy"] for r in metrics["instances"]])


@pytest.mark.slow
def test_export_writes_pure_frequency_ground_truth(short_run, tmp_path: Path) -> None:
    out, metrics = short_run
    k = 1
    file = ActivationFile(export_modular(out, k, tmp_path / "acts.safetensors", seed=3))
    loaded = load_modular(out)
    w = loaded.weights.select(k)
    keys = metrics["instances"][k]["key_frequencies"]
    n_features = 2 * 2 * 2 * len(keys)  # (a, b) x (cos, sin) x (+, -) per key frequency
    assert file.n_rows == 31 * 31 and file.d == 8
    truth = file.tensor("ground_truth")
    assert truth.shape == (n_features, 8)
    assert torch.allclose(truth.norm(dim=1), torch.ones(n_features), atol=1e-5)
    assert file.info["feature_names"][:2] == [f"a:cos{keys[0]}+", f"a:cos{keys[0]}-"]
    # rows are every pair once, shuffled; codes ≥ 0 and rebuild x up to the Fourier fit
    x = file.rows(slice(None)).double()
    codes = file.feature_acts(slice(None)).double()
    assert codes.min() >= 0
    full = pair_inputs(w, 31).double()
    assert torch.allclose(x.sum(0), full.sum(0), atol=1e-2)
    pure = pure_frequencies(w, loaded.config)
    rebuilt = pure.mean + codes @ truth.double()
    residual = (x - rebuilt).square().sum() / (x - x.mean(0)).square().sum()
    assert float(residual) == pytest.approx(1 - pure.explained, abs=1e-4)
    # more rows than pairs would repeat training pairs into the held-out tail: refused
    with pytest.raises(UsageError, match="1..961"):
        export_modular(out, k, tmp_path / "more.safetensors", samples=31 * 31 + 1)
    assert not (tmp_path / "more.safetensors").exists()
    # the unmixing's columns are a dictionary scored like an SAE's decoder, and each of its
    # latents reads one frequency as purely as the unmixed columns are
    dictionary = unmixing_dictionary(w, loaded.config)
    scores = score_dictionary(truth, dictionary.float())
    assert 0.0 < scores["all/mcc"] <= 1.0
    purity = latent_frequency_purity(dictionary, w, keys)
    r = metrics["instances"][k]
    assert float(purity.min()) >= min(r["unmixed_column_purity"]) - 1e-6
    assert float(purity.mean()) == pytest.approx(
        (sum(r["unmixed_column_purity"]) / len(r["unmixed_column_purity"])), abs=1e-6
    )


@pytest.mark.slow
def test_cli_modular_then_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = {
        **SHORT,
        "model": {"p": 13, "d": 4, "m": 8},
        "train": {"steps": 40, "seeds": [0, 1], "log_every": 20, "checkpoint_every": 40},
    }
    config = write_yaml(tmp_path / "c.yaml", tiny)
    code, out, err = sae_cli(
        ["toy", "modular", "--config", config, "--out", tmp_path / "r"], capsys
    )
    assert code == 0, err
    assert out.count("seed ") == 2 and "wrote" in out
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2
    acts = tmp_path / "acts.safetensors"
    code, out, err = sae_cli(["toy", "export", tmp_path / "r", "--out", acts], capsys)
    assert code == 0, err
    assert ActivationFile(acts).n_rows == 13 * 13
    code, out, err = sae_cli(["toy", "modular-purity", tmp_path / "r", "--instance", 1], capsys)
    assert code == 0, err
    assert "L1 of codes per pair: pure_basis" in out and "unmixing: latent purity mean" in out
    code, _, err = sae_cli(
        ["toy", "export", tmp_path / "r", "--instance", 5, "--out", acts], capsys
    )
    assert code != 0 and "out of range" in err and "Traceback" not in err


def test_bad_modular_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = sae_cli(
        ["toy", "modular", "--out", tmp_path / "r", "--set", "train.train_fraction=0"], capsys
    )
    assert code == 2 and "train_fraction" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "control",
    [
        {"train": {"loss": "mse"}},
        {"optim": {"weight_decay": 0.0}},
        {"optim": {"weight_decay": 0.0, "l2": 1e-3}},
        {"optim": {"l1": 1e-3}},
        {"model": {"layernorm": True}},
    ],
)
def test_controls_train_a_step_and_add_their_penalty(control: dict[str, Any]) -> None:
    base = {"model": {"p": 7, "d": 2, "m": 4}, "train": {"steps": 2, "seeds": [0, 1]}}
    data = {**QUIET, **base}
    for section, values in control.items():
        data[section] = {**data.get(section, {}), **values}
    module = ModularModule(from_dict(ModularConfig, data))
    w = module.model.weights()
    o = module.config.optim
    expected = o.l2 * sum(t.square().flatten(1).sum(1) for t in w) + o.l1 * (
        w.L.abs().flatten(1).sum(1) + w.R.abs().flatten(1).sum(1)
    )
    assert torch.allclose(module.penalty(), expected)
    task, acc = module.per_instance_loss()
    assert task.shape == (2,) and torch.isfinite(task).all() and acc.shape == (2,)
    task.sum().backward()
    assert all(p.grad is not None for p in module.model.parameters())


def test_train_fraction_splits_the_pairs() -> None:
    data = {**QUIET, "model": {"p": 11}, "train": {"train_fraction": 0.3, "seeds": [0]}}
    module = ModularModule(from_dict(ModularConfig, data))
    assert module.a.numel() == round(0.3 * 121)
    again = ModularModule(from_dict(ModularConfig, data))
    assert torch.equal(module.a, again.a) and torch.equal(module.b, again.b)


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        **QUIET,
        "model": {"p": 7, "d": 2, "m": 4},
        "train": {"steps": 40, "seeds": [0, 1], "log_every": 10, "checkpoint_every": 10},
    }
    whole = train_modular(from_dict(ModularConfig, data), tmp_path / "whole", plots=False)
    half = {**data, "train": {**data["train"], "steps": 20}}
    train_modular(from_dict(ModularConfig, half), tmp_path / "part", plots=False)
    resumed = train_modular(from_dict(ModularConfig, data), tmp_path / "part", resume=True)
    a, b = load_modular(tmp_path / "whole").weights, load_modular(tmp_path / "part").weights
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [r["loss"] for r in resumed["instances"]] == [r["loss"] for r in whole["instances"]]
