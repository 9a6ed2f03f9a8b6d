"""The SAE's hand-written backward (sae.loss) against autograd of the plain formula, in float64:
every recipe, tied and untied, with and without a width mask, one and several instances."""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES

from sae.loss import sae_forward
from sae.model import SparseAutoencoder


def _sae(recipe: str, tied: bool, widths: list[int] | None, dtype=torch.float64, device="cpu"):
    n = 3 if widths is None else len(widths)
    d_sae = 10 if widths is None else max(widths)
    sae = SparseAutoencoder(n, 6, d_sae, recipe, tied, seeds=list(range(n)), widths=widths)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        if sae.latent_mask is not None:  # a width sweep keeps its padded latents at 0
            sae.W_enc.mul_(sae.latent_mask[:, None, :])
            if sae.W_dec is not None:
                sae.W_dec.mul_(sae.latent_mask[:, :, None])
    return sae.to(device=device, dtype=dtype)


def _on(device: str, weights: tuple) -> tuple:
    return tuple(w.to(device) if isinstance(w, torch.Tensor) else w for w in weights)


def _grads(sae: SparseAutoencoder, x: torch.Tensor, forward, weights) -> dict[str, torch.Tensor]:
    """Gradients of a loss that touches every output: Σ_i a_i rec_i + b_i sparsity_i
    + ⟨c, x̂⟩ + ⟨e, f⟩ (the last two as a caller reading x̂ or the codes would). A weight of
    None leaves its output out of the loss (the backward then gets no gradient for it)."""
    sae.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = forward(x)
    outputs = (out.reconstruction, out.sparsity, out.x_hat, out.codes)
    loss = sum((w * o).sum() for w, o in zip(weights, outputs) if w is not None)
    loss.backward()
    # No gradient (None: the loss does not reach the tensor) counts as zeros.
    named = [*sae.named_parameters(), ("x", x)]
    return {name: torch.zeros_like(t) if t.grad is None else t.grad.clone() for name, t in named}


