"""The batched SAE forward pass with a hand-written backward (``sae_forward``).

Autograd's graph of the plain formula (``SparseAutoencoder.reference_forward``) dispatches about
twenty elementwise passes, reductions and small products per step around the five large matrix
products, each separately, and keeps their temporaries. Here a step runs the five products (x
W_enc, f W_dec forward; fᵀ dx̂, dx̂ W_decᵀ, xᵀ dpre backward) with the encoder bias inside the
first, the sparsity penalty's gradient inside the fourth and the encoder-bias term inside the
fifth, and takes the ReLU mask from the saved codes in one in-place pass. The results equal
autograd's up to float rounding (tests/test_sae_backward.py compares them in float64 for every
recipe, tied and untied, with and without a width mask).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PENALTIES = ("sum", "decoder_norm")
"""``sum``: Σ f_i (constrained); ``decoder_norm``: Σ f_i‖W_dec,i‖ (april2024)."""


def sae_forward(
    x: Tensor,
    W_enc: Tensor,
    W_dec: Tensor | None,
    b_enc: Tensor,
    b_dec: Tensor,
    latent_mask: Tensor | None,
    penalty: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x̂ [I, B, d], codes [I, B, L], reconstruction [I], sparsity [I]) of the SAE
    f = ReLU(x W_enc + b_enc − b_dec W_enc) (times ``latent_mask``), x̂ = f W_dec + b_dec
    (W_dec = W_encᵀ when None: tied); reconstruction = ‖x − x̂‖² summed over d, mean over the
    batch; sparsity = ``penalty`` summed over latents, mean over the batch. All four outputs are
    differentiable (with respect to every input but the mask)."""
    if penalty not in PENALTIES:
        raise ValueError(f"unknown penalty {penalty!r}: choose one of {', '.join(PENALTIES)}")
    return _SAEForward.apply(x, W_enc, W_dec, b_enc, b_dec, latent_mask, penalty)


