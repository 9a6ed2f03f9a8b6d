"""The paper's analytic adversarial attack on hand-built weights against its closed form, and the
learning-dynamics snapshots of a short real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import QUIET
from safetensors.torch import load_file

from sae.run.config_io import from_dict
from toymodels.adversarial import adversarial_vulnerability, analytic_attacks
from toymodels.config import ToyConfig
from toymodels.models import TiedToyModel
from toymodels.train import train_toy


def tied(W: list, kind: str = "relu_output") -> TiedToyModel:
    W = torch.tensor(W)
    model = TiedToyModel(kind, W.shape[0], W.shape[1], W.shape[2])
    with torch.no_grad():
        model.W.copy_(W)
        model.b.zero_()
    return model


def test_attack_direction_is_the_normalised_gram_row() -> None:
    W = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]]])
    attacks = analytic_attacks(W, torch.tensor([0.2]))
    gram = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.0]])
    expected = 0.2 * gram / torch.tensor([[math.hypot(1, 0.6)], [math.hypot(1, 0.6)], [1.0]])
    torch.testing.assert_close(attacks[0], expected)


def test_superposition_doubles_the_damage_at_zero_input() -> None:
    """At x = 0 with λ = 0.1 and importance [1, 0.5]: dedicated W = I, the attack on feature 0 is
    λe_0 and adds λ²·1/2 to the loss (mean over 2 features); antipodal W = [1, −1] turns it
    into λ[1, −1]/√2, whose output ReLU(WᵀWδ) = [√2λ, 0] adds 2λ²·1/2."""
    lam = 0.1
    importance = torch.tensor([[1.0, 0.5]])
    x = torch.zeros(4, 1, 2)
    dedicated = adversarial_vulnerability(
        tied([[[1.0, 0.0], [0.0, 1.0]]]), importance, x, torch.tensor([lam])
    )
    antipodal = adversarial_vulnerability(
        tied([[[1.0], [-1.0]]]), importance, x, torch.tensor([lam])
    )
    assert dedicated.clean_loss.item() == 0.0 == antipodal.clean_loss.item()
    assert dedicated.attacked_loss.item() == pytest.approx(lam**2 / 2)
    assert antipodal.attacked_loss.item() == pytest.approx(lam**2)
    assert dedicated.attacked_feature.item() == 0 == antipodal.attacked_feature.item()
    # A unit attack moves the pre-activations by ‖G G_i‖ / ‖G_i‖: 1 without superposition,
    # 2 = features per dimension for the antipodal pair.
    assert dedicated.amplification.item() == pytest.approx(1.0)
    assert antipodal.amplification.item() == pytest.approx(2.0)


def test_amplification_of_a_pentagon_is_features_per_dimension() -> None:
    angles = torch.arange(5) * (2 * math.pi / 5)
    W = torch.stack([angles.cos(), angles.sin()], dim=-1)[None]
    result = adversarial_vulnerability(tied(W.tolist()), torch.ones(1, 5), torch.rand(64, 1, 5))
    assert result.amplification.item() == pytest.approx(5 / 2, rel=1e-5)


def test_attack_on_random_inputs_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, 2, generator=g)
    model = tied(W.tolist())
    with torch.no_grad():
        model.b.copy_(torch.randn(3, 5, generator=g) * 0.1)
    importance = 0.8 ** torch.arange(5.0).expand(3, 5)
    x = torch.rand(256, 3, 5, generator=g) * (torch.rand(256, 3, 5, generator=g) < 0.3)
    result = adversarial_vulnerability(model, importance, x)
    # numpy, one instance and one attack at a time
    Wn, bn, xn, In = W.numpy(), model.b.detach().numpy(), x.numpy(), importance.numpy()
    for k in range(3):
        norms = np.linalg.norm(xn[:, k], axis=1)
        lam = 0.1 * norms[norms > 0].mean()  # over the inputs that are not all-zero
        gram = Wn[k] @ Wn[k].T

        def loss(inp: np.ndarray, k: int = k, gram: np.ndarray = gram) -> float:
            out = np.maximum(inp @ gram + bn[k], 0)  # gram is symmetric
            return float((In[k] * (out - xn[:, k]) ** 2).mean())

        attacked = [loss(xn[:, k] + lam * row / np.linalg.norm(row)) for row in gram]
        clean = loss(xn[:, k])
        assert result.attack_norm[k].item() == pytest.approx(lam, rel=1e-5)
        assert result.clean_loss[k].item() == pytest.approx(clean, rel=1e-4)
        assert result.attacked_loss[k].item() == pytest.approx(max(attacked), rel=1e-4)
        assert result.attacked_feature[k].item() == int(np.argmax(attacked))
        assert result.vulnerability[k].item() == pytest.approx(max(attacked) / clean - 1, rel=1e-3)
        g2 = gram @ gram
        amp = max(np.linalg.norm(g2[i]) / np.linalg.norm(gram[i]) for i in range(5))
        assert result.amplification[k].item() == pytest.approx(amp, rel=1e-4)


def test_abs_model_is_refused() -> None:
    from toymodels.models import AbsValueModel

    with pytest.raises(ValueError, match="tied"):
        adversarial_vulnerability(AbsValueModel(1, 3, 2), torch.ones(1, 3), torch.rand(8, 1, 3))


def test_dynamics_snapshots_of_a_short_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = from_dict(
        ToyConfig,
        {
            "model": {"kind": "relu_output", "n_features": 5, "n_hidden": 2},
            "data": {"feature_probability": [1.0, 0.05]},
            "optim": {"lr": 0.01},
            "train": {
                "steps": 120,
                "batch_size": 256,
                "restarts": 2,
                "eval_samples": 4096,
                "log_every": 50,
                "snapshot_every": 40,
            },
            **QUIET,
        },
    )
    metrics = train_toy(config, tmp_path)
    assert metrics is not None
    snaps = load_file(str(tmp_path / "dynamics.safetensors"))
    assert snaps["step"].tolist() == [0, 40, 80, 120]
    assert snaps["feature_norms"].shape == snaps["feature_dimensionality"].shape == (4, 2, 5)
    assert snaps["loss"].shape == (4, 2)
    # The last snapshot is the saved (best-restart) model.
    records = json.loads((tmp_path / "metrics.json").read_text())["instances"]
    last = torch.tensor([r["feature_norms"] for r in records])
    torch.testing.assert_close(snaps["feature_norms"][-1], last)
    dims = torch.tensor([r["feature_dimensionality"] for r in records])
    torch.testing.assert_close(snaps["feature_dimensionality"][-1], dims)
    assert (snaps["loss"][-1] < snaps["loss"][0]).all()
    assert (tmp_path / "plots" / "dynamics.png").is_file()
    for r in records:
        adv = r["adversarial"]
        assert adv["vulnerability"] > 0 and adv["attack_norm"] > 0 and adv["amplification"] > 0.5
        assert adv["attacked_loss"] > adv["clean_loss"]


def test_dynamics_snapshots_survive_a_resume(tmp_path: Path) -> None:
    """Stopped at step 60 (a checkpoint, not a snapshot step) and resumed to 120: the same
    snapshots as an uninterrupted run, none lost and none added at the resume step."""
    data = {
        "model": {"kind": "relu_output", "n_features": 5, "n_hidden": 2},
        "data": {"feature_probability": [0.05]},
        "optim": {"lr": 0.01},
        "train": {
            "steps": 120,
            "batch_size": 128,
            "eval_samples": 1024,
            "log_every": 20,
            "checkpoint_every": 60,
            "snapshot_every": 40,
        },
        **QUIET,
    }
    train_toy(from_dict(ToyConfig, data), tmp_path / "whole")
    half = {**data, "train": {**data["train"], "steps": 60}}
    train_toy(from_dict(ToyConfig, half), tmp_path / "part")
    train_toy(from_dict(ToyConfig, data), tmp_path / "part", resume=True)
    whole = load_file(str(tmp_path / "whole" / "dynamics.safetensors"))
    part = load_file(str(tmp_path / "part" / "dynamics.safetensors"))
    assert part["step"].tolist() == whole["step"].tolist() == [0, 40, 80, 120]
    for name in whole:
        assert torch.equal(part[name], whole[name]), name
