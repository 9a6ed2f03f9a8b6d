"""The toy models' training loss, and the same loss with a hand-written backward (``toy_loss``).

The loss (Elhage et al. 2022): per instance, the importance-weighted squared error of the
reconstruction, mean over batch and features (``weighted_loss``); training minimises its sum
over instances, so instances never interact.

A toy step is a few small products around many passes over the batch, and on the CPU autograd's
bookkeeping (a graph node per op, a temporary per intermediate) costs as much as the arithmetic.
``toy_loss`` runs the model and the loss as one function: forward in the instance-major layout
[instances, features, batch], the output bias inside its product, ReLUs in place; backward in
two elementwise passes and three products. Its values and gradients equal the composition
``weighted_loss(model(x).output, model.target(x), importance)`` up to float rounding
(tests/test_toy_loss.py compares them in float64 for every model kind).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


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
    """``weighted_loss(model(x).output, model.target(x), importance)`` [instances], with the
    gradients of the model's parameters from a hand-written backward.

    ``model`` is a ``toymodels.models`` toy model and ``x`` its input [batch, instances,
    features] (fastest stored instance-major, as ``FeatureDistribution.sample`` draws it). Under
    autocast, or when ``x`` itself needs a gradient, it is the composition through autograd."""
    if x.requires_grad or torch.is_autocast_enabled(x.device.type):
        return weighted_loss(model(x).output, model.target(x), importance)
    if model.kind == "abs":  # h = ReLU(W₁ᵀx), y' = ReLU(W₂ᵀh + b), target |x|
        return _ToyLoss.apply(x, model.W1, model.W2, model.b, importance, True, True, True)
    # h = Wᵀx (ReLU for relu_hidden), x' = W h + b (ReLU but for linear), target x
    hidden_relu, output_relu = model.kind == "relu_hidden", model.kind != "linear"
    return _ToyLoss.apply(x, model.W, None, model.b, importance, hidden_relu, output_relu, False)


def toy_loss_and_gradients(
    model: Any, x: Tensor, importance: Tensor, *params: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``toy_loss`` [instances] (detached) and the gradients of its sum with respect to
    ``params`` (the model's parameters), as one function of tensors that changes nothing: what
    ``sae.run.graphs.GraphedFunction`` captures for ``runtime.cuda_graphs``. The same numbers as
    ``toy_loss(...).sum().backward()``."""
    with torch.enable_grad():
        per_instance = toy_loss(model, x, importance)
        grads = torch.autograd.grad(per_instance.sum(), params)
    return per_instance.detach(), grads


class _ToyLoss(torch.autograd.Function):
    """Per-instance loss of h = act(W_inᵀ x), out = act(W_outᵀ h + b) against x (or |x|), with
    W_in [instances, features, hidden] and W_out [instances, hidden, features] (None: tied,
    W_out = W_inᵀ). Weight gradients come out of products shaped [instances, hidden, features]:
    with the batch as the contracted side last in both operands, 4x faster than the
    [features, hidden] orientation on the CPU."""

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
        ctx.flags = hidden_relu, output_relu, W_out is None
        ctx.save_for_backward(xT, W_back, importance, h, out if output_relu else None, diff)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xT, W_back, importance, h, out, diff = ctx.saved_tensors
        hidden_relu, output_relu, tied = ctx.flags
        batch, n_features = xT.shape[2], xT.shape[1]
        scale = importance * grad.unsqueeze(1) * (2.0 / (batch * n_features))  # [I, n]
        d_out = diff * scale.unsqueeze(2)  # dL/dout [I, n, B]
        if output_relu:
            torch.ops.aten.threshold_backward.grad_input(d_out, out, 0, grad_input=d_out)
        need_W_in, need_W_out, need_b = ctx.needs_input_grad[1:4]
        g_W_in = g_W_out = g_b = None
        if need_b:
            g_b = d_out.sum(2)
        if need_W_out or (tied and need_W_in):
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
        return None, g_W_in, g_W_out, g_b, None, None, None, None
