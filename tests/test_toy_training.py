"""The paper's "Basic Results" reproduced by real training (n=20, m=5, I_i = 0.7^i, a sweep over
feature density 1-S), through ``train_toy`` and the shipped configs.

Measured on the project's 2-core CPU with the paper's recipe (AdamW, lr 1e-3, batch 1024): the
dense ReLU instance can still sit on a saddle at 3000-5000 steps (feature 5 represented instead
of feature 4; it escapes by 10k steps), the dense linear model likewise at 3000 steps, and sparse
instances sometimes land in a slightly worse local minimum. Best-of-3 restarts at 5000 steps
(ReLU) and 5000 steps (linear) gave every claim below on seeds 0, 1 and 2, at about the cost of
one 10k-step run. Represented features seen on those seeds for 1-S = 1, .3, .1, .03, .01, .003,
.001: 5/8/10/10/12/13/13, 5/8/9/11/12/13/14, 5/7/9/11/11/13/12 (counted as ‖W_i‖ > 0.5, before
the functional "represented" rule and common-random-number restarts; seed 0 now: 5/8/9/10/12/12/12).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sae.run.config_io import load_config
from toymodels.config import ToyConfig
from toymodels.io import load_toy_model
from toymodels.train import train_toy

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "toy"
TOP = 5  # m: the linear model keeps exactly the m most important features
RELU_STEPS, RELU_RESTARTS = 5000, 3
LINEAR_STEPS = 5000
QUIET = ["wandb.enabled=false", "runtime.progress_bar=false", "runtime.threads=1"]


class Sweep:
    def __init__(self, out: Path, metrics: dict[str, Any]) -> None:
        self.out = out
        self.metrics = metrics
        self.records = {r["feature_probability"]: r for r in metrics["instances"]}
        loaded = load_toy_model(out)
        self.W = loaded.model.feature_weights.detach().double()
        self.probability = [r["feature_probability"] for r in metrics["instances"]]

    def weights(self, p: float) -> torch.Tensor:
        return self.W[self.probability.index(p)]

    def represented(self, p: float) -> list[int]:
        """The features metrics.json calls represented (the shared functional rule)."""
        return [i for i, r in enumerate(self.records[p]["represented"]) if r]


def train_sweep(config_name: str, out: Path, overrides: list[str]) -> Sweep:
    config = load_config(ToyConfig, CONFIGS / config_name, overrides + QUIET)
    assert config.data.feature_probability == [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    assert config.data.importance_decay == 0.7
    assert (config.model.n_features, config.model.n_hidden) == (20, TOP)
    assert (config.optim.lr, config.train.batch_size) == (1e-3, 1024)
    metrics = train_toy(config, out)
    assert metrics is not None
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    return Sweep(out, metrics)


@pytest.fixture(scope="module")
def relu(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("basic_results")
    overrides = [f"train.steps={RELU_STEPS}", f"train.restarts={RELU_RESTARTS}"]
    return train_sweep("basic_results.yaml", out, overrides)


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("basic_results_linear")
    return train_sweep("basic_results_linear.yaml", out, [f"train.steps={LINEAR_STEPS}"])


def cosines(W: torch.Tensor, idx: list[int]) -> torch.Tensor:
    unit = W[idx] / W[idx].norm(dim=-1, keepdim=True)
    return unit @ unit.T


def assert_top_features_orthogonal(sweep: Sweep, p: float) -> None:
    record = sweep.records[p]
    assert sweep.represented(p) == list(range(TOP)), (p, record["feature_norms"])
    assert record["n_represented"] == TOP
    W = sweep.weights(p)
    norms = W.norm(dim=-1)
    assert (norms[:TOP] - 1).abs().max() < 0.05, norms
    assert norms[TOP:].max() < 0.2, norms
    off = cosines(W, list(range(TOP))) - torch.eye(TOP, dtype=W.dtype)
    assert off.abs().max() < 0.05, off
    assert record["frobenius_norm_sq"] == pytest.approx(TOP, abs=0.05)
    assert record["dims_per_feature"] == pytest.approx(1.0, abs=0.01)
    D = torch.tensor(record["feature_dimensionality"])
    assert (D[:TOP] - 1).abs().max() < 0.02


@pytest.mark.slow
def test_dense_relu_learns_the_top_features_orthogonally(relu: Sweep) -> None:
    """1-S = 1: exactly the 5 most important features, mutually orthogonal, ‖W‖_F² = 5."""
    assert_top_features_orthogonal(relu, 1.0)


@pytest.mark.slow
def test_superposition_grows_with_sparsity(relu: Sweep) -> None:
    counts = [relu.records[p]["n_represented"] for p in relu.probability]
    frob = [relu.records[p]["frobenius_norm_sq"] for p in relu.probability]
    # The count in the metrics is the per-feature "represented" list (the shared rule).
    assert counts == [len(relu.represented(p)) for p in relu.probability]
    by_p = dict(zip(relu.probability, counts))
    assert by_p[1.0] == 5
    assert 6 <= by_p[0.3] <= 8, counts
    assert 8 <= by_p[0.1] <= 10, counts
    assert by_p[0.001] >= 11, counts
    # Monotone trend: strictly more features at 1, .3, .1, .01; between neighbouring
    # sparsities at most a dip of one (separate local minima of separate instances).
    assert by_p[1.0] < by_p[0.3] < by_p[0.1] < by_p[0.01], counts
    assert all(b >= a - 1 for a, b in zip(counts, counts[1:])), counts
    # 12, not 13 as under the old ‖W_i‖ > 0.5 count: at 5000 steps the sparsest instances hold
    # half-grown features (‖W_i‖ ≈ 0.57, moving their output by only 0.27), which the shared
    # functional rule does not call represented (seed 0: 5/8/9/10/12/12/12).
    assert max(counts[-3:]) >= 12, counts
    # ‖W‖_F² (≈ the number of features learned) grows the same way; D* = m / ‖W‖_F² falls.
    assert frob[-1] > frob[2] + 3 > frob[0] + 5, frob
    dstar = [relu.records[p]["dims_per_feature"] for p in relu.probability]
    assert dstar[0] == pytest.approx(1.0, abs=0.01)
    assert dstar[-1] < 0.4, dstar
    for p in relu.probability:
        r = relu.records[p]
        assert r["dims_per_feature"] == pytest.approx(TOP / r["frobenius_norm_sq"], rel=1e-5)
    # The most important features are never dropped: superposition adds the less important
    # ones (the paper: "it starts with less important features").
    for p in relu.probability:
        assert set(range(TOP)) <= set(relu.represented(p)), p


@pytest.mark.slow
@pytest.mark.parametrize("p", [0.3, 0.1])
def test_new_features_come_in_antipodal_pairs(relu: Sweep, p: float) -> None:
    """At moderate sparsity every represented feature either has a dimension to itself or
    shares one with exactly one other feature pointing the opposite way (D_i ≈ ½), and the
    features beyond the top 5 are all in such pairs."""
    W = relu.weights(p)
    rep = relu.represented(p)
    assert len(rep) > TOP
    cos = cosines(W, rep)
    D = torch.tensor(relu.records[p]["feature_dimensionality"], dtype=torch.float64)
    paired = []
    for a, i in enumerate(rep):
        others = torch.cat([cos[a, :a], cos[a, a + 1 :]])
        if others.abs().max() < 0.05:  # a dedicated dimension
            assert D[i] == pytest.approx(1.0, abs=0.02)
            continue
        partners = (cos[a] < -0.98).nonzero().flatten().tolist()
        assert len(partners) == 1, (i, cos[a])
        # Orthogonal to everything except the partner: a tegum factor of its own.
        rest = [c for c in range(len(rep)) if c not in (a, partners[0])]
        assert cos[a, rest].abs().max() < 0.05, (i, cos[a])
        # D_i = 1 / (1 + ‖W_j‖² / ‖W_i‖²): ½ for equal norms.
        assert 0.35 < D[i] < 0.65, (i, D[i])
        paired.append(i)
    newcomers = [i for i in rep if i >= TOP]
    assert newcomers and set(newcomers) <= set(paired), (newcomers, paired)
    assert float(D[paired].mean()) == pytest.approx(0.5, abs=0.03)
    # Efficient packing: the dimensionalities add up to m.
    assert float(D.sum()) == pytest.approx(TOP, abs=0.1)


@pytest.mark.slow
def test_linear_model_keeps_exactly_the_top_features(linear: Sweep) -> None:
    for p in linear.probability:
        assert_top_features_orthogonal(linear, p)


@pytest.mark.slow
def test_superposition_lowers_the_loss(relu: Sweep, linear: Sweep) -> None:
    """Same data, same recipe: ReLU models with features in superposition reach a lower loss
    than the linear model on sparse data; on dense data the two solutions coincide."""
    for p in relu.probability:
        lr, ll = relu.records[p]["loss"], linear.records[p]["loss"]
        if p == 1.0:
            assert lr == pytest.approx(ll, rel=0.02)
        else:
            # Measured ratios: ~0.8-0.9 at 1-S = 0.3, ≤ 0.5 from 0.1 on.
            assert lr < (0.97 if p > 0.1 else 0.6) * ll, (p, lr, ll)
    # Loss falls with density for both (fewer nonzero inputs to reconstruct).
    for sweep in (relu, linear):
        losses = [sweep.records[p]["loss"] for p in sweep.probability]
        assert all(b < a for a, b in zip(losses, losses[1:])), losses


@pytest.mark.slow
def test_restarts_keep_the_lowest_loss(relu: Sweep) -> None:
    for p in relu.probability:
        r = relu.records[p]
        assert len(r["restart_losses"]) == RELU_RESTARTS
        assert r["loss"] == min(r["restart_losses"])


@pytest.mark.slow
def test_uniform_features_form_a_pentagon(tmp_path: Path) -> None:
    """n=5 equally important features, 1-S = 0.05, m=2: a regular pentagon, D_i = 2/5 each
    ("Feature Dimensionality"). At 3000 steps about 1 run in 6 is still stuck with 4 features,
    so keep the best of 3 restarts."""
    config = load_config(
        ToyConfig,
        CONFIGS / "pentagon.yaml",
        ["train.steps=3000", "train.restarts=3", "data.repeats=2", *QUIET],
    )
    assert config.data.feature_probability == [0.05] and config.data.importance_decay == 1.0
    metrics = train_toy(config, tmp_path)
    W = load_toy_model(tmp_path).model.feature_weights.detach().double()
    assert W.shape == (2, 5, 2)
    for k, record in enumerate(metrics["instances"]):
        assert record["n_represented"] == 5
        dims = torch.tensor(record["feature_dimensionality"])
        assert (dims - 0.4).abs().max() < 0.02, dims
        norms = W[k].norm(dim=-1)
        assert (norms - norms.mean()).abs().max() < 0.05, norms
        # Each feature's neighbours at ±72° and the next ones at ±144°.
        cos = cosines(W[k], list(range(5)))
        expected = torch.tensor([math.cos(4 * math.pi / 5)] * 2 + [math.cos(2 * math.pi / 5)] * 2)
        for i in range(5):
            others = torch.cat([cos[i, :i], cos[i, i + 1 :]]).sort().values
            assert (others - expected.double()).abs().max() < 0.03, cos[i]


# -- every shipped config loads and trains ---------------------------------------------------


def config_files() -> list[Path]:
    """The toy-model configs (``modular_*.yaml`` configure ``sae toy modular``, another model)."""
    return sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("modular_"))


def test_the_paper_setups_are_shipped() -> None:
    names = {p.name for p in config_files()}
    expected = {
        "intro.yaml",
        "basic_results.yaml",
        "basic_results_linear.yaml",
        "uniform.yaml",
        "pentagon.yaml",
        "correlated.yaml",
        "anticorrelated.yaml",
        "relu_hidden.yaml",
        "abs_value.yaml",
        "phase_2in1.yaml",
        "phase_3in2.yaml",
    }
    assert expected <= names, expected - names


@pytest.mark.slow
@pytest.mark.parametrize("path", config_files(), ids=lambda p: p.stem)
def test_config_loads_and_trains(path: Path, tmp_path: Path) -> None:
    from cli.main import cli, run_cli

    config = load_config(ToyConfig, path)
    assert config.runtime.threads == 1
    assert config.train.steps >= 1000
    out = tmp_path / "run"
    overrides = ["train.steps=5", "wandb.enabled=false", "train.eval_samples=1024"]
    overrides.append("runtime.progress_bar=false")
    if config.model.kind == "abs":
        # One instance only: its neuron-stack plot (100 features × 40 neurons) alone takes ~10 s
        # on this machine, five of them dominate the whole test.
        overrides.append(f"data.feature_probability=[{config.data.feature_probability[-1]}]")
    args = ["toy", "train", "--config", str(path), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    assert run_cli(cli.main, args) == 0
    expected = load_config(ToyConfig, path, overrides)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["instances"]) == expected.n_instances
    assert metrics["kind"] == config.model.kind
    assert load_config(ToyConfig, out / "config.yaml").train.steps == 5
