"""Reviving dead latents.

A latent is dead when it did not fire on any input during the window before a resample (counts
are summed across ranks first, so every rank agrees). Every rank then computes the same new
vectors from the same inputs and the same seeded generator, so no weights need to be sent.

- ``simple``: a random unit direction for the decoder row, its transpose (scaled like the
  anthropic rule) for the encoder, b_enc = 0.
- ``anthropic`` (Towards Monosemanticity): inputs drawn with probability ∝ (reconstruction
  loss)²; decoder row = the normalised input, encoder row = that input direction scaled to
  ``encoder_scale`` × the mean norm of the alive encoder rows, b_enc = 0, Adam state of the
  touched rows reset.

Decoder rows are set to the mean alive decoder norm of their instance (1 under the constrained
recipe: ``Recipe.resampled_decoder_norm``), so the april2024 sparsity penalty of a revived
latent starts like its neighbours'.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae.model import SparseAutoencoder
from sae.run.optim import InstanceAdam


@torch.no_grad()
def resample_dead_latents(
    sae: SparseAutoencoder,
    optimizer: InstanceAdam | None,
    dead: Tensor,
    inputs: Tensor,
    method: str,
    generator: torch.Generator | list[torch.Generator],
    encoder_scale: float = 0.2,
) -> Tensor:
    """Rewrite the dead latents ([instances, d_sae] bool) in place; returns the count per instance.

    ``inputs`` [n, d_in] are candidate inputs, identical on every rank; ``generator`` is a CPU
    generator seeded identically on every rank, or one per instance (seeded from each
    instance's own seed, so that an instance resamples exactly as it would if trained alone).
    """
    # A width sweep: latents past an instance's width never fire but are not dead latents.
    dead = dead & sae.latents
    n_dead = dead.sum(-1)
    if not bool(dead.any()):
        return n_dead
    I, L, d = sae.n_instances, sae.d_sae, sae.d_in
    device = sae.W_enc.device
    generators = generator if isinstance(generator, list) else [generator] * I
    if len(generators) != I:
        raise ValueError(f"need one generator per instance ({I}), got {len(generators)}")
    # Each instance draws as many candidates as it has latents, so that it resamples exactly as
    # a run of its own width would; the rows past its width are padding (never written).
    directions = torch.zeros(I, L, d)
    if method == "anthropic":
        losses = (sae(inputs).x_hat - inputs).square().sum(-1).double().cpu()  # [I, n]
        weights = losses.square()
        weights = torch.where(weights.sum(-1, keepdim=True) > 0, weights, torch.ones_like(weights))
        candidates = inputs.cpu()
        for k, w in enumerate(sae.widths):
            picks = torch.multinomial(weights[k], w, replacement=True, generator=generators[k])
            directions[k, :w] = candidates[picks]
    elif method == "simple":
        for k, w in enumerate(sae.widths):
            directions[k, :w] = torch.randn(w, d, generator=generators[k], dtype=torch.float32)
    else:
        raise ValueError(f"unknown resampling method {method!r}")
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    directions = directions.to(device=device, dtype=sae.W_enc.dtype)

    alive = ~dead & sae.latents
    dec_norm = sae.decoder.norm(dim=-1)  # [I, L]
    enc_norm = sae.W_enc.norm(dim=1)  # [I, L]
    n_alive = alive.sum(-1).clamp_min(1)
    mean_dec = torch.where(alive.any(-1), (dec_norm * alive).sum(-1) / n_alive, 1.0)
    mean_enc = torch.where(alive.any(-1), (enc_norm * alive).sum(-1) / n_alive, 1.0)
    mean_dec = sae.rules.resampled_decoder_norm(mean_dec)

    mask = dead[..., None]  # [I, L, 1]
    new_dec = directions * mean_dec[:, None, None]
    new_enc = directions * (encoder_scale * mean_enc)[:, None, None]
    if sae.W_dec is not None:
        sae.W_dec.copy_(torch.where(mask, new_dec, sae.W_dec))
        sae.W_enc.copy_(torch.where(mask.transpose(1, 2), new_enc.transpose(1, 2), sae.W_enc))
    else:  # tied: the encoder is the decoder
        sae.W_enc.copy_(torch.where(mask.transpose(1, 2), new_dec.transpose(1, 2), sae.W_enc))
    sae.b_enc.masked_fill_(dead, 0.0)
    if optimizer is not None:
        optimizer.reset_state(sae.W_enc, mask.transpose(1, 2))
        optimizer.reset_state(sae.b_enc, dead)
        if sae.W_dec is not None:
            optimizer.reset_state(sae.W_dec, mask)
    return n_dead
