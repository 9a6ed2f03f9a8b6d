"""Exact properties of the toy-model pieces, no training: the paper's feature dimensionality on
known polytopes, the synthetic data's statistics, the loss at zero weights, and the
independence of instances."""

from __future__ import annotations

import math

import pytest
import torch

from toymodels.config import ToyDataConfig
from toymodels.data import FeatureDistribution, instance_major
from toymodels.diagnostics import diagnose, represented
from toymodels.loss import weighted_loss
from toymodels.models import TiedToyModel, build_model

N_SAMPLES = 200_000


def polygon(k: int, radius: float = 1.0) -> torch.Tensor:
    """k unit vectors (times radius) evenly spaced on a circle, [k, 2]."""
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k) + 0.3
    return radius * torch.stack([angles.cos(), angles.sin()], dim=-1)


def tetrahedron() -> torch.Tensor:
    """4 unit vectors in 3D with pairwise dot products −1/3."""
    v = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    return v / math.sqrt(3)


def random_rotation(m: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=torch.Generator().manual_seed(seed)))
    return q.double()


def tied(W: torch.Tensor, b: torch.Tensor | None = None, kind: str = "relu_output") -> TiedToyModel:
    """A tied toy model holding the given W [instances, n, m] (and bias, default 0)."""
    model = TiedToyModel(kind, W.shape[0], W.shape[1], W.shape[2])
    with torch.no_grad():
        model.W.copy_(W)
        model.b.copy_(torch.zeros(W.shape[:2]) if b is None else b)
    return model


def embed(rows: torch.Tensor, n: int, m: int, seed: int = 0) -> torch.Tensor:
    """rows [k, d] placed in the first k features of an [n, m] matrix (zero rows after, zero
    hidden dims padded), then rotated by a random orthogonal matrix (D_i is rotation
    invariant)."""
    W = torch.zeros(n, m, dtype=torch.float64)
    W[: rows.shape[0], : rows.shape[1]] = rows
    return W @ random_rotation(m, seed)


# -- feature dimensionality ------------------------------------------------------------------

SHAPES = {
    "antipodal_pair": (polygon(2), 1 / 2),
    "triangle": (polygon(3), 2 / 3),
    "square": (polygon(4), 1 / 2),
    "pentagon": (polygon(5), 2 / 5),
    "tetrahedron": (tetrahedron(), 3 / 4),
}


@pytest.mark.parametrize("name", SHAPES)
def test_dimensionality_of_known_polytopes(name: str) -> None:
    rows, expected = SHAPES[name]
    k = rows.shape[0]
    n, m = 8, 4
    # Instance 0: unit vectors; instance 1: the same shape scaled by 1.7 (D_i is scale free).
    W = torch.stack([embed(rows, n, m, seed=1), embed(rows * 1.7, n, m, seed=2)])
    diag = diagnose(W)
    D = diag.feature_dimensionality.double()
    torch.testing.assert_close(
        D[:, :k], torch.full((2, k), expected, dtype=torch.float64), rtol=1e-6, atol=1e-6
    )
    # The zero rows are unrepresented and have dimensionality 0 (not NaN).
    assert torch.equal(D[:, k:], torch.zeros(2, n - k, dtype=torch.float64))
    rep = represented(tied(W.float()))
    assert rep[:, :k].all() and not rep[:, k:].any()
    torch.testing.assert_close(diag.feature_norms.double(), W.norm(dim=-1), rtol=1e-6, atol=1e-6)
    # D* = m / ‖W‖_F².
    frob = torch.tensor([k * 1.0, k * 1.7**2], dtype=torch.float64)
    torch.testing.assert_close(diag.dims_per_feature.double(), m / frob, rtol=1e-6, atol=0)


