"""The batched SAE module, its optimizer and its persistence, checked against plain formulas."""

from __future__ import annotations

import pytest
import torch

from sae.io import load_sae, save_sae
from sae.model import SparseAutoencoder
from sae.run.optim import InstanceAdam


def _random_sae(recipe: str = "april2024", n_instances: int = 3, tied: bool = False):
    sae = SparseAutoencoder(n_instances, 6, 10, recipe, tied, seeds=[3, 4, 5][:n_instances])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return sae


@pytest.mark.parametrize("recipe", ["april2024", "constrained"])
def test_forward_matches_the_formulas(recipe: str) -> None:
    sae = _random_sae(recipe)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(2))
    out = sae(x)
    for k in range(sae.n_instances):
        W_enc, W_dec, b_enc, b_dec = sae.W_enc[k], sae.W_dec[k], sae.b_enc[k], sae.b_dec[k]
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        x_hat = f @ W_dec + b_dec
        torch.testing.assert_close(out.codes[k], f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.x_hat[k], x_hat, atol=1e-5, rtol=1e-5)
        recon = (x - x_hat).square().sum(-1).mean()
        torch.testing.assert_close(out.reconstruction[k], recon, atol=1e-5, rtol=1e-5)
        if recipe == "april2024":
            sparsity = (f * W_dec.norm(dim=-1)).sum(-1).mean()
        else:
            sparsity = f.sum(-1).mean()
        torch.testing.assert_close(out.sparsity[k], sparsity, atol=1e-5, rtol=1e-5)


def test_initialisation_per_recipe_and_per_seed() -> None:
    april = SparseAutoencoder(2, 8, 12, "april2024", seeds=[7, 9], decoder_init_norm=0.1)
    torch.testing.assert_close(april.W_dec.norm(dim=-1), torch.full((2, 12), 0.1))
    assert torch.equal(april.W_enc, april.W_dec.transpose(1, 2))
    assert not april.b_enc.any() and not april.b_dec.any()
    constrained = SparseAutoencoder(2, 8, 12, "constrained", seeds=[7, 9])
    torch.testing.assert_close(constrained.W_dec.norm(dim=-1), torch.ones(2, 12))
    # Instance k depends on its own seed only: a sweep member starts as it would alone.
    alone = SparseAutoencoder(1, 8, 12, "april2024", seeds=[9], decoder_init_norm=0.1)
    assert torch.equal(april.W_dec[1], alone.W_dec[0])
    assert not torch.equal(april.W_dec[0], april.W_dec[1])


def test_instances_do_not_interact() -> None:
    """Gradients of instance k equal those of the same SAE trained alone."""
    batched = _random_sae("april2024", 3)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(4))
    out = batched(x)
    (out.reconstruction + 0.7 * out.sparsity).sum().backward()
    for k in range(3):
        alone = SparseAutoencoder(1, 6, 10, "april2024", seeds=[0])
        alone.load_state_dict({n: p.detach()[k : k + 1] for n, p in batched.named_parameters()})
        o = alone(x)
        (o.reconstruction + 0.7 * o.sparsity).sum().backward()
        for (name, p), q in zip(batched.named_parameters(), alone.parameters()):
            torch.testing.assert_close(p.grad[k], q.grad[0], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("tied", [False, True])
def test_constrained_decoder_step_keeps_unit_rows(tied: bool) -> None:
    sae = SparseAutoencoder(2, 6, 10, "constrained", tied, seeds=[0, 1])
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(5))
    out = sae(x)
    (out.reconstruction + out.sparsity).sum().backward()
    sae.remove_parallel_decoder_grad()
    grad = sae.W_enc.grad.transpose(1, 2) if tied else sae.W_dec.grad
    assert grad.abs().max() > 0
    parallel = (grad * sae.decoder).sum(-1)
    assert parallel.abs().max() < 1e-6
    with torch.no_grad():
        for p in sae.parameters():
            p -= 0.1 * p.grad
    sae.normalize_decoder()
    torch.testing.assert_close(sae.decoder.norm(dim=-1), torch.ones(2, 10), atol=1e-6, rtol=0)


def test_folded_input_scale_gives_the_same_codes_on_raw_inputs() -> None:
    sae = _random_sae("april2024", 2)
    c = 3.7
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(6))
    for k in range(2):
        w = sae.instance_weights(k, input_scale=c)
        folded = SparseAutoencoder(1, 6, 10, "april2024", seeds=[0])
        folded.load_state_dict({n: v[None] for n, v in w.items()})
        torch.testing.assert_close(folded.encode(x)[0], sae.encode(c * x)[k], atol=1e-5, rtol=1e-5)
        # Reconstructions come back in the raw scale.
        torch.testing.assert_close(
            folded(x).x_hat[0], sae(c * x).x_hat[k] / c, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("recipe", ["april2024", "constrained"])
def test_save_and_load_are_bit_identical(tmp_path, recipe: str) -> None:
    sae = _random_sae(recipe, 2)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(7))
    cfg = {"recipe": recipe, "note": "test"}
    save_sae(tmp_path / "sae", sae.instance_weights(1), cfg)
    loaded = load_sae(tmp_path / "sae")
    # our fields as given, after SAELens's (tests/test_saelens_interop.py checks those)
    assert {k: loaded.cfg[k] for k in cfg} == cfg and loaded.recipe == recipe
    assert loaded.cfg["architecture"] == "standard" and loaded.cfg["dtype"] == "float32"
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name)[1]), name
    codes = loaded.encode(x)
    assert torch.equal(codes, sae.encode(x)[1])
    assert torch.equal(loaded.decode(codes), sae.decode(sae.encode(x))[1])


def test_instance_adam_per_instance_rate_clip_and_reset() -> None:
    """Instance k's update uses lr[k] and its own clip; reset_state zeroes chosen rows."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4, 5))
    w0 = w.detach().clone()
    grads = torch.randn(3, 4, 5) * torch.tensor([0.1, 10.0, 1.0])[:, None, None]
    lrs = torch.tensor([1e-2, 1e-3, 0.0])
    opt = InstanceAdam([w], lrs, max_grad_norm=1.0)
    w.grad = grads.clone()
    opt.step()
    for k in range(3):
        alone = torch.nn.Parameter(w0[k].clone())
        ref = torch.optim.Adam([alone], lr=float(lrs[k]) or 1e-30)
        g = grads[k] * min(1.0, 1.0 / (grads[k].norm().item() + 1e-6))
        alone.grad = g
        ref.step()
        torch.testing.assert_close(w.detach()[k], alone.detach(), atol=1e-6, rtol=1e-6)
    assert torch.equal(w.detach()[2], w0[2])  # lr 0: untouched
    mask = torch.zeros(3, 4, 1, dtype=torch.bool)
    mask[1, 2] = True
    before = {key: opt.state[w][key].clone() for key in ("exp_avg", "exp_avg_sq")}
    opt.reset_state(w, mask)
    for key, old in before.items():
        new = opt.state[w][key]
        assert not new[1, 2].any()
        keep = ~mask.expand_as(new)
        assert torch.equal(new[keep], old[keep])
