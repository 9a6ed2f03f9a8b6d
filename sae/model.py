"""The L1 sparse autoencoder as a plain ``nn.Module`` with a leading instances dimension.

Instance k owns ``W_enc[k]`` [d_in, d_sae], ``W_dec[k]`` [d_sae, d_in], ``b_enc[k]``,
``b_dec[k]`` (SAELens's names and layouts). All instances read the same input batch; their
losses are summed, so each instance trains exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from sae.loss import sae_forward, sae_forward_backward
from sae.recipes import DEFAULT_RECIPE, Recipe, get_recipe
from sae.run.graphs import add_gradients


class SAEOutput(NamedTuple):
    x_hat: Tensor
    """[instances, batch, d_in] reconstructions."""
    codes: Tensor
    """[instances, batch, d_sae] latent activations f."""
    reconstruction: Tensor
    """[instances] ‖x − x̂‖² summed over d_in, mean over the batch."""
    sparsity: Tensor
    """[instances] Σ f_i (constrained) or Σ f_i‖W_dec,i‖ (april2024), mean over the batch."""


class SparseAutoencoder(nn.Module):
    def __init__(
        self,
        n_instances: int,
        d_in: int,
        d_sae: int,
        recipe: str = DEFAULT_RECIPE,
        tied: bool = False,
        seeds: list[int] | None = None,
        decoder_init_norm: float = 0.1,
        widths: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.recipe, self.tied = recipe, tied
        self.rules: Recipe = get_recipe(recipe)
        """What the recipe decides (init norm, penalty, step constraint, resampling norm)."""
        self.n_instances, self.d_in, self.d_sae = n_instances, d_in, d_sae
        seeds = seeds if seeds is not None else list(range(n_instances))
        self.widths = list(widths) if widths is not None else [d_sae] * n_instances
        """Each instance's own number of latents (a width sweep); ``d_sae`` is the largest."""
        if len(self.widths) != n_instances or max(self.widths) != d_sae or min(self.widths) < 1:
            raise ValueError(f"widths {self.widths} do not fit {n_instances} instances of {d_sae}")
        # Each instance draws from its own seed, exactly the rows a run of its own width draws,
        # so a sweep equals its members trained alone; latents past its width are zero.
        directions = torch.zeros(n_instances, d_sae, d_in)
        for k, (s, w) in enumerate(zip(seeds, self.widths)):
            rows = torch.randn(w, d_in, generator=torch.Generator().manual_seed(s))
            directions[k, :w] = rows / rows.norm(dim=-1, keepdim=True)
        W_dec = directions * self.rules.decoder_init_norm(decoder_init_norm)
        self.W_enc = nn.Parameter(W_dec.transpose(1, 2).contiguous())
        self.W_dec = None if tied else nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(n_instances, d_sae))
        self.b_dec = nn.Parameter(torch.zeros(n_instances, d_in))
        # [instances, d_sae] 1 for an instance's own latents; None when every width is d_sae
        # (no masking cost for plain sweeps). A buffer: it follows the device.
        mask = torch.arange(d_sae)[None, :] < torch.tensor(self.widths)[:, None]
        self.register_buffer(
            "latent_mask", None if bool(mask.all()) else mask.float(), persistent=False
        )

    @property
    def latents(self) -> Tensor:
        """[instances, d_sae] bool: True for the latents an instance owns (its width)."""
        if self.latent_mask is None:
            return torch.ones(
                self.n_instances, self.d_sae, dtype=torch.bool, device=self.W_enc.device
            )
        return self.latent_mask > 0

    @property
    def decoder(self) -> Tensor:
        """W_dec [instances, d_sae, d_in] (the transposed encoder when tied)."""
        return self.W_enc.transpose(1, 2) if self.W_dec is None else self.W_dec

    def encode(self, x: Tensor) -> Tensor:
        """x [batch, d_in] -> codes [instances, batch, d_sae]."""
        # W_enc(x − b_dec) + b_enc = x W_enc + (b_enc − b_dec W_enc): one matmul, no copy of x
        # per instance.
        bias = self.b_enc - torch.einsum("id,ids->is", self.b_dec, self.W_enc)
        pre = torch.matmul(x, self.W_enc)
        pre += bias[:, None, :]  # in place: same numbers, two fewer [I, B, d_sae] temporaries
        if self.latent_mask is not None:
            # A width sweep: latents past an instance's width are 0 and get no gradient.
            pre.mul_(self.latent_mask[:, None, :].to(pre.dtype))
        return torch.relu_(pre)

    def decode(self, codes: Tensor) -> Tensor:
        return torch.baddbmm(self.b_dec[:, None, :], codes, self.decoder)

    def forward(self, x: Tensor) -> SAEOutput:
        """All four outputs in one pass, with a hand-written backward (``sae.loss``): the same
        numbers as ``reference_forward`` up to float rounding, in fewer passes."""
        if torch.is_autocast_enabled(x.device.type):
            # bf16-mixed: autograd's graph follows autocast's per-op casts; the hand-written
            # backward would see bfloat16 activations next to float32 weights.
            return self.reference_forward(x)
        return SAEOutput(*sae_forward(x, *self._loss_inputs()))

    def forward_backward(
        self, x: Tensor, sparsity_weight: Tensor, run: Callable[..., Any] = sae_forward_backward
    ) -> SAEOutput:
        """The training step's forward and backward: the outputs (detached), with the gradients
        of Σ_i reconstruction_i + ``sparsity_weight``_i · sparsity_i added to the parameters'
        ``.grad`` (as ``backward`` adds them). Computed without autograd's graph by ``run``
        (``sae_forward_backward``, or it replayed from a CUDA graph: ``sae.run.graphs``) unless
        autocast is on."""
        if torch.is_autocast_enabled(x.device.type):
            out = self.reference_forward(x)
            (out.reconstruction + sparsity_weight * out.sparsity).sum().backward()
            return SAEOutput(*(t.detach() for t in out))
        params = (self.W_enc, self.W_dec, self.b_enc, self.b_dec)
        return SAEOutput(*add_gradients(run, params, x, *self._loss_inputs(), sparsity_weight))

    def _loss_inputs(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor | None, str]:
        """What ``sae.loss`` takes after x: W_enc, W_dec, b_enc, b_dec, latent_mask, penalty."""
        return self.W_enc, self.W_dec, self.b_enc, self.b_dec, self.latent_mask, self.rules.penalty

    def reference_forward(self, x: Tensor) -> SAEOutput:
        """The plain formula, differentiated by autograd (what ``forward`` must equal)."""
        codes = self.encode(x)
        x_hat = self.decode(codes)
        reconstruction = (x_hat - x).square().sum(-1).mean(-1)
        sparsity = self.rules.sparsity(codes, self.decoder) / x.shape[0]
        return SAEOutput(x_hat, codes, reconstruction, sparsity)

    # -- the constrained recipe's step constraint (sae.recipes.Constrained) -----------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row."""
        W, g = self.decoder, self._decoder_grad()
        if g is None:
            return
        unit = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        g -= (g * unit).sum(-1, keepdim=True) * unit

    def _decoder_grad(self) -> Tensor | None:
        if self.W_dec is None:
            return None if self.W_enc.grad is None else self.W_enc.grad.transpose(1, 2)
        return self.W_dec.grad

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        W = self.decoder
        W /= W.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # -- persistence helpers ----------------------------------------------------------------
    @torch.no_grad()
    def instance_weights(self, k: int, input_scale: float = 1.0) -> dict[str, Tensor]:
        """Instance k in SAELens layout, with an input scale c folded back in: trained on c·x,
        the returned weights act on x and give the same codes."""
        c, w = input_scale, self.widths[k]
        # float32 on disk whatever the training precision (what SAELens and `sae eval` read);
        # only the instance's own latents (its width).
        return {
            "W_enc": (self.W_enc[k, :, :w] * c).float().contiguous().clone(),
            "W_dec": (self.decoder[k, :w] / c).float().contiguous().clone(),
            "b_enc": self.b_enc[k, :w].float().clone(),
            "b_dec": (self.b_dec[k] / c).float().clone(),
        }