def test_dimensionality_orthogonal_features_is_one_and_sums_to_m() -> None:
    m = 5
    W = torch.zeros(1, 7, m)
    W[0, :m] = torch.eye(m) * torch.tensor([1.0, 2.0, 0.6, 1.0, 3.0])[:, None]
    diag = diagnose(W)
    assert diag.feature_dimensionality[0, :m].tolist() == pytest.approx([1.0] * m)
    assert diag.feature_dimensionality[0, m:].tolist() == [0.0, 0.0]
    # Orthogonal features do not interfere.
    assert diag.interference.abs().max() < 1e-12
    # Efficiently packed shapes have dimensionalities summing to m (here: pentagon in 2D).
    pent = diagnose(polygon(5)[None])
    assert float(pent.feature_dimensionality.sum()) == pytest.approx(2.0)


def test_interference_of_antipodal_pair_and_partial_overlap() -> None:
    W = torch.tensor([[[1.0, 0.0], [-0.6, 0.0], [0.0, 0.2]]])
    diag = diagnose(W)
    # interference_i = Σ_{j≠i} (Ŵ_i·W_j)²
    assert diag.interference[0].tolist() == pytest.approx([0.36, 1.0, 0.0])
    # D_0 = 1 / (1 + 0.36), D_1 = 0.36 / (0.36 + 1), D_2 = 0.04 / 0.04
    dims = diag.feature_dimensionality[0].tolist()
    assert dims == pytest.approx([1 / 1.36, 0.36 / 1.36, 1.0])
    # The shared rule: a lone x_i = 1 must move output i by > 0.5. With b = 0 it moves it by
    # ‖W_i‖² = 1, 0.36, 0.04; a bias of −0.3 on feature 0 leaves 0.7, one of +0.5 on feature 1
    # lifts its baseline too (ReLU(0.86) − ReLU(0.5) = 0.36).
    model = tied(W)
    torch.testing.assert_close(model.lone_feature_response(), torch.tensor([[1.0, 0.36, 0.04]]))
    assert represented(model)[0].tolist() == [True, False, False]
    biased = tied(W, torch.tensor([[-0.3, 0.5, 0.0]]))
    torch.testing.assert_close(biased.lone_feature_response(), torch.tensor([[0.7, 0.36, 0.04]]))
    # A negative bias past ‖W_i‖² silences the feature: the output never moves.
    silenced = tied(W, torch.tensor([[-1.2, 0.0, 0.0]]))
    assert represented(silenced)[0].tolist() == [False, False, False]
    assert diag.dims_per_feature.tolist() == pytest.approx([2 / 1.4])


def test_all_zero_weights() -> None:
    diag = diagnose(torch.zeros(2, 6, 3))
    assert torch.equal(diag.feature_dimensionality, torch.zeros(2, 6))
    assert torch.isfinite(diag.dims_per_feature).all()
    assert not represented(tied(torch.zeros(2, 6, 3))).any()


# -- data ------------------------------------------------------------------------------------


def sample(dist: FeatureDistribution, seed: int, n: int = N_SAMPLES) -> torch.Tensor:
    return dist.sample(n, torch.Generator().manual_seed(seed))


def binomial_tol(p: torch.Tensor, n: int, sigmas: float = 5.0) -> torch.Tensor:
    return sigmas * torch.sqrt(p * (1 - p) / n)


