"""Dead-latent resampling: the rewrite itself, revival during training, and the pentagon
experiment (an SAE with 5 latents on the n=5, m=2 toy model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic import file_source, planted_features, sae_config, write_planted_file

from cli.main import cli, run_cli
from cli.sources import build_source
from sae.io import load_sae
from sae.lightning_module import SAEModule
from sae.metrics import evaluate_dictionary
from sae.model import SparseAutoencoder
from sae.resampling import resample_dead_latents
from sae.run.metrics_log import read_metrics
from sae.run.optim import InstanceAdam
from sae.train import train_saes
from toymodels.export import ToyActivationSource

D_IN, D_SAE = 6, 10


def _trained_state(recipe: str, tied: bool = False) -> tuple[SparseAutoencoder, InstanceAdam]:
    """An SAE after two optimizer steps, so Adam has state everywhere."""
    sae = SparseAutoencoder(2, D_IN, D_SAE, recipe, tied, seeds=[0, 1])
    opt = InstanceAdam(sae.parameters(), torch.tensor([1e-2, 1e-2]))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(64, D_IN, generator=g)
        out = sae(x)
        (out.reconstruction + 0.1 * out.sparsity).sum().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        sae.b_dec.add_(0.1)
    return sae, opt


def _snapshot(sae: SparseAutoencoder, opt: InstanceAdam) -> dict[str, torch.Tensor]:
    snap = {n: p.detach().clone() for n, p in sae.named_parameters()}
    for n, p in sae.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            snap[f"{n}.{key}"] = opt.state[p][key].clone()
    return snap


@pytest.mark.parametrize(
    "recipe,method,tied",
    [
        ("april2024", "anthropic", False),
        ("constrained", "anthropic", False),
        ("april2024", "simple", False),
        ("constrained", "simple", True),
    ],
)
def test_resample_rewrites_dead_latents_only(recipe: str, method: str, tied: bool) -> None:
    sae, opt = _trained_state(recipe, tied)
    before = _snapshot(sae, opt)
    dead = torch.zeros(2, D_SAE, dtype=torch.bool)
    dead[0, [1, 4, 7]] = True  # instance 1 has no dead latents
    inputs = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(1))
    n = resample_dead_latents(
        sae, opt, dead, inputs, method, torch.Generator().manual_seed(2), encoder_scale=0.2
    )
    assert n.tolist() == [3, 0]
    alive = ~dead
    after = _snapshot(sae, opt)

    # Live latents, b_dec and the whole of instance 1 are untouched, bit for bit (weights and
    # Adam moments).
    for key in before:
        old, new = before[key], after[key]
        if key.startswith("W_enc"):
            assert torch.equal(old.transpose(1, 2)[alive], new.transpose(1, 2)[alive]), key
        elif key.startswith(("W_dec", "b_enc")):
            assert torch.equal(old[alive], new[alive]), key
        else:  # b_dec
            assert torch.equal(old, new), key
        assert torch.equal(old[1], new[1]), key

    # Dead latents: b_enc 0, Adam moments 0, decoder rows of the mean alive norm.
    assert not sae.b_enc[dead].any()
    for name in ("W_enc", "b_enc") + (() if tied else ("W_dec",)):
        for key in ("exp_avg", "exp_avg_sq"):
            moment = after[f"{name}.{key}"]
            moment = moment.transpose(1, 2) if name == "W_enc" else moment
            assert not moment[dead].any(), (name, key)
    dec = sae.decoder[0]
    old_dec = before["W_enc"].transpose(1, 2)[0] if tied else before["W_dec"][0]
    expected_norm = 1.0 if recipe == "constrained" else old_dec.norm(dim=-1)[alive[0]].mean()
    torch.testing.assert_close(
        dec[dead[0]].norm(dim=-1), torch.full((3,), float(expected_norm)), atol=1e-6, rtol=1e-6
    )
    directions = dec[dead[0]] / dec[dead[0]].norm(dim=-1, keepdim=True)
    assert not torch.equal(dec[dead[0]], old_dec[dead[0]])
    if method == "anthropic":
        # Every new direction is one of the candidate inputs.
        unit_inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        best = (directions @ unit_inputs.T).max(dim=1).values
        torch.testing.assert_close(best, torch.ones(3), atol=1e-5, rtol=0)
    if not tied:
        # The encoder row is the same direction, scaled to encoder_scale × mean alive norm.
        enc = sae.W_enc[0].T[dead[0]]
        old_enc_norm = before["W_enc"][0].norm(dim=0)[alive[0]].mean()
        torch.testing.assert_close(enc, directions * 0.2 * old_enc_norm, atol=1e-6, rtol=1e-5)


def test_anthropic_resampling_prefers_badly_reconstructed_inputs() -> None:
    """Inputs are drawn with probability ∝ loss²: one input far worse than the rest wins."""
    sae = SparseAutoencoder(1, D_IN, D_SAE, "constrained", seeds=[0])
    inputs = 1e-3 * torch.randn(100, D_IN, generator=torch.Generator().manual_seed(3))
    inputs[37] = torch.tensor([0.0, 0.0, 50.0, 0.0, 0.0, 0.0])
    dead = torch.ones(1, D_SAE, dtype=torch.bool)
    resample_dead_latents(sae, None, dead, inputs, "anthropic", torch.Generator().manual_seed(0))
    target = inputs[37] / inputs[37].norm()
    torch.testing.assert_close(sae.decoder[0], target.expand(D_SAE, -1), atol=1e-6, rtol=0)


def _kill_at_start(monkeypatch: pytest.MonkeyPatch, latents: list[int]) -> None:
    """Switch ``latents`` off in every instance once the run has initialised (b_enc = -100:
    no input makes them fire, so they get no gradient and stay dead unless resampled)."""
    original = SAEModule.initialize_from_data

    def initialize_and_kill(self: SAEModule) -> None:
        original(self)
        with torch.no_grad():
            self.sae.b_enc[:, latents] = -100.0

    monkeypatch.setattr(SAEModule, "initialize_from_data", initialize_and_kill)


@pytest.mark.parametrize("method", ["anthropic", "simple"])
def test_latents_forced_dead_are_revived_during_training(tmp_path, monkeypatch, method) -> None:
    """Latents switched off at the start (b_enc = -100) never fire without resampling and fire
    again after it."""
    path = tmp_path / "planted.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=8192, p=0.1, seed=2)
    killed = [0, 3, 5, 9]
    _kill_at_start(monkeypatch, killed)
    # Fresh inputs from the same features (same seed, more rows; the first rows differ).
    x = planted_features(n_features=16, d=8, n_rows=16_384, p=0.1, seed=2).activations
    fired = {}
    for resample in ("none", method):
        config = sae_config(
            sae={"d_sae": 24, "recipe": "constrained", "b_dec_init": "zeros"},
            sweep={"l1_coefficient": [0.1, 0.3], "lr": [3e-3], "seed": [0, 1]},
            # no warm-ups (the defaults have them since the one-pass recipe): the schedule
            # this test was measured with
            train={"steps": 400, "batch_size": 128, "log_every": 50}
            | {"lr_warmup_steps": 0, "l1_warmup_steps": 0},
            resample={"method": resample, "every": 100, "window": 50, "samples": 1024},
        )
        out = tmp_path / resample
        folders = train_saes(config, file_source(path, config), out)
        fired[resample] = torch.stack(
            [(load_sae(f).encode(x) > 0).float().mean(0) for f in folders]
        )
        if resample != "none":
            last = read_metrics(out)[-1]
            assert all(last[f"resampled/instance_{k}"] >= len(killed) for k in range(2))
    assert not fired["none"][:, killed].any()
    # Every killed latent fires again, and as a group about as often as the others.
    revived = fired[method][:, killed]
    others = fired[method][:, [i for i in range(24) if i not in killed]]
    assert (revived > 0).all(), revived
    assert (revived.mean(1) > 0.3 * others.mean(1)).all(), (revived, others)


# -- the pentagon: 5 features in 2 dimensions, an SAE with 5 latents, 8 seeds ---------------
#
# Measured (toy model below; SAE: constrained recipe, b_dec 0, lr 1e-3, batch 1024, 5000
# steps, anthropic resampling every 1000 steps over a 500-step window until step 3000):
#
# - Natural start, λ = 0.5: 8/8 seeds recover all 5 features at cosine > 0.99; λ = 1.0: 3/8.
#   No latent is ever dead, so resampling never fires and the runs equal runs without it. A
#   10k-step grid (constrained and april2024, b_dec zeros and mean, λ 0.3-1.5, lr 1e-3 and
#   1e-2, 8 seeds each) found the same: latents died only under april2024 with lr 1e-2 and
#   λ >= 1, where resampling moved 2 -> 3 of 8 (λ 1.5, b_dec 0), 1 -> 2 (λ 1.5, mean) and
#   2 -> 3 (λ 1.0, mean). The failures at large λ are two latents sharing one feature while
#   another feature has none: a stable state without a dead latent, which resampling cannot
#   see. (The SAE starts with W_enc = W_decᵀ, so every latent fires on some feature.)
# - Two of the 5 latents dead from the start: without resampling 0/8 (3 live latents cannot
#   cover 5 features); with anthropic resampling λ = 0.3: 8/8 (7/8 on a toy model trained
#   10k steps), λ = 0.5: 3/8 (6/8), λ = 0.7: 4/8 (7/8). Where it fails, a live latent settled
#   between two features (cos ≈ 0.8 with both) before the dead ones were revived.

PENTAGON_SAE = {
    "sae": {"d_sae": 5, "recipe": "constrained", "b_dec_init": "zeros"},
    # lr 1e-3 and no warm-ups, as measured (configs/sae/pentagon.yaml; the code defaults are
    # the one-pass recipe's since)
    "train": {"steps": 5000, "batch_size": 1024, "log_every": 500}
    | {"lr_warmup_steps": 0, "l1_warmup_steps": 0},
}
PENTAGON_RESAMPLE = {"method": "anthropic", "every": 1000, "window": 500, "stop_after": 3000}
SEEDS = list(range(8))


@pytest.fixture(scope="module")
def pentagon_toy(tmp_path_factory) -> tuple[Path, ToyActivationSource]:
    """A ReLU-output toy model, n = 5 features, m = 2, 1 − S = 0.025, uniform importance."""
    out = tmp_path_factory.mktemp("pentagon") / "toy"
    code = run_cli(cli.main, [
        "toy", "train", "--out", str(out),
        "--set", "model.kind=relu_output", "--set", "model.n_features=5",
        "--set", "model.n_hidden=2", "--set", "data.feature_probability=[0.025]",
        "--set", "data.importance_decay=1.0", "--set", "train.steps=3000",
        "--set", "train.batch_size=1024", "--set", "train.seed=0",
        "--set", "runtime.threads=1", "--set", "runtime.progress_bar=false",
        "--set", "wandb.enabled=false",
    ])  # fmt: skip
    assert code == 0
    toy = ToyActivationSource(out, 0)
    # The features form a regular pentagon: neighbours 72° apart.
    angles = torch.atan2(toy.ground_truth[:, 1], toy.ground_truth[:, 0]).sort().values
    gaps = torch.rad2deg(torch.cat([angles.diff(), angles[:1] + 2 * torch.pi - angles[-1:]]))
    assert (gaps - 72).abs().max() < 3, gaps
    return out, toy


def _pentagon_run(pentagon, out: Path, l1: list[float], resample: dict) -> list[dict]:
    """One batched run, instances (λ, seed) for λ in ``l1`` and 8 seeds; per instance: λ, the
    worst feature's best cosine, latents matched to each feature at cos > 0.99, dead latents,
    resampled latents."""
    toy_dir, toy = pentagon
    combos = [(lam, seed) for lam in l1 for seed in SEEDS]
    config = sae_config(
        **PENTAGON_SAE,
        sweep={
            "l1_coefficient": [c[0] for c in combos],
            "seed": [c[1] for c in combos],
            "lr": [1e-3],
        },
        resample=resample,
        data={"toy_dir": str(toy_dir)},
    )
    source, info = build_source(config)
    folders = train_saes(config, source, out, source_info=info)
    last = read_metrics(out)[-1]
    x, _ = toy.sample(50_000, torch.Generator().manual_seed(7))
    results = []
    for k, (folder, (lam, seed)) in enumerate(zip(folders, combos)):
        loaded = load_sae(folder)
        cos = evaluate_dictionary(toy.ground_truth, loaded.W_dec).cos
        results.append(
            {
                "l1": lam,
                "seed": seed,
                "worst": float(cos.max(dim=1).values.min()),
                "latents_per_feature": (cos > 0.99).sum(dim=1).tolist(),
                "dead": int(((loaded.encode(x) > 0).sum(0) == 0).sum()),
                "resampled": last[f"resampled/instance_{k}"],
            }
        )
    return results


def _recovered(results: list[dict], lam: float) -> int:
    return sum(r["worst"] > 0.99 for r in results if r["l1"] == lam)


@pytest.mark.slow
def test_pentagon_sae_recovers_all_features_and_fails_by_duplication(pentagon_toy, tmp_path):
    results = _pentagon_run(pentagon_toy, tmp_path, [0.5, 1.0], PENTAGON_RESAMPLE)
    print({lam: _recovered(results, lam) for lam in (0.5, 1.0)})  # measured 8, 3
    assert _recovered(results, 0.5) >= 7
    assert _recovered(results, 1.0) <= 5
    # No latent ever died, so resampling never fired: these are the runs without it too.
    assert all(r["resampled"] == 0 and r["dead"] == 0 for r in results), results
    # Every failure is a duplicate: one feature with two latents, another with none.
    for r in results:
        if r["worst"] <= 0.99:
            assert sorted(r["latents_per_feature"]) == [0, 1, 1, 1, 2], r


@pytest.mark.slow
def test_pentagon_resampling_revives_latents_dead_from_the_start(
    pentagon_toy, tmp_path, monkeypatch
) -> None:
    _kill_at_start(monkeypatch, [0, 1])
    with_resampling = _pentagon_run(pentagon_toy, tmp_path / "with", [0.3], PENTAGON_RESAMPLE)
    without = _pentagon_run(pentagon_toy, tmp_path / "without", [0.3], {"method": "none"})
    print(_recovered(with_resampling, 0.3), _recovered(without, 0.3))  # measured 8, 0
    assert _recovered(without, 0.3) == 0
    assert all(r["dead"] == 2 for r in without)
    assert _recovered(with_resampling, 0.3) >= 6
    assert all(r["resampled"] >= 2 and r["dead"] == 0 for r in with_resampling)