CASES = [
    (recipe, tied, widths)
    for recipe in ("april2024", "constrained")
    for tied in (False, True)
    for widths in (None, [4, 10, 7], [5])
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("recipe", "tied", "widths"), CASES)
def test_outputs_and_gradients_equal_autograd(recipe, tied, widths, device) -> None:
    sae = _sae(recipe, tied, widths, device=device)
    n = sae.n_instances
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64).to(device)
    with torch.no_grad():
        fast, plain = sae(x), sae.reference_forward(x)
    for name, a, b in zip(fast._fields, fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert (plain.codes > 0).float().mean() > 0.2  # the ReLU mask is neither empty nor full
    assert (plain.codes > 0).float().mean() < 0.8
    weights_list = [
        # the training loss: rec + λ·sparsity per instance
        (torch.ones(n), torch.tensor([0.3, 1.7, 0.05][:n]), 0.0, 0.0),
        # every output weighted
        (
            torch.rand(n, generator=g, dtype=torch.float64),
            torch.rand(n, generator=g, dtype=torch.float64),
            torch.randn(n, 40, 6, generator=g, dtype=torch.float64),
            torch.randn(n, 40, sae.d_sae, generator=g, dtype=torch.float64),
        ),
        # the codes alone (no reconstruction or sparsity gradient)
        (None, None, None, torch.randn(n, 40, sae.d_sae, generator=g, dtype=torch.float64)),
        # the reconstruction alone, the sparsity alone
        (torch.rand(n, generator=g, dtype=torch.float64), None, None, None),
        (None, torch.rand(n, generator=g, dtype=torch.float64), None, None),
        # x̂ and the sparsity, without the reconstruction
        (None, torch.ones(n), torch.randn(n, 40, 6, generator=g, dtype=torch.float64), None),
        # the training loss with zero weights (gradients of 0, not None)
        (0.0, 0.0, 0.0, 0.0),
    ]
    for weights in weights_list:
        weights = _on(device, weights)
        fast_g = _grads(sae, x, sae, weights)
        plain_g = _grads(sae, x, sae.reference_forward, weights)
        assert fast_g.keys() == plain_g.keys()
        for name in fast_g:
            assert fast_g[name].abs().max() > 0 or plain_g[name].abs().max() == 0
            assert torch.isfinite(fast_g[name]).all()
            torch.testing.assert_close(fast_g[name], plain_g[name], rtol=1e-10, atol=1e-12)
        if sae.latent_mask is not None:  # padded latents get no gradient
            assert not fast_g["b_enc"][sae.latent_mask == 0].any()


def test_a_zero_decoder_row_gets_no_nan() -> None:
    """‖W_dec,i‖ = 0: autograd's norm gives a 0 gradient there, and so does sae.loss."""
    sae = _sae("april2024", False, None)
    with torch.no_grad():
        sae.W_dec[1, 3] = 0
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    weights = (torch.ones(3), torch.ones(3), 0.0, 0.0)
    fast_g = _grads(sae, x, sae, weights)
    plain_g = _grads(sae, x, sae.reference_forward, weights)
    for name in fast_g:
        assert torch.isfinite(fast_g[name]).all()
        torch.testing.assert_close(fast_g[name], plain_g[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precisions_match_autograd(dtype) -> None:
    sae = _sae("april2024", False, [4, 10, 7], dtype)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(3)).to(dtype)
    weights = (torch.ones(3, dtype=dtype), torch.full((3,), 0.3, dtype=dtype), 0.0, 0.0)
    fast_g = _grads(sae, x, sae, weights)
    plain_g = _grads(sae, x, sae.reference_forward, weights)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for name in fast_g:
        assert fast_g[name].dtype == dtype
        torch.testing.assert_close(fast_g[name], plain_g[name], rtol=tol, atol=tol)


def test_unknown_penalty_is_refused() -> None:
    sae = _sae("april2024", False, None)
    with pytest.raises(ValueError, match="unknown penalty"):
        sae_forward(torch.zeros(2, 6), sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, None, "l2")


def test_autocast_uses_the_plain_formula() -> None:
    """Under bf16 autocast (runtime.precision bf16-mixed) the forward is autograd's, whose
    graph follows the casts; gradients reach the float32 weights in float32."""
    sae = _sae("april2024", False, None, torch.float32)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
        plain = sae.reference_forward(x)
    assert out.codes.dtype == torch.bfloat16
    torch.testing.assert_close(out.x_hat, plain.x_hat, rtol=0, atol=0)
    (out.reconstruction + out.sparsity).sum().backward()
    assert sae.W_enc.grad.dtype == torch.float32 and sae.W_enc.grad.abs().max() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("recipe", "tied", "widths"), CASES)
def test_forward_backward_equals_autograd_bit_for_bit(recipe, tied, widths, device) -> None:
    """The training step's path (no autograd graph) gives autograd's numbers exactly, in the
    training precision, and adds to gradients already there as backward does."""
    sae = _sae(recipe, tied, widths, torch.float32, device)
    n = sae.n_instances
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(4)).to(device)
    weight = torch.tensor([0.3, 1.7, 0.05][:n], device=device)
    for accumulate in (False, True):
        expected = {}
        for path in ("autograd", "direct"):
            sae.zero_grad(set_to_none=True)
            if accumulate:
                for p in sae.parameters():
                    p.grad = torch.full_like(p, 0.5)
            if path == "autograd":
                out = sae(x)
                (out.reconstruction + weight * out.sparsity).sum().backward()
            else:
                out = sae.forward_backward(x, weight)
                assert not any(t.requires_grad for t in out)
            got = {name: p.grad.clone() for name, p in sae.named_parameters()}
            got |= {f"out.{k}": v.detach() for k, v in out._asdict().items()}
            if path == "autograd":
                expected = got
            else:
                assert got.keys() == expected.keys()
                for name in got:
                    assert torch.equal(got[name], expected[name]), name


def test_forward_backward_under_autocast_uses_autograd() -> None:
    sae = _sae("april2024", False, None, torch.float32)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(6))
    weight = torch.ones(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.forward_backward(x, weight)
    assert out.x_hat.dtype == torch.bfloat16  # autocast's own casts: the plain formula ran
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in sae.parameters())


@pytest.mark.parametrize("tied", [False, True])
def test_frozen_inputs_get_no_gradient_and_the_rest_autograds(tied: bool) -> None:
    """Every subset of frozen parameters, x with and without a gradient."""
    import itertools

    sae = _sae("april2024", tied, [4, 10, 7])
    x0 = torch.randn(40, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    names = [name for name, _ in sae.named_parameters()]
    weights = (torch.ones(3), torch.tensor([0.3, 1.7, 0.05]), None, None)
    for frozen in itertools.chain.from_iterable(
        itertools.combinations(names, k) for k in range(len(names))
    ):
        for x_grad in (False, True):
            results = []
            for forward in (sae, sae.reference_forward):
                for name, p in sae.named_parameters():
                    p.requires_grad_(name not in frozen)
                    p.grad = None
                x = x0.clone().requires_grad_(x_grad)
                out = forward(x)
                outputs = (out.reconstruction, out.sparsity)
                sum((w * o).sum() for w, o in zip(weights, outputs)).backward()
                results.append([t.grad for t in (*sae.parameters(), x)])
            for name, a, b in zip([*names, "x"], *results):
                assert (a is None) == (b is None), (frozen, x_grad, name)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        # The training step's path: no gradient for a frozen parameter, autograd's for the rest.
        for p in sae.parameters():
            p.grad = None
        sae.forward_backward(x0, weights[1])
        for name, p, expected in zip(names, sae.parameters(), results[0]):
            assert (p.grad is None) == (expected is None), (frozen, name)
            if expected is not None:
                torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-12)
    for p in sae.parameters():
        p.requires_grad_(True)