def test_independent_features_density_and_magnitude() -> None:
    ps = torch.tensor([1.0, 0.3, 0.05, 0.01])
    n_features = 6
    prob = ps[:, None].expand(-1, n_features).clone()
    dist = FeatureDistribution(prob, torch.ones_like(prob))
    x = sample(dist, seed=1)
    assert x.shape == (N_SAMPLES, 4, n_features)
    assert x.min() >= 0 and x.max() <= 1
    on = x != 0
    frac = on.double().mean(0)  # [instances, features]
    tol = binomial_tol(prob.double(), N_SAMPLES)
    assert ((frac - prob.double()).abs() <= tol + 1e-9).all(), frac
    # Nonzero values are uniform on [0, 1]: mean 1/2, second moment 1/3, per instance.
    for k in range(4):
        vals = x[:, k][on[:, k]].double()
        se = math.sqrt(1 / 12 / vals.numel())
        assert abs(float(vals.mean()) - 0.5) < 5 * se
        assert abs(float(vals.square().mean()) - 1 / 3) < 5 * se
        # Roughly flat histogram.
        hist = torch.histc(vals, bins=4, min=0, max=1) / vals.numel()
        assert (hist - 0.25).abs().max() < 0.02
    # Features of one instance are independent: P(both on) = p².
    both = (on[:, 1, 0] & on[:, 1, 1]).double().mean()
    assert abs(float(both) - 0.09) < 5 * math.sqrt(0.09 * 0.91 / N_SAMPLES)


def test_signed_features_for_abs_model() -> None:
    prob = torch.tensor([[0.2] * 5, [0.05] * 5])
    dist = FeatureDistribution(prob, torch.ones_like(prob), signed=True)
    x = sample(dist, seed=2)
    assert x.min() >= -1 and x.max() <= 1
    on = x != 0
    frac = on.double().mean(0)
    assert ((frac - prob.double()).abs() <= binomial_tol(prob.double(), N_SAMPLES)).all()
    for k in range(2):
        vals = x[:, k][on[:, k]].double()
        se_mean = math.sqrt(1 / 3 / vals.numel())
        assert abs(float(vals.mean())) < 5 * se_mean
        assert abs(float(vals.abs().mean()) - 0.5) < 5 * math.sqrt(1 / 12 / vals.numel())
        # Both signs equally often.
        assert abs(float((vals > 0).double().mean()) - 0.5) < 5 * math.sqrt(0.25 / vals.numel())


def test_correlated_sets_fire_together() -> None:
    # 2 correlated sets of 3, then 2 independent features; two instances, different p.
    prob = torch.tensor([[0.1] * 8, [0.4] * 8])
    dist = FeatureDistribution(prob, torch.ones_like(prob), correlated_sets=2, set_size=3)
    x = sample(dist, seed=3)
    on = x != 0
    for k, p in enumerate([0.1, 0.4]):
        for s in range(2):
            members = on[:, k, 3 * s : 3 * s + 3]
            count = members.sum(-1)
            # All members zero or all nonzero, never a mix.
            assert bool(((count == 0) | (count == 3)).all())
            set_on = float((count == 3).double().mean())
            assert abs(set_on - p) < 5 * math.sqrt(p * (1 - p) / N_SAMPLES)
            # Each active member has its own magnitude, uniform on [0, 1].
            vals = x[:, k, 3 * s : 3 * s + 3][count == 3].double()
            assert abs(float(vals.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / vals.numel())
            assert not torch.equal(vals[:, 0], vals[:, 1])
            corr = torch.corrcoef(vals.T)[0, 1]
            assert abs(float(corr)) < 0.05
        # Different sets are independent of each other.
        a, b = on[:, k, 0], on[:, k, 3]
        both = float((a & b).double().mean())
        assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / N_SAMPLES)
        # The independent features after the sets keep density p.
        frac = on[:, k, 6:].double().mean(0)
        assert (frac - p).abs().max() < 5 * math.sqrt(p * (1 - p) / N_SAMPLES)