class _SAEForward(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        W_enc: Tensor,
        W_dec: Tensor | None,
        b_enc: Tensor,
        b_dec: Tensor,
        latent_mask: Tensor | None,
        penalty: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = x.shape[0]
        decoder = _T(W_enc) if W_dec is None else W_dec
        # W_enc(x − b_dec) + b_enc = x W_enc + (b_enc − b_dec W_enc): x is shared by the
        # instances (no copy), the bias is the product's own (no separate pass).
        bias = torch.baddbmm(b_enc.unsqueeze(1), b_dec.unsqueeze(1), W_enc, alpha=-1)
        codes = torch.baddbmm(bias, x.expand(W_enc.shape[0], -1, -1), W_enc)
        if latent_mask is not None:
            # A width sweep: latents past an instance's width are 0 and get no gradient.
            codes.mul_(latent_mask.unsqueeze(1).to(codes.dtype))
        codes.relu_()
        # r = x̂ − x in one product: its bias is b_dec − x.
        resid = torch.baddbmm(b_dec.unsqueeze(1) - x, codes, decoder)
        x_hat = resid + x
        flat = resid.view(resid.shape[0], 1, -1)
        reconstruction = torch.bmm(flat, _T(flat)).view(-1).div_(n)
        totals = codes.sum(1)  # [I, L]: Σ over the batch of each latent's code
        if penalty == "sum":
            norms = None
            sparsity = totals.sum(-1).div_(n)
        else:
            norms = decoder.norm(dim=-1)  # [I, L]
            sparsity = torch.bmm(totals.unsqueeze(1), norms.unsqueeze(2)).view(-1).div_(n)
        ctx.penalty, ctx.tied = penalty, W_dec is None
        ctx.save_for_backward(x, W_enc, W_dec, b_dec, codes, resid, totals, norms)
        ctx.set_materialize_grads(False)
        return x_hat, codes, reconstruction, sparsity

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_x_hat: Tensor | None,
        grad_codes: Tensor | None,
        grad_rec: Tensor | None,
        grad_sparsity: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        # (unsqueeze/view rather than [:, None] indexing: a few µs each, and a step has ~30 ops)
        x, W_enc, W_dec, b_dec, codes, resid, totals, norms = ctx.saved_tensors
        n_instances, n = codes.shape[0], x.shape[0]
        decoder = W_enc.transpose(1, 2) if W_dec is None else W_dec
        need_x, need_W_enc, need_W_dec, need_b_enc, need_b_dec = ctx.needs_input_grad[:5]
        # dL/dx̂ [I, B, d] (None when nothing reads x̂ or the reconstruction)
        d_x_hat = None
        if grad_rec is not None:
            d_x_hat = resid * grad_rec.mul(2.0 / n).view(n_instances, 1, 1)
            if grad_x_hat is not None:
                d_x_hat += grad_x_hat
        elif grad_x_hat is not None:
            d_x_hat = grad_x_hat
        # The penalty's gradient per code [I, 1, L]: the bias of dL/df's product.
        per_code = None
        if grad_sparsity is not None:
            per_code = grad_sparsity.div(n).view(n_instances, 1, 1)
            per_code = per_code * norms.unsqueeze(1) if norms is not None else per_code
        # dL/df [I, B, L], then dL/dpre through the ReLU (and the width mask: masked codes are
        # 0), in place.
        if d_x_hat is not None:
            if per_code is not None:
                d_codes = torch.baddbmm(
                    per_code.expand(-1, 1, codes.shape[2]), d_x_hat, _T(decoder)
                )
            else:
                d_codes = torch.bmm(d_x_hat, _T(decoder))
            if grad_codes is not None:
                d_codes += grad_codes
        elif per_code is not None:
            d_codes = per_code.expand_as(codes).clone()
            if grad_codes is not None:
                d_codes += grad_codes
        else:
            d_codes = grad_codes.clone() if grad_codes is not None else None
        if d_codes is not None:
            torch.ops.aten.threshold_backward.grad_input(d_codes, codes, 0, grad_input=d_codes)

        g_x = g_W_enc = g_W_dec = g_b_enc = g_b_dec = None
        # dL/dW_dec [I, L, d] (onto W_enc when tied)
        if need_W_dec or (ctx.tied and need_W_enc):
            if d_x_hat is not None:
                g_W_dec = torch.bmm(_T(codes), d_x_hat)
            else:
                g_W_dec = torch.zeros_like(decoder)
            if norms is not None and grad_sparsity is not None:
                # d(Σ_b f_bi ‖W_dec,i‖)/dW_dec,i = Σ_b f_bi · W_dec,i / ‖W_dec,i‖; a zero row
                # gets 0, as autograd's norm gives (0/0 and x/0 set to 0 here).
                scale = torch.div(totals, norms).nan_to_num_(0.0, 0.0, 0.0)
                scale *= grad_sparsity.div(n).unsqueeze(1)
                g_W_dec.addcmul_(decoder, scale.unsqueeze(2))
        if d_codes is not None:
            d_bias = d_codes.sum(1)  # [I, L]: dL/d(b_enc − b_dec W_enc)
            if need_b_enc:
                g_b_enc = d_bias
            if need_W_enc:
                # dL/dW_enc = xᵀ dpre − b_decᵀ d_bias = (x − b_dec)ᵀ dpre
                outer = torch.bmm(b_dec.unsqueeze(2), d_bias.unsqueeze(1))
                g_W_enc = torch.baddbmm(outer, x.t().expand(n_instances, -1, -1), d_codes, beta=-1)
            if need_b_dec:
                # −W_enc d_bias, plus Σ_b dL/dx̂ (x̂'s own bias) when x̂ has a gradient
                base = (
                    d_x_hat.sum(1).unsqueeze(2)
                    if d_x_hat is not None
                    else torch.zeros_like(b_dec).unsqueeze(2)
                )
                g_b_dec = torch.baddbmm(base, W_enc, d_bias.unsqueeze(2), alpha=-1).squeeze(2)
            if need_x:
                g_x = torch.matmul(d_codes, _T(W_enc)).sum(0)
        elif d_x_hat is not None and need_b_dec:
            g_b_dec = d_x_hat.sum(1)
        if need_x and grad_rec is not None:
            # The reconstruction's own term in x (x̂ depends on x only through f).
            direct = -(resid * grad_rec.mul(2.0 / n).view(n_instances, 1, 1)).sum(0)
            g_x = direct if g_x is None else g_x + direct
        if ctx.tied:
            if need_W_enc and g_W_dec is not None:
                t = _T(g_W_dec)
                g_W_enc = t.contiguous() if g_W_enc is None else g_W_enc.add_(t)
            g_W_dec = None
        return g_x, g_W_enc, g_W_dec, g_b_enc, g_b_dec, None, None


def _T(t: Tensor) -> Tensor:
    """The batched transpose [I, a, b] -> [I, b, a] (a view)."""
    return t.transpose(1, 2)
