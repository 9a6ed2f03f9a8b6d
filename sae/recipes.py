"""SAE training recipes: one object per recipe holds everything the recipe decides.

A recipe fixes the decoder's initial row norm, the sparsity penalty, the constraint applied
around each optimizer step, the decoder norm a resampled latent gets and the default gradient
clip. The model, the training module, the config and the resampler ask the recipe instead of
comparing its name (``sae.recipe`` in the config, ``"recipe"`` in each SAE's ``cfg.json``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from sae.model import SparseAutoencoder

DEFAULT_RECIPE = "april2024"


class Recipe:
    """The interface; ``Constrained`` and ``April2024`` implement it."""

    name: str
    penalty: str
    """The sparsity penalty's name in ``sae.loss.sae_forward`` (what ``sparsity`` computes)."""
    default_grad_clip: float | None
    """Per-instance gradient-norm clip when ``train.grad_clip`` is None."""

    def decoder_init_norm(self, configured: float) -> float:
        """Row norm of the decoder at init (``sae.decoder_init_norm`` is ``configured``)."""
        raise NotImplementedError

    def sparsity(self, codes: Tensor, decoder: Tensor) -> Tensor:
        """[instances] penalty summed over latents and the batch (codes [I, B, L], decoder
        [I, L, d]); the model divides by the batch size."""
        raise NotImplementedError

    def before_update(self, sae: SparseAutoencoder) -> None:
        """Gradients are ready; the optimizer has not stepped."""

    def after_update(self, sae: SparseAutoencoder) -> None:
        """The optimizer has stepped."""

    def resampled_decoder_norm(self, mean_alive_norm: Tensor) -> Tensor:
        """[instances] norm of a revived latent's decoder row, from the mean alive row norm."""
        return mean_alive_norm


class Constrained(Recipe):
    """Towards Monosemanticity: unit-norm decoder rows after every step, with the gradient
    component parallel to each row removed first; sparsity Σ f_i."""

    name = "constrained"
    penalty = "sum"
    default_grad_clip = None

    def decoder_init_norm(self, configured: float) -> float:
        return 1.0

    def sparsity(self, codes: Tensor, decoder: Tensor) -> Tensor:
        return codes.sum(dim=(1, 2))

    def before_update(self, sae: SparseAutoencoder) -> None:
        sae.remove_parallel_decoder_grad()

    def after_update(self, sae: SparseAutoencoder) -> None:
        sae.normalize_decoder()

    def resampled_decoder_norm(self, mean_alive_norm: Tensor) -> Tensor:
        import torch

        return torch.ones_like(mean_alive_norm)


class April2024(Recipe):
    """Anthropic's April 2024 update (SAELens's default): free decoder norms, sparsity
    Σ f_i‖W_dec,i‖, decoder rows of norm ``sae.decoder_init_norm`` at init (W_enc = W_decᵀ),
    per-instance gradient clipping at 1.0."""

    name = "april2024"
    penalty = "decoder_norm"
    default_grad_clip = 1.0

    def decoder_init_norm(self, configured: float) -> float:
        return configured

    def sparsity(self, codes: Tensor, decoder: Tensor) -> Tensor:
        return (codes.sum(1) * decoder.norm(dim=-1)).sum(-1)


RECIPES: dict[str, Recipe] = {r.name: r for r in (Constrained(), April2024())}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(RECIPES)
        raise ValueError(f"unknown SAE recipe {name!r}: choose one of {known}") from None
