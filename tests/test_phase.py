"""Phase diagrams ("Superposition as a Phase Change"): the closed-form losses against the model's
own loss at the candidate weights, the theoretical winner and its boundaries, the extra-feature
classifier on hand-built weights, and a small trained 2-in-1 grid against the closed form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sae.run.config_io import from_dict
from sae.run.errors import UsageError
from toymodels.config import ToyConfig
from toymodels.data import FeatureDistribution
from toymodels.loss import weighted_loss
from toymodels.models import TiedToyModel
from toymodels.phase import (
    classify_extra_feature,
    closed_form_losses,
    closed_form_winner,
    far_from_boundary,
    phase_grid,
    run_phase_diagram,
)


def tied(W: list, b: list | None = None) -> TiedToyModel:
    """A ReLU-output model with the given W [instances, n, m] and bias (default 0)."""
    W = torch.tensor(W, dtype=torch.float32)
    model = TiedToyModel("relu_output", W.shape[0], W.shape[1], W.shape[2])
    with torch.no_grad():
        model.W.copy_(W)
        model.b.copy_(torch.zeros(W.shape[:2]) if b is None else torch.tensor(b))
    return model


def candidates(n: int, p: float) -> TiedToyModel:
    """The paper's candidate solutions, in ``closed_form_losses`` order, as instances; a dropped
    feature gets its optimal bias E x_i = p/2."""
    h = p / 2
    if n == 2:
        return tied([[[1.0], [0.0]], [[0.0], [1.0]], [[1.0], [-1.0]]], [[0, h], [h, 0], [0, 0]])
    e1, e2, z = [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]
    neg1, neg2 = [-1.0, 0.0], [0.0, -1.0]
    return tied(
        [[e1, e2, z], [z, e1, e2], [e1, neg1, e2], [e1, e2, neg2]],
        [[0, 0, h], [h, 0, 0], [0, 0, 0], [0, 0, 0]],
    )


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(("r", "p"), [(0.3, 0.5), (3.0, 0.1), (1.0, 1.0)])
def test_closed_forms_equal_the_models_loss_at_the_candidate_weights(
    n: int, r: float, p: float
) -> None:
    model = candidates(n, p)
    k = model.W.shape[0]
    importance = torch.tensor([1.0] * (n - 1) + [r]).expand(k, n)
    dist = FeatureDistribution(torch.full((k, n), p), importance)
    x = dist.sample(400_000, torch.Generator().manual_seed(0))
    measured = weighted_loss(model(x).output, x, dist.importance).double() * n
    expected = torch.tensor(closed_form_losses(n, r, p))
    # Monte Carlo: 400k samples give ~1% relative error on these losses.
    torch.testing.assert_close(measured, expected, rtol=0.03, atol=2e-4)


def test_two_in_one_boundaries_are_where_the_closed_forms_cross() -> None:
    # Antipodal beats dropping the extra feature below p = 4r / (2 + 5r) (r < 1) and beats
    # dropping the first one below p = 4 / (5 + 2r) (r > 1): solve (1 + r)p²/6 = r(p/3 − p²/4).
    for r in (0.1, 0.3, 0.7):
        edge = 4 * r / (2 + 5 * r)
        assert closed_form_winner(2, r, edge * 1.01)[1] == "not_represented"
        assert closed_form_winner(2, r, edge * 0.99)[1] == "superposition"
    for r in (1.5, 3.0, 10.0):
        edge = 4 / (5 + 2 * r)
        assert closed_form_winner(2, r, edge * 1.01)[1] == "dedicated"
        assert closed_form_winner(2, r, edge * 0.99)[1] == "superposition"


@pytest.mark.parametrize(
    ("n", "r", "p", "label"),
    [
        (2, 0.1, 1.0, "not_represented"),
        (2, 10.0, 1.0, "dedicated"),
        (2, 1.0, 0.01, "superposition"),
        (2, 0.1, 0.03, "superposition"),
        (3, 0.1, 1.0, "not_represented"),
        (3, 10.0, 1.0, "dedicated"),  # W ⊥ [1, 0, 0]: feature 0 dropped
        (3, 10.0, 0.03, "dedicated"),  # W ⊥ [1, 1, 0]: the others antipodal, extra alone
        (3, 0.5, 0.03, "superposition"),  # W ⊥ [0, 1, 1]: the extra in an antipodal pair
    ],
)
def test_closed_form_winner_far_from_a_boundary(n: int, r: float, p: float, label: str) -> None:
    assert far_from_boundary(n, r, p)
    assert closed_form_winner(n, r, p)[1] == label


def test_three_in_two_solutions_and_near_boundary_points() -> None:
    best, _ = closed_form_winner(3, np.array([10.0, 10.0, 0.5]), np.array([1.0, 0.03, 0.03]))
    assert best.tolist() == [1, 2, 3]
    # r = 1 at density 1: dropping either feature costs the same; not far from a boundary.
    assert not far_from_boundary(2, 1.0, 1.0)
    assert not far_from_boundary(2, 0.3, 4 * 0.3 / (2 + 1.5) * 1.2)


def test_classifier_on_hand_built_weights() -> None:
    # 2 features in 1 dimension: W = [1, 0], [0, 1], [1, −1] (the paper's three solutions).
    model = tied([[[1.0], [0.0]], [[0.0], [1.0]], [[1.0], [-1.0]]])
    assert classify_extra_feature(model) == ["not_represented", "dedicated", "superposition"]
    # Scaled or with a small leftover of the other feature, the labels hold; a short extra
    # feature (‖W‖² = 0.36 < 0.5) is not represented.
    model = tied([[[1.0], [0.6]], [[0.1], [1.1]], [[0.9], [-0.8]]])
    assert classify_extra_feature(model) == ["not_represented", "dedicated", "superposition"]
    # 3 in 2: W ⊥ [0,0,1], W ⊥ [1,1,0] (extra alone), W ⊥ [0,1,1] (extra antipodal), triangle.
    tri = [[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]]
    model = tied(
        [
            [[1, 0], [0, 1], [0, 0]],
            [[1, 0], [-1, 0], [0, 1]],
            [[1, 0], [0, 1], [0, -1]],
            tri,
        ]
    )
    labels = ["not_represented", "dedicated", "superposition", "superposition"]
    assert classify_extra_feature(model) == labels


def tiny_phase_config(**train: object) -> ToyConfig:
    return from_dict(
        ToyConfig,
        {
            "model": {"kind": "relu_output", "n_features": 2, "n_hidden": 1},
            "data": {
                "feature_probability": [1.0, 0.03],
                "importance_sweep": [[1.0, 0.1], [1.0, 1.0], [1.0, 10.0]],
            },
            "optim": {"lr": 0.01},
            "train": {"steps": 600, "restarts": 4, "eval_samples": 16384, "log_every": 100} | train,
            "runtime": {"threads": 1, "progress_bar": False},
            "wandb": {"enabled": False},
        },
    )


def test_phase_grid_refuses_configs_that_are_not_phase_diagrams() -> None:
    assert phase_grid(tiny_phase_config()) == ([0.1, 1.0, 10.0], [1.0, 0.03])
    config = tiny_phase_config()
    config.model.n_hidden = 2
    with pytest.raises(UsageError, match="2-in-1"):
        phase_grid(config)
    config = tiny_phase_config()
    config.data.importance_sweep = None
    with pytest.raises(UsageError, match="importance_sweep"):
        phase_grid(config)


@pytest.mark.slow
def test_trained_two_in_one_matches_the_closed_form_far_from_boundaries(tmp_path: Path) -> None:
    """One batched run of 3 r × 2 densities × best-of-4; every point far from a boundary gets
    the closed-form label (r = 1 at density 1 is a tie between dropping either feature)."""
    torch.set_num_threads(1)
    record = run_phase_diagram(tiny_phase_config(), tmp_path)
    assert record is not None
    assert json.loads((tmp_path / "phase.json").read_text()) == record
    assert record["r"] == [0.1, 1.0, 10.0] and record["density"] == [1.0, 0.03]
    assert record["closed_form"] == [
        ["not_represented", "superposition"],
        ["not_represented", "superposition"],  # the tie at r = 1 goes to the first solution
        ["dedicated", "superposition"],
    ]
    assert record["far_from_boundary"] == [[True, True], [False, True], [True, True]]
    for i in range(3):
        for j in range(2):
            if record["far_from_boundary"][i][j]:
                assert record["trained"][i][j] == record["closed_form"][i][j], (i, j, record)
    assert record["agreement_far_from_boundary"] == 1.0
    assert (tmp_path / "plots" / "phase_diagram.png").stat().st_size > 10_000


def test_cli_refuses_a_config_that_is_not_a_phase_diagram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_runs import sae_cli

    out_dir = tmp_path / "out"
    argv = ["toy", "phase-diagram", "--config", "configs/toy/intro.yaml", "--out", str(out_dir)]
    code, out, err = sae_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: a phase diagram needs model.n_features=2, n_hidden=1 (2-in-1) or n_features=3, "
        "n_hidden=2 (3-in-2); got n_features=5, n_hidden=2"
    ]
    assert not out_dir.exists()  # refused before the output folder is made