def test_anticorrelated_sets_never_overlap() -> None:
    # 1 correlated pair, then 2 anticorrelated pairs, then 1 independent feature.
    k = 2
    prob = torch.tensor([[0.3] * 7, [0.05] * 7])
    dist = FeatureDistribution(
        prob, torch.ones_like(prob), correlated_sets=1, anticorrelated_sets=2, set_size=k
    )
    x = sample(dist, seed=4)
    on = x != 0
    assert x.min() >= 0 and x.max() <= 1
    for i, p in enumerate([0.3, 0.05]):
        # the correlated pair
        count = on[:, i, 0:2].sum(-1)
        assert bool(((count == 0) | (count == 2)).all())
        for s in range(2):
            lo = 2 + k * s
            members = on[:, i, lo : lo + k]
            count = members.sum(-1)
            assert int(count.max()) <= 1, "two members of an anticorrelated set were active"
            set_on = float((count == 1).double().mean())
            assert abs(set_on - p) < 5 * math.sqrt(p * (1 - p) / N_SAMPLES)
            # The active member is chosen uniformly: each member on with probability p / k.
            frac = members.double().mean(0)
            q = p / k
            assert (frac - q).abs().max() < 5 * math.sqrt(q * (1 - q) / N_SAMPLES)
            vals = x[:, i, lo : lo + k][members].double()
            assert abs(float(vals.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / vals.numel())
            assert abs(float(vals.square().mean()) - 1 / 3) < 5 * math.sqrt(0.09 / vals.numel())
        # The two anticorrelated sets are independent of each other.
        a = on[:, i, 2:4].any(-1)
        b = on[:, i, 4:6].any(-1)
        both = float((a & b).double().mean())
        assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / N_SAMPLES)
        assert abs(float(on[:, i, 6].double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / N_SAMPLES)


def test_importance_and_probability_from_config() -> None:
    cfg = ToyDataConfig(feature_probability=[1.0, 0.1, 0.01], importance_decay=0.7, repeats=2)
    dist = FeatureDistribution.from_config(cfg, n_features=20, repeats_each=3)
    # Instances ordered (probability, repeat, restart): 3 values × 2 repeats × 3 restarts.
    assert dist.probability.shape == (18, 20)
    expected_p = torch.tensor([1.0, 0.1, 0.01]).repeat_interleave(6)
    assert torch.equal(dist.probability[:, 7], expected_p)
    assert torch.equal(dist.probability, dist.probability[:, :1].expand(-1, 20))
    expected_i = torch.tensor([0.7**i for i in range(20)])
    torch.testing.assert_close(dist.importance, expected_i.expand(18, 20))
    assert dist.importance[0, 0] == 1.0
    assert dist.importance[0, 19] == pytest.approx(0.7**19)

    uniform = FeatureDistribution.from_config(ToyDataConfig(), n_features=4)
    assert torch.equal(uniform.importance, torch.ones(1, 4))

    explicit = ToyDataConfig(
        feature_probability=[0.5],
        importance=[3.0, 2.0, 1.0],
        relative_density=[1.0, 0.5, 4.0],
    )
    d = FeatureDistribution.from_config(explicit, n_features=3)
    assert d.importance.tolist() == [[3.0, 2.0, 1.0]]
    # relative density multiplies p, capped at 1.
    assert d.probability.tolist() == [[0.5, 0.25, 1.0]]

    signed = FeatureDistribution.from_config(cfg, n_features=20, signed=True)
    assert signed.signed and signed.n_instances == 6


def test_sampling_is_seeded() -> None:
    prob = torch.tensor([[0.3] * 6, [0.02] * 6])
    dist = FeatureDistribution(
        prob, torch.ones_like(prob), correlated_sets=1, anticorrelated_sets=1, set_size=2
    )
    a = sample(dist, seed=7, n=4096)
    b = sample(dist, seed=7, n=4096)
    c = sample(dist, seed=8, n=4096)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # A generator continues its stream: two draws in a row differ, and replaying them matches.
    g = torch.Generator().manual_seed(9)
    first, second = dist.sample(512, g), dist.sample(512, g)
    g.manual_seed(9)
    assert torch.equal(dist.sample(512, g), first)
    assert torch.equal(dist.sample(512, g), second)
    assert not torch.equal(first, second)


def test_samples_are_stored_instance_major_with_the_batch_major_numbers() -> None:
    """The layout is storage only: the values are the ones the same seed gave when samples
    were stored batch-major (u < p on/off, u / p magnitude, from one torch.rand draw)."""
    prob = torch.tensor([[1.0] * 5, [0.3] * 5, [0.01] * 5])
    dist = FeatureDistribution(prob, torch.ones_like(prob))
    x = dist.sample(257, torch.Generator().manual_seed(3))
    u = torch.rand((257, 3, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, (u / prob).mul_(u < prob))
    assert x.permute(1, 2, 0).is_contiguous()  # [instances, features, batch] in memory
    assert instance_major(x).data_ptr() == x.data_ptr()  # already so: no copy
    assert torch.equal(instance_major(u), u) and not instance_major(u).is_contiguous()


def test_training_batches_of_several_blocks_are_stored_instance_major() -> None:
    """Blocks joined along the batch (``train.data_shards`` > 1) come back in the layout the
    products read, with the same numbers."""
    from sae.run.config_io import from_dict
    from toymodels.config import ToyConfig
    from toymodels.lightning_module import ToyModelModule

    config = {
        "model": {"kind": "relu_output", "n_features": 5, "n_hidden": 2},
        "data": {"feature_probability": [1.0, 0.3]},
        "train": {"batch_size": 64, "data_shards": 4},
        "wandb": {"enabled": False},
    }
    module = ToyModelModule(from_dict(ToyConfig, config))
    x = module.draw_batch(3)
    assert x.shape == (64, 2, 5) and x.permute(1, 2, 0).is_contiguous()
    blocks = [module.blocks.block(3, shard, 16, x.device) for shard in range(4)]
    assert torch.equal(x, torch.cat(blocks))


@pytest.mark.parametrize("kind", ["linear", "relu_output", "relu_hidden", "abs"])
def test_models_read_either_layout(kind: str) -> None:
    model = build_model(kind, 3, 7, 2, seed=1)
    x = torch.rand(64, 3, 7, generator=torch.Generator().manual_seed(4))
    batch_major, stored = model(x), model(instance_major(x))
    for a, b in zip(batch_major, stored):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_model_init_is_seeded() -> None:
    a = build_model("relu_output", 3, 20, 5, seed=4)
    b = build_model("relu_output", 3, 20, 5, seed=4)
    c = build_model("relu_output", 3, 20, 5, seed=5)
    assert torch.equal(a.W, b.W) and not torch.equal(a.W, c.W)
    assert torch.equal(a.b, torch.zeros(3, 20))
    # Xavier normal: std sqrt(2 / (n + m)).
    assert float(a.W.std()) == pytest.approx(math.sqrt(2 / 25), rel=0.1)


# -- loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "relu_output", "relu_hidden", "abs"])
def test_loss_at_zero_weights(kind: str) -> None:
    """With W = 0, b = 0 the output is 0, so the per-instance loss is the mean over features of
    I_f · E[x_f²] = I_f · p / 3 (also for the signed inputs of abs, whose target is |x|)."""
    ps = torch.tensor([1.0, 0.3, 0.05])
    n = 10
    prob = ps[:, None].expand(-1, n).clone()
    importance = (0.8 ** torch.arange(n, dtype=torch.float32)).expand(3, n).clone()
    dist = FeatureDistribution(prob, importance, signed=kind == "abs")
    model = build_model(kind, 3, n, 4, seed=0)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    x = sample(dist, seed=5)
    out = model(x).output
    assert torch.equal(out, torch.zeros_like(out))
    loss = weighted_loss(out, model.target(x), dist.importance).double()
    expected = importance[0].double().mean() * ps.double() / 3
    # Standard error of the batch mean of Σ_f I_f x_f² / n (uniform x: Var(x²) ≤ p/5).
    se = (importance[0].double().square().sum() * ps.double() / 5).sqrt() / n / math.sqrt(N_SAMPLES)
    assert ((loss - expected).abs() < 5 * se).all(), (loss, expected)


def test_weighted_loss_definition() -> None:
    g = torch.Generator().manual_seed(0)
    out, target = torch.rand(7, 2, 4, generator=g), torch.rand(7, 2, 4, generator=g)
    importance = torch.tensor([[1.0, 0.5, 0.25, 0.125], [2.0, 2.0, 2.0, 2.0]])
    loss = weighted_loss(out, target, importance)
    for k in range(2):
        manual = sum(
            importance[k, f] * (out[b, k, f] - target[b, k, f]) ** 2
            for b in range(7)
            for f in range(4)
        ) / (7 * 4)
        assert float(loss[k]) == pytest.approx(float(manual), rel=1e-5)


def test_weighted_loss_gradient_matches_autograd_of_its_formula() -> None:
    g = torch.Generator().manual_seed(1)
    out = torch.rand(9, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(9, 3, 5, generator=g, dtype=torch.float64)
    importance = torch.rand(3, 5, generator=g, dtype=torch.float64)
    weights = torch.rand(3, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((weighted_loss(out, target, importance) * weights).sum(), out)
    formula = (importance * (out - target).square()).mean(dim=(0, 2))
    (expected,) = torch.autograd.grad((formula * weights).sum(), out)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)


# -- instances do not interact ---------------------------------------------------------------


def single_instance(model: torch.nn.Module, k: int) -> torch.nn.Module:
    kind = model.kind
    n, m = model.feature_weights.shape[1:]
    alone = build_model(kind, 1, n, m)
    alone.load_state_dict({name: v[k : k + 1].clone() for name, v in model.state_dict().items()})
    return alone


@pytest.mark.parametrize("kind", ["linear", "relu_output", "relu_hidden", "abs"])
def test_gradients_do_not_mix_across_instances(kind: str) -> None:
    n, m = 12, 4
    prob = torch.tensor([[1.0] * n, [0.1] * n, [0.02] * n])
    importance = (0.9 ** torch.arange(n, dtype=torch.float32)).expand(3, n).clone()
    dist = FeatureDistribution(prob, importance, signed=kind == "abs")
    model = build_model(kind, 3, n, m, seed=1)
    with torch.no_grad():
        model.b.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    x = sample(dist, seed=6, n=2048)
    weighted_loss(model(x).output, model.target(x), dist.importance).sum().backward()
    for k in range(3):
        alone = single_instance(model, k)
        xk = x[:, k : k + 1]
        weighted_loss(alone(xk).output, alone.target(xk), dist.importance[k : k + 1]).backward()
        for name, p in model.named_parameters():
            g_alone = dict(alone.named_parameters())[name].grad
            assert p.grad[k].abs().max() > 0
            torch.testing.assert_close(p.grad[k : k + 1], g_alone, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", ["relu_output", "abs"])
def test_training_instances_together_equals_alone(kind: str) -> None:
    """A few AdamW steps (the training optimizer) on a 3-instance model give each instance the
    weights it gets when trained alone on the same data."""
    n, m, steps = 10, 3, 25
    prob = torch.tensor([[1.0] * n, [0.2] * n, [0.03] * n])
    importance = (0.8 ** torch.arange(n, dtype=torch.float32)).expand(3, n).clone()
    dist = FeatureDistribution(prob, importance, signed=kind == "abs")
    batches = [sample(dist, seed=100 + s, n=256) for s in range(steps)]

    def train(model: torch.nn.Module, cols: slice) -> torch.nn.Module:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        for x in batches:
            xs = x[:, cols]
            loss = weighted_loss(model(xs).output, model.target(xs), dist.importance[cols])
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
        return model

    together = build_model(kind, 3, n, m, seed=3)
    initial = {name: v.clone() for name, v in together.state_dict().items()}
    alone = [single_instance(together, k) for k in range(3)]
    train(together, slice(None))
    for k in range(3):
        trained = train(alone[k], slice(k, k + 1))
        for name, v in together.state_dict().items():
            assert not torch.equal(v[k], initial[name][k]), "the weights did not move"
            torch.testing.assert_close(v[k : k + 1], trained.state_dict()[name])


def test_tied_model_forward_matches_paper_equations() -> None:
    model = TiedToyModel("relu_output", 2, 6, 3, seed=0)
    with torch.no_grad():
        model.b.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(1))
    x = torch.rand(5, 2, 6, generator=torch.Generator().manual_seed(2))
    h, out = model(x)
    for k in range(2):
        W = model.W[k].T  # paper's W: [m, n], column i is feature i
        hk = x[:, k] @ W.T
        torch.testing.assert_close(h[:, k], hk)
        torch.testing.assert_close(out[:, k], torch.relu(x[:, k] @ (W.T @ W) + model.b[k]))


# -- per-instance settings -------------------------------------------------------------------


def test_importance_and_density_sweeps_cross_with_probability() -> None:
    from sae.run.config_io import from_dict
    from toymodels.config import ToyConfig

    config = from_dict(
        ToyConfig,
        {
            "model": {"n_features": 2, "n_hidden": 1},
            "data": {
                "feature_probability": [1.0, 0.1],
                "importance_sweep": [[1.0, 0.5], [1.0, 4.0]],
                "relative_density_sweep": [[1.0, 1.0], [1.0, 0.5]],
                "repeats": 2,
            },
        },
    )
    assert config.n_instances == 16
    settings = config.instance_settings()
    # Order: probability, importance vector, density vector, repeat.
    assert [
        (s.feature_probability, s.importance[1], s.relative_density[1], s.repeat)
        for s in settings[:5]
    ] == [
        (1.0, 0.5, 1.0, 0),
        (1.0, 0.5, 1.0, 1),
        (1.0, 0.5, 0.5, 0),
        (1.0, 0.5, 0.5, 1),
        (1.0, 4.0, 1.0, 0),
    ]
    dist = FeatureDistribution.from_config(config.data, 2, repeats_each=3)  # 3 restarts each
    assert dist.probability.shape == (48, 2)
    # Setting 11 = (0.1, importance [1, 0.5], density [1, 0.5], repeat 1); its restarts follow.
    assert settings[11][:4] == (0.1, [1.0, 0.5], [1.0, 0.5], 1)
    k = 3 * 11
    torch.testing.assert_close(dist.probability[k : k + 3], torch.tensor([[0.1, 0.05]] * 3))
    torch.testing.assert_close(dist.importance[k : k + 3], torch.tensor([[1.0, 0.5]] * 3))
    assert settings[15][:4] == (0.1, [1.0, 4.0], [1.0, 0.5], 1)
    torch.testing.assert_close(dist.importance[3 * 15], torch.tensor([1.0, 4.0]))


def test_configs_without_sweeps_mean_what_they_meant() -> None:
    data = ToyDataConfig(feature_probability=[0.5, 0.2], importance_decay=0.5, repeats=2)
    dist = FeatureDistribution.from_config(data, 3)
    torch.testing.assert_close(dist.probability[:, 0], torch.tensor([0.5, 0.5, 0.2, 0.2]))
    torch.testing.assert_close(dist.importance, torch.tensor([[1.0, 0.5, 0.25]] * 4))


def test_a_sweep_vector_of_the_wrong_length_is_refused() -> None:
    from sae.run.config_io import from_dict
    from sae.run.errors import UsageError
    from toymodels.config import ToyConfig

    model = {"n_features": 3, "n_hidden": 2}
    with pytest.raises((UsageError, ValueError), match=r"importance_sweep\[1\] needs 3 values"):
        from_dict(ToyConfig, {"model": model, "data": {"importance_sweep": [[1, 1, 1], [1, 2]]}})
    with pytest.raises((UsageError, ValueError), match="relative_density_sweep values must be > 0"):
        from_dict(ToyConfig, {"model": model, "data": {"relative_density_sweep": [[1, 0, 1]]}})
