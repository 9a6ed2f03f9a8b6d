"""Exact ground truth of the toy models: the explained-variance ceiling of the true codes and
directions (exported and in ``sae eval``), one "represented" rule for metrics.json and the
export, anticorrelated members exported with p / k, split / absorbing flags judged against the
true features' own closeness, and best-of-k restarts scored on the same samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae.activations import ActivationFile
from sae.evaluate import evaluate_sae
from sae.metrics import evaluate_dictionary
from sae.model import SparseAutoencoder
from sae.run.config_io import from_dict
from sae.run.layout import RunDir
from toymodels.config import ToyConfig
from toymodels.data import FeatureDistribution
from toymodels.diagnostics import represented
from toymodels.export import export_activations
from toymodels.io import save_toy_model
from toymodels.lightning_module import ToyModelModule
from toymodels.models import AbsValueModel, build_model


def toy_config(kind: str, n: int = 8, m: int = 3, **data: object) -> ToyConfig:
    return from_dict(
        ToyConfig,
        {
            "model": {"kind": kind, "n_features": n, "n_hidden": m},
            "data": {"feature_probability": [0.3]} | data,
            "runtime": {"threads": 1, "progress_bar": False},
            "wandb": {"enabled": False},
        },
    )


def saved_run(root: Path, config: ToyConfig, seed: int = 0) -> Path:
    """A run folder holding a randomly initialised model of ``config`` (no training)."""
    m = config.model
    model = build_model(m.kind, config.n_instances, m.n_features, m.n_hidden, seed)
    dist = FeatureDistribution.from_config(config.data, m.n_features, signed=model.signed_inputs)
    root.mkdir(parents=True, exist_ok=True)
    save_toy_model(RunDir(root).model, model, dist, config)
    return root


@pytest.mark.parametrize("kind", ["linear", "relu_output", "relu_hidden", "abs"])
def test_exported_ceiling(tmp_path: Path, kind: str) -> None:
    """h = Σ x_i W_i exactly for linear and relu_output: the ceiling is 1. For relu_hidden and
    abs the ReLU mixes co-active features, so the true codes explain less."""
    run = saved_run(tmp_path / "run", toy_config(kind))
    path = export_activations(run, 0, 20_000, tmp_path / "acts.safetensors")
    file = ActivationFile(path)
    ceiling = file.info["explained_variance_ceiling"]
    h = file.rows(slice(None)).double()
    codes = file.feature_acts(slice(None)).double()
    gt = file.tensor("ground_truth").double()
    residual = h - codes @ gt  # with the best constant offset, as an SAE has b_dec
    err = (residual - residual.mean(0)).square().sum()
    expected = 1 - float(err / (h - h.mean(0)).square().sum())
    assert ceiling == pytest.approx(expected, abs=1e-6)
    if kind in ("linear", "relu_output"):
        assert ceiling == pytest.approx(1.0, abs=1e-6)
    else:
        assert ceiling < 0.98


def test_sae_eval_reports_the_ceiling_beside_explained_variance(tmp_path: Path) -> None:
    run = saved_run(tmp_path / "run", toy_config("relu_hidden"))
    file = ActivationFile(export_activations(run, 0, 8192, tmp_path / "acts.safetensors"))
    gt = file.tensor("ground_truth")
    sae = SparseAutoencoder(1, gt.shape[1], gt.shape[0], "april2024", seeds=[0])
    rows = [(file.rows(slice(0, 4096)), file.feature_acts(slice(0, 4096)))]
    rows.append((file.rows(slice(4096, None)), file.feature_acts(slice(4096, None))))
    scalars = evaluate_sae(sae, gt, rows)["scalars"]
    assert scalars["explained_variance_ceiling"] == pytest.approx(
        file.info["explained_variance_ceiling"], abs=1e-6
    )
    without_codes = evaluate_sae(sae, gt, [(file.rows(slice(None)), None)])["scalars"]
    assert "explained_variance_ceiling" not in without_codes


def perfect_sae(gt: torch.Tensor) -> SparseAutoencoder:
    sae = SparseAutoencoder(1, gt.shape[1], gt.shape[0], "april2024", seeds=[0])
    with torch.no_grad():
        sae.W_dec.copy_(gt[None])
        sae.W_enc.copy_(gt.T[None])
    return sae


def test_perfect_dictionary_raises_no_flag_on_relu_hidden_truths() -> None:
    model = build_model("relu_hidden", 1, 20, 5, seed=3)
    gt = model.ground_truth()[0][0]
    x = torch.rand(2048, 20, generator=torch.Generator().manual_seed(0))
    batches = [(x @ gt, x)]
    # ReLU(W_i) overlap: the threshold rule alone flags a perfect dictionary.
    raw = evaluate_dictionary(gt, gt.clone())
    assert raw.all.absorbing_latents.size > 5
    nonzero = gt.norm(dim=1) > 0  # ReLU(W_i) = 0 when W_i has no positive entry
    assert 15 <= int(nonzero.sum()) < 20
    result = evaluate_sae(perfect_sae(gt), gt, batches, represented=nonzero)
    assert result["scalars"]["represented/recovered_0.99"] == 1.0
    assert result["scalars"]["all/n_split_features"] == 0
    assert result["scalars"]["all/n_absorbing_latents"] == 0
    assert result["scalars"]["represented/n_absorbing_latents"] == 0
    assert not any(f["split"] for f in result["features"])
    assert not any(lat["absorbing"] for lat in result["latents"])


def test_relative_flags_still_catch_real_splits_and_absorption() -> None:
    gt = torch.eye(6)
    # Latent 0 = features 0 + 1 (absorbs both); latents 6 and 7 both sit near feature 2.
    dec = torch.cat([torch.eye(6), torch.tensor([[0.0, 0, 1, 0.3, 0, 0], [0, 0, 1, 0, 0.3, 0]])])
    dec[0] = torch.tensor([1.0, 1, 0, 0, 0, 0])
    x = torch.rand(512, 6, generator=torch.Generator().manual_seed(0))
    sae = SparseAutoencoder(1, 6, 8, "april2024", seeds=[0])
    with torch.no_grad():
        sae.W_dec.copy_(dec[None])
    result = evaluate_sae(sae, gt, [(x, x)])
    assert [f["feature"] for f in result["features"] if f["split"]] == ["2"]
    assert [lat["latent"] for lat in result["latents"] if lat["absorbing"]] == [0]


def test_abs_model_represented_rule_per_half_direction() -> None:
    """'i+' is represented when x_i = +1 alone moves output i by > 0.5, 'i-' with x_i = −1."""
    model = AbsValueModel(1, 2, 2)
    with torch.no_grad():
        # Feature 0: neuron 0 reads +x_0, neuron 1 reads −x_0, both write output 0 (|x_0|).
        # Feature 1: only its positive half (neuron 0 also reads it, weight 0.3 out).
        model.W1.copy_(torch.tensor([[[1.0, -1.0], [0.4, 0.0]]]))
        model.W2.copy_(torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]))
        model.b.zero_()
    # x_0 = +1: h = [1, 0] -> y_0 = 1; x_0 = −1: h = [0, 1] -> y_0 = 1.
    # x_1 = +1: h = [0.4, 0] -> y_1 = 0.4 (< 0.5); x_1 = −1: h = 0 -> y_1 = 0.
    response = model.lone_feature_response()
    torch.testing.assert_close(response, torch.tensor([[1.0, 0.4, 1.0, 0.0]]))
    assert represented(model).tolist() == [[True, False, True, False]]


def test_export_uses_the_metrics_rule_and_p_over_k(tmp_path: Path) -> None:
    """feature_probability per member of an anticorrelated set is p / k; 'represented' in the
    file is ``represented(model)``, the rule metrics.json uses."""
    config = toy_config("relu_output", n=7, m=3, anticorrelated_sets=1, set_size=3)
    run = saved_run(tmp_path / "run", config, seed=1)
    file = ActivationFile(export_activations(run, 0, 60_000, tmp_path / "acts.safetensors"))
    p = file.tensor("feature_probability")
    torch.testing.assert_close(p, torch.tensor([0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3]))
    measured = (file.feature_acts(slice(None)) > 0).double().mean(0)
    assert (measured - p.double()).abs().max() < 0.01
    from toymodels.io import load_toy_model

    model = load_toy_model(run).model
    assert file.tensor("represented").tolist() == represented(model)[0].tolist()


def test_restarts_are_scored_on_common_random_numbers() -> None:
    """Two restarts holding the same weights get exactly the same evaluation loss, so best-of-k
    compares solutions, not the luck of their samples."""
    config = toy_config("relu_output", n=6, m=2)
    config.data.feature_probability = [0.05, 0.5]
    config.train.restarts = 3
    module = ToyModelModule(config)
    with torch.no_grad():
        module.model.W[1::3] = module.model.W[0::3]
        module.model.W[2::3] = module.model.W[0::3] * 0.5
    losses = module.evaluate(4096).view(2, 3)
    assert torch.equal(losses[:, 0], losses[:, 1])
    assert not torch.equal(losses[:, 0], losses[:, 2])
    # The settings themselves still see their own inputs (different densities).
    assert losses[0, 0] != losses[1, 0]


def test_report_shows_the_ceiling_beside_explained_variance(tmp_path: Path) -> None:
    from sae.report import write_report

    scalars = {"represented/recovered_0.99": 1.0, "represented/mcc": 0.99}
    results = {
        "sae_0": {
            "scalars": scalars | {"explained_variance": 0.913, "explained_variance_ceiling": 0.871},
            "cfg": {"l1_coefficient": 0.3},
            "plots": {},
        }
    }
    text = write_report(tmp_path / "report.md", "t", [], results)
    header = next(line for line in text.splitlines() if line.startswith("| SAE"))
    row = next(line for line in text.splitlines() if line.startswith("| `sae_0`"))
    columns = [c.strip() for c in header.split("|")]
    values = [c.strip() for c in row.split("|")]
    assert columns.index("EV ceiling") == columns.index("explained var.") + 1
    assert values[columns.index("explained var.")] == "0.913"
    assert values[columns.index("EV ceiling")] == "0.871"
