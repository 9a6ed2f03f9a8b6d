"""The batched SAE forward pass with a hand-written backward (``sae_forward``).

Autograd's graph of the plain formula (``SparseAutoencoder.reference_forward``) dispatches about
twenty elementwise passes, reductions and small products per step around the five large matrix
products, each separately, and keeps their temporaries. Here a step runs the five products and
little else over the [instances, batch, latents] tensors:

- forward: [x, 1] [W_enc; b_enc − b_dec W_enc] (the encoder bias as the product's last row),
  then f W_dec + b_dec;
- backward: [r, 1] [s·W_dec, p]ᵀ for dL/df (r = x̂ − x, s the reconstruction's scale, p the
  penalty's gradient per latent: both ride in the product, so dL/dx̂ is never formed), fᵀ r for
  W_dec, and [x, 1]ᵀ dpre for W_enc and b_enc together;

with the ReLU mask taken from the saved codes in one in-place pass. A bias added to a product
afterwards is a pass over its [batch, latents] output; as a row of ones it costs one more row of
the product (an 8-λ sweep's step ran 5-17% faster for it). The results equal autograd's up to float
rounding (tests/test_sae_backward.py compares them in float64 for every recipe, tied and untied,
with and without a width mask).
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
    _check_penalty(penalty)
    return _SAEForward.apply(x, W_enc, W_dec, b_enc, b_dec, latent_mask, penalty)


def sae_forward_backward(
    x: Tensor,
    W_enc: Tensor,
    W_dec: Tensor | None,
    b_enc: Tensor,
    b_dec: Tensor,
    latent_mask: Tensor | None,
    penalty: str,
    sparsity_weight: Tensor,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], tuple[Tensor | None, ...]]:
    """``sae_forward``'s outputs and the gradients (W_enc, W_dec, b_enc, b_dec: None for a
    tied W_dec and for a tensor that needs none) of the training loss Σ_i reconstruction_i +
    ``sparsity_weight``_i · sparsity_i, without autograd: the same numbers as ``sae_forward``
    then ``backward`` of that loss (bit for bit; tests/test_sae_backward.py), without building
    and walking a graph (~0.2 ms of a 3 ms single-SAE step on one CPU core)."""
    _check_penalty(penalty)
    with torch.no_grad():
        outputs, saved = _forward(x, W_enc, W_dec, b_enc, b_dec, latent_mask, penalty)
        # The loss's gradients with respect to the outputs, as autograd hands them on: 1 for
        # each reconstruction, the weight for each sparsity.
        grad_rec = torch.ones_like(outputs[2])
        needs = (False, *(t is not None and t.requires_grad for t in (W_enc, W_dec, b_enc, b_dec)))
        grads = _backward(saved, needs, None, None, grad_rec, sparsity_weight.to(grad_rec))
    _, g_W_enc, g_W_dec, g_b_enc, g_b_dec = grads
    return outputs, (g_W_enc, g_W_dec, g_b_enc, g_b_dec)


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
        outputs, saved = _forward(x, W_enc, W_dec, b_enc, b_dec, latent_mask, penalty)
        ctx.save_for_backward(*saved)
        ctx.set_materialize_grads(False)
        return outputs

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_x_hat: Tensor | None,
        grad_codes: Tensor | None,
        grad_rec: Tensor | None,
        grad_sparsity: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        grads = _backward(
            ctx.saved_tensors,
            ctx.needs_input_grad[:5],
            grad_x_hat,
            grad_codes,
            grad_rec,
            grad_sparsity,
        )
        return (*grads, None, None)


Saved = tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor, Tensor, Tensor | None]
"""What the backward reads: [x, 1], W_enc, W_dec, b_dec, codes, [r, 1], Σ_b f, ‖W_dec‖."""


def _forward(
    x: Tensor,
    W_enc: Tensor,
    W_dec: Tensor | None,
    b_enc: Tensor,
    b_dec: Tensor,
    latent_mask: Tensor | None,
    penalty: str,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Saved]:
    n, d = x.shape
    n_instances = W_enc.shape[0]
    decoder = W_enc.mT if W_dec is None else W_dec
    # W_enc(x − b_dec) + b_enc = [x, 1] [W_enc; b_enc − b_dec W_enc]: one product, whose
    # bias row costs no pass over the codes; x is shared by the instances (no copy), and
    # the backward's product with [x, 1] gives the bias gradient next to W_enc's.
    x_aug = _with_ones_column(x)
    x_aug[:, :d].copy_(x)
    bias = torch.baddbmm(b_enc.unsqueeze(1), b_dec.unsqueeze(1), W_enc, alpha=-1)
    codes = torch.bmm(x_aug.expand(n_instances, -1, -1), torch.cat([W_enc, bias], 1))
    if latent_mask is not None:
        # A width sweep: latents past an instance's width are 0 and get no gradient.
        codes.mul_(latent_mask.unsqueeze(1).to(codes.dtype))
    codes.relu_()
    x_hat = torch.baddbmm(b_dec.unsqueeze(1), codes, decoder)
    # r = x̂ − x, with a ones column: the backward's product with it adds the penalty's
    # gradient per code.
    resid_aug = _with_ones_column(x_hat)
    resid = torch.sub(x_hat, x, out=resid_aug[:, :, :d])
    # (square and sum: linalg.vector_norm over this strided view is 3x slower)
    reconstruction = resid.square().sum((1, 2)).div_(n)
    totals = codes.sum(1)  # [I, L]: Σ over the batch of each latent's code
    if penalty == "sum":
        norms = None
        sparsity = totals.sum(-1).div_(n)
    else:
        norms = torch.linalg.vector_norm(decoder, dim=-1)  # [I, L]
        sparsity = torch.bmm(totals.unsqueeze(1), norms.unsqueeze(2)).view(-1).div_(n)
    saved = (x_aug, W_enc, W_dec, b_dec, codes, resid_aug, totals, norms)
    return (x_hat, codes, reconstruction, sparsity), saved


def _backward(
    saved: Saved,
    needs: tuple[bool, ...],
    grad_x_hat: Tensor | None,
    grad_codes: Tensor | None,
    grad_rec: Tensor | None,
    grad_sparsity: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """Gradients (x, W_enc, W_dec, b_enc, b_dec) of the inputs ``needs`` flags, given the
    outputs' (None: the loss does not read that output)."""
    # (unsqueeze/view rather than [:, None] indexing: a few µs each, and a step has ~30 ops)
    x_aug, W_enc, W_dec, b_dec, codes, resid_aug, totals, norms = saved
    (n_instances, n, d), n_latents = resid_aug.shape, codes.shape[2]
    d -= 1
    resid = resid_aug[:, :, :d]
    decoder = W_enc.mT if W_dec is None else W_dec
    need_x, need_W_enc, need_W_dec, need_b_enc, need_b_dec = needs
    tied = W_dec is None
    # dL/dx̂ = resid · rec_scale (+ grad_x_hat). Without grad_x_hat (training) it is never
    # formed: the scale goes onto the small operands and results instead.
    rec_scale = None if grad_rec is None else grad_rec.mul(2.0 / n).view(n_instances, 1, 1)
    d_x_hat, d_x_hat_scale = None, None  # dL/dx̂ = d_x_hat · d_x_hat_scale
    if grad_x_hat is not None:
        d_x_hat = grad_x_hat if rec_scale is None else grad_x_hat.addcmul(resid, rec_scale)
    elif rec_scale is not None:
        d_x_hat, d_x_hat_scale = resid, rec_scale
    # The penalty's gradient per code [I, L, 1].
    per_code = None
    if grad_sparsity is not None:
        per_code = grad_sparsity.div(n).view(n_instances, 1, 1)
        per_code = per_code * norms.unsqueeze(2) if norms is not None else per_code
        per_code = per_code.expand(n_instances, n_latents, 1)
    # dL/df [I, B, L] = dL/dx̂ W_decᵀ + per_code, then dL/dpre through the ReLU (and the
    # width mask: masked codes are 0), in place.
    if d_x_hat is not None:
        scaled = decoder if d_x_hat_scale is None else decoder * d_x_hat_scale
        if per_code is None:
            d_codes = torch.bmm(d_x_hat, scaled.mT)
        elif d_x_hat_scale is not None:
            # [r, 1] [s W_dec, per_code]ᵀ: the penalty's term rides in the product.
            d_codes = torch.bmm(resid_aug, torch.cat([scaled, per_code], 2).mT)
        else:
            d_codes = torch.baddbmm(per_code.mT, d_x_hat, scaled.mT)
        if grad_codes is not None:
            d_codes += grad_codes
    elif per_code is not None:
        d_codes = per_code.mT.expand_as(codes).clone()
        if grad_codes is not None:
            d_codes += grad_codes
    else:
        d_codes = grad_codes.clone() if grad_codes is not None else None
    if d_codes is not None:
        torch.ops.aten.threshold_backward.grad_input(d_codes, codes, 0, grad_input=d_codes)

    g_x = g_W_enc = g_W_dec = g_b_enc = g_b_dec = None
    # dL/dW_dec [I, L, d] (onto W_enc when tied)
    if need_W_dec or (tied and need_W_enc):
        if d_x_hat is not None:
            g_W_dec = torch.bmm(codes.mT, d_x_hat)
            if d_x_hat_scale is not None:
                g_W_dec.mul_(d_x_hat_scale)
        else:
            g_W_dec = torch.zeros_like(decoder)
        if norms is not None and grad_sparsity is not None:
            # d(Σ_b f_bi ‖W_dec,i‖)/dW_dec,i = Σ_b f_bi · W_dec,i / ‖W_dec,i‖; a zero row
            # gets 0, as autograd's norm gives (0/0 and x/0 set to 0 here).
            scale = torch.div(totals, norms).nan_to_num_(0.0, 0.0, 0.0)
            scale *= grad_sparsity.div(n).unsqueeze(1)
            g_W_dec.addcmul_(decoder, scale.unsqueeze(2))
    # Σ_b dL/dx̂ [I, d] (x̂'s own bias b_dec)
    d_x_hat_sum = None
    if need_b_dec and d_x_hat is not None:
        d_x_hat_sum = d_x_hat.sum(1)
        if d_x_hat_scale is not None:
            d_x_hat_sum.mul_(d_x_hat_scale.view(n_instances, 1))
    if d_codes is not None:
        # [x, 1]ᵀ dpre = [xᵀ dpre; Σ_b dpre] in one product; Σ_b dpre is dL/d(b_enc − b_dec
        # W_enc), so dL/dW_enc = xᵀ dpre − b_decᵀ Σ_b dpre.
        g_enc = torch.bmm(x_aug.expand(n_instances, -1, -1).mT, d_codes)
        d_bias = g_enc[:, d]  # [I, L]
        if need_b_enc:
            g_b_enc = d_bias.clone()  # not a view: it would keep all of g_enc alive
        if need_W_enc:
            g_W_enc = torch.baddbmm(g_enc[:, :d], b_dec.unsqueeze(2), d_bias.unsqueeze(1), alpha=-1)
        if need_b_dec:
            # −W_enc dL/db_enc (through x − b_dec), plus Σ_b dL/dx̂
            base = (
                d_x_hat_sum.unsqueeze(2)
                if d_x_hat_sum is not None
                else W_enc.new_zeros(n_instances, d, 1)
            )
            g_b_dec = torch.baddbmm(base, W_enc, d_bias.unsqueeze(2), alpha=-1).squeeze(2)
        if need_x:
            g_x = torch.matmul(d_codes, W_enc.mT).sum(0)
    if need_x and rec_scale is not None:
        # The reconstruction's own term in x (x̂ depends on x only through f).
        direct = -(resid * rec_scale).sum(0)
        g_x = direct if g_x is None else g_x + direct
    if tied:
        if need_W_enc and g_W_dec is not None:
            t = g_W_dec.mT
            g_W_enc = t.contiguous() if g_W_enc is None else g_W_enc.add_(t)
        g_W_dec = None
    return g_x, g_W_enc, g_W_dec, g_b_enc, g_b_dec


def _check_penalty(penalty: str) -> None:
    if penalty not in PENALTIES:
        raise ValueError(f"unknown penalty {penalty!r}: choose one of {', '.join(PENALTIES)}")


def _with_ones_column(like: Tensor) -> Tensor:
    """[..., d + 1]: ``like``'s shape with one more column, the last filled with 1, the rest
    uninitialised (the caller writes them)."""
    out = like.new_empty(*like.shape[:-1], like.shape[-1] + 1)
    out[..., -1].fill_(1.0)
    return out
