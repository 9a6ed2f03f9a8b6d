"""``toy_loss`` (one function, hand-written backward) against the plain composition through
autograd, in float64, for every model kind and either input layout; and the training step's
path without autograd (``toy_forward_backward``) against ``toy_loss`` under autograd."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from toymodels.config import ToyKind
from toymodels.data import instance_major
from toymodels.loss import toy_forward_backward, toy_loss, weighted_loss
from toymodels.models import build_model

KINDS = list(get_args(ToyKind))


def _setup(kind: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = build_model(kind, 3, 9, 4, seed=seed).double()
    with torch.no_grad():
        # A bias that switches some outputs off and others on, so every ReLU has both sides.
        model.b.uniform_(-0.3, 0.3, generator=g)
    x = torch.rand(257, 3, 9, generator=g, dtype=torch.float64)
    x *= torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.4
    if kind == "abs":
        x = x * 2 - 1
    importance = torch.rand(3, 9, generator=g, dtype=torch.float64) + 0.1
    return model, x, importance


def _loss_and_grads(model, loss_fn, weights: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    (loss * weights).sum().backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["instance_major", "batch_major"])
def test_toy_loss_equals_the_autograd_composition(kind: str, layout: str) -> None:
    model, x, importance = _setup(kind)
    if layout == "instance_major":
        x = instance_major(x)
    # Different weights per instance: each instance's gradient is checked on its own scale.
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    fused, fused_grads = _loss_and_grads(model, lambda: toy_loss(model, x, importance), weights)
    ref, ref_grads = _loss_and_grads(
        model, lambda: weighted_loss(model(x).output, model.target(x), importance), weights
    )
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    assert fused_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert ref_grads[name].abs().max() > 0, f"{name}: nothing to compare"
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=1e-10, atol=1e-12)
        assert fused_grads[name].is_contiguous()


@pytest.mark.parametrize("kind", KINDS)
def test_toy_loss_without_grad_and_with_an_input_gradient(kind: str) -> None:
    model, x, importance = _setup(kind, seed=1)
    expected = weighted_loss(model(x).output, model.target(x), importance).detach()
    with torch.no_grad():
        torch.testing.assert_close(toy_loss(model, x, importance), expected)
    # An input that needs its own gradient goes through autograd (the fused function has none).
    x = x.clone().requires_grad_()
    loss = toy_loss(model, x, importance)
    (grad_x,) = torch.autograd.grad(loss.sum(), x)
    ref = weighted_loss(model(x).output, model.target(x), importance)
    (ref_x,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(grad_x, ref_x)


@pytest.mark.parametrize("kind", KINDS)
def test_toy_loss_with_frozen_parameters(kind: str) -> None:
    """Every subset of frozen parameters: the trainable ones get autograd's gradient, the frozen
    ones none (the backward's per-input branches)."""
    model, x, importance = _setup(kind, seed=2)
    names = [name for name, _ in model.named_parameters()]
    for frozen_mask in range(1, 2 ** len(names) - 1):
        frozen = {name for i, name in enumerate(names) if frozen_mask >> i & 1}
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
        model.zero_grad(set_to_none=True)
        toy_loss(model, x, importance).sum().backward()
        fused = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        weighted_loss(model(x).output, model.target(x), importance).sum().backward()
        for name, p in model.named_parameters():
            if name in frozen:
                assert fused[name] is None and p.grad is None, name
            else:
                torch.testing.assert_close(fused[name], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_training_path_equals_autograd_bit_for_bit(kind: str, dtype: torch.dtype) -> None:
    """``toy_forward_backward`` (forward and backward called directly, no autograd graph) gives
    the loss and the gradients of ``toy_loss(...).sum().backward()`` exactly, and a second call
    without zeroing adds to the gradients as a second backward does."""
    model, x, importance = _setup(kind, seed=3)
    model, x, importance = model.to(dtype), instance_major(x.to(dtype)), importance.to(dtype)
    results = []
    for direct in (True, False):
        model.zero_grad(set_to_none=True)
        losses = []
        for _ in range(2):
            if direct:
                losses.append(toy_forward_backward(model, x, importance))
            else:
                loss = toy_loss(model, x, importance)
                loss.sum().backward()
                losses.append(loss.detach())
            results.append((losses[-1], [p.grad.clone() for p in model.parameters()]))
    direct_results, autograd_results = results[:2], results[2:]
    for (loss, grads), (ref_loss, ref_grads) in zip(direct_results, autograd_results):
        assert not loss.requires_grad and torch.equal(loss, ref_loss)
        for g, ref in zip(grads, ref_grads, strict=True):
            assert ref.abs().max() > 0 and torch.equal(g, ref)


def test_the_training_path_leaves_frozen_parameters_without_gradients() -> None:
    model, x, importance = _setup("relu_output", seed=4)
    model.b.requires_grad_(False)
    toy_forward_backward(model, x, importance)
    assert model.b.grad is None and model.W.grad is not None
