"""The toy models' training loss, and the same loss with a hand-written backward.

The loss (Elhage et al. 2022): per instance, the importance-weighted squared error of the
reconstruction, mean over batch and features (``weighted_loss``); training minimises its sum
over instances, so instances never interact.

A toy step is a few small products around many passes over the batch, and on the CPU autograd's
bookkeeping (a graph node per op, a temporary per intermediate) costs as much as the arithmetic.
The model and the loss run as one function: forward in the instance-major layout [instances,
features, batch], the output bias inside its product, ReLUs in place; backward in two
elementwise passes and three products. ``toy_loss`` is it under autograd (evaluation, attacks,
anything that differentiates further); ``toy_forward_backward``, what training runs, calls
forward and backward directly and sets the gradients without building autograd's graph at all
(a sixth of a CPU step). Values and gradients equal the composition ``weighted_loss(model(x).
output, model.target(x), importance)`` up to float rounding (tests/test_toy_loss.py compares
them in float64 for every model kind), and the two paths equal each other bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sae.run.graphs import add_gradients


def weighted_loss(output: Tensor, target: Tensor, importance: Tensor) -> Tensor:
    """Per-instance loss [instances]: importance-weighted squared error, mean over batch and
    features. The training loss is its sum over instances, so instances never interact."""
    return _WeightedLoss.apply(output, target, importance)


class _WeightedLoss(torch.autograd.Function):
    """``(importance * (output - target)²).mean((0, 2))`` with a hand-written backward: two
    passes over the batch instead of autograd's six (the toy step is memory-bound)."""

    @staticmethod
    def forward(ctx, output: Tensor, target: Tensor, importance: Tensor) -> Tensor:  # type: ignore[override]
        diff = output - target
        ctx.save_for_backward(diff, importance)
        return diff.square().mul_(importance).mean(dim=(0, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        diff, importance = ctx.saved_tensors
        scale = importance * (2.0 / (diff.shape[0] * diff.shape[2])) * grad[:, None]
        return diff * scale, None, None


def toy_loss(model: Any, x: Tensor, importance: Tensor) -> Tensor:
    """``weighted_loss(model(x).output, model.target(x), importance)`` [instances], through
    autograd with the hand-written backward.

    ``model`` is a ``toymodels.models`` toy model and ``x`` its input [batch, instances,
    features] (fastest stored instance-major, as ``FeatureDistribution.sample`` draws it). Under
    autocast, or when ``x`` itself needs a gradient, it is the composition through autograd."""
    if x.requires_grad or torch.is_autocast_enabled(x.device.type):
        return weighted_loss(model(x).output, model.target(x), importance)
    return _ToyLoss.apply(x, *toy_loss_inputs(model, importance))


def toy_loss_inputs(model: Any, importance: Tensor) -> tuple[Any, ...]:
    """What the loss functions take after x: (W_in, W_out, b, importance, hidden_relu,
    output_relu, target_abs); W_out is None for a tied model (W_out = W_inᵀ)."""
    if model.kind == "abs":  # h = ReLU(W₁ᵀx), y' = ReLU(W₂ᵀh + b), target |x|
        return model.W1, model.W2, model.b, importance, True, True, True
    # h = Wᵀx (ReLU for relu_hidden), x' = W h + b (ReLU but for linear), target x
    hidden_relu, output_relu = model.kind == "relu_hidden", model.kind != "linear"
    return model.W, None, model.b, importance, hidden_relu, output_relu, False


def toy_forward_backward(
    model: Any,
    x: Tensor,
    importance: Tensor,
    run: Callable[..., Any] | None = None,
) -> Tensor:
    """The training step's forward and backward: ``toy_loss`` [instances] (detached), with the
    gradients of its sum added to the parameters' ``.grad`` as ``backward`` adds them. ``run``:
    ``toy_loss_and_gradients`` (the default), or it replayed from a CUDA graph
    (``sae.run.graphs``). Under autocast, or when ``x`` needs a gradient, autograd's backward."""
    if x.requires_grad or torch.is_autocast_enabled(x.device.type):
        per_instance = toy_loss(model, x, importance)
        per_instance.sum().backward()
        return per_instance.detach()
    inputs = toy_loss_inputs(model, importance)
    # (a frozen parameter gets no gradient, as under backward)
    params = [p if p is not None and p.requires_grad else None for p in inputs[:3]]
    return add_gradients(run or toy_loss_and_gradients, params, x, *inputs)


@torch.no_grad()
def toy_loss_and_gradients(
    x: Tensor,
    W_in: Tensor,
    W_out: Tensor | None,
    b: Tensor,
    importance: Tensor,
    hidden_relu: bool,
    output_relu: bool,
    target_abs: bool,
) -> tuple[Tensor, tuple[Tensor, Tensor | None, Tensor]]:
    """The per-instance loss [instances] and the gradients of its sum with respect to (W_in,
    W_out, b) (None for a tied model's W_out), with no autograd graph: one function of tensors
    that changes nothing, what ``sae.run.graphs.GraphedFunction`` captures for
    ``runtime.cuda_graphs``. Arguments as ``toy_loss_inputs`` gives them after x."""
    flags = hidden_relu, output_relu, target_abs
    loss, saved = _forward(x, W_in, W_out, b, importance, *flags)
    # (nothing else holds the saved tensors: the backward may overwrite them)
    grads = _backward(
        saved, hidden_relu, output_relu, torch.ones_like(loss), True, True, True, reuse_saved=True
    )
    return loss, grads


def _forward(
    x: Tensor,
    W_in: Tensor,
    W_out: Tensor | None,
    b: Tensor,
    importance: Tensor,
    hidden_relu: bool,
    output_relu: bool,
    target_abs: bool,
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """Per-instance loss of h = act(W_inᵀ x), out = act(W_outᵀ h + b) against x (or |x|), with
    W_in [instances, features, hidden] and W_out [instances, hidden, features] (None: tied,
    W_out = W_inᵀ); and what the backward reads."""
    batch, n_features = x.shape[0], x.shape[2]
    W_back = W_in.transpose(1, 2) if W_out is None else W_out  # [I, m, n]
    xT = x.permute(1, 2, 0).contiguous()  # [I, n, B]: a view for instance-major x
    h = torch.bmm(W_in.transpose(1, 2), xT)  # [I, m, B]
    if hidden_relu:
        h.relu_()
    out = torch.baddbmm(b.unsqueeze(2), W_back.transpose(1, 2), h)  # [I, n, B]
    if output_relu:
        out.relu_()
    diff = out - (xT.abs() if target_abs else xT)
    # Σ_b diff² per (instance, feature) as one batched dot product (no squared copy)
    flat = diff.view(-1, 1, batch)
    per_feature = torch.bmm(flat, flat.transpose(1, 2)).view(importance.shape)
    loss = (per_feature * importance).sum(-1).div_(batch * n_features)
    saved = xT, W_back, importance, h, out if output_relu else None, diff, W_out is None
    return loss, saved


def _backward(
    saved: tuple[Any, ...],
    hidden_relu: bool,
    output_relu: bool,
    grad: Tensor,
    need_W_in: bool,
    need_W_out: bool,
    need_b: bool,
    reuse_saved: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (W_in, W_out, b) of Σ_i grad_i · loss_i from ``_forward``'s saved tensors
    (with ``reuse_saved``, dL/dout overwrites the saved difference: one [instances, features,
    batch] buffer fewer to write, when no autograd graph may read it again).
    Weight gradients come out of products shaped [instances, hidden, features]: with the batch
    as the contracted side last in both operands, 4x faster than the [features, hidden]
    orientation on the CPU."""
    xT, W_back, importance, h, out, diff, tied = saved
    batch, n_features = xT.shape[2], xT.shape[1]
    scale = importance * grad.unsqueeze(1) * (2.0 / (batch * n_features))  # [I, n]
    d_out = torch.mul(diff, scale.unsqueeze(2), out=diff if reuse_saved else None)  # [I, n, B]
    if output_relu:
        torch.ops.aten.threshold_backward.grad_input(d_out, out, 0, grad_input=d_out)
    g_W_in = g_W_out = g_b = None
    if need_b:
        g_b = d_out.sum(2)
    if (need_W_out and not tied) or (tied and need_W_in):
        g_W_out = torch.bmm(h, d_out.transpose(1, 2))  # [I, m, n]
    if need_W_in:
        d_h = torch.bmm(W_back, d_out)  # [I, m, B]
        if hidden_relu:
            torch.ops.aten.threshold_backward.grad_input(d_h, h, 0, grad_input=d_h)
        if tied:  # both uses of W in one [I, m, n] product, then W's own layout
            g_W_in = torch.baddbmm(g_W_out, d_h, xT.transpose(1, 2))
            g_W_out = None
        else:
            g_W_in = torch.bmm(d_h, xT.transpose(1, 2))
        g_W_in = g_W_in.transpose(1, 2).contiguous()
    return g_W_in, g_W_out, g_b


class _ToyLoss(torch.autograd.Function):
    """``_forward`` and ``_backward`` under autograd."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        W_in: Tensor,
        W_out: Tensor | None,
        b: Tensor,
        importance: Tensor,
        hidden_relu: bool,
        output_relu: bool,
        target_abs: bool,
    ) -> Tensor:
        loss, saved = _forward(x, W_in, W_out, b, importance, hidden_relu, output_relu, target_abs)
        *tensors, tied = saved
        ctx.flags = hidden_relu, output_relu, tied
        ctx.save_for_backward(*tensors)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden_relu, output_relu, tied = ctx.flags
        saved = (*ctx.saved_tensors, tied)
        need_W_in, need_W_out, need_b = ctx.needs_input_grad[1:4]
        grads = _backward(saved, hidden_relu, output_relu, grad, need_W_in, need_W_out, need_b)
        return None, *grads, None, None, None, None
