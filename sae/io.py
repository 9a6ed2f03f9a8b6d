"""SAE persistence in SAELens's layout: a folder per SAE with ``sae_weights.safetensors``
(``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc``, ``b_dec``) and ``cfg.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae.model import SparseAutoencoder
from sae.recipes import DEFAULT_RECIPE
from sae.run.errors import UsageError
from sae.run.files import atomic_path, write_json
from sae.run.layout import SAEDir


class LoadedSAE:
    """One trained SAE, read from its folder, acting on the original (unscaled) inputs:
    ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in],
    ``encode`` [batch, d_in] -> [batch, d_sae], ``decode`` back, and its ``cfg.json``."""

    def __init__(self, module: SparseAutoencoder, cfg: dict[str, Any]) -> None:
        self._module, self.cfg = module, cfg

    def batched(self) -> SparseAutoencoder:
        """The same SAE as a one-instance batch, for code that takes many (``evaluate_sae``)."""
        return self._module

    @property
    def recipe(self) -> str:
        return self._module.recipe

    @property
    def d_in(self) -> int:
        return self._module.d_in

    @property
    def d_sae(self) -> int:
        return self._module.d_sae

    @property
    def W_enc(self) -> torch.Tensor:
        return self._module.W_enc[0]

    @property
    def W_dec(self) -> torch.Tensor:
        return self._module.decoder[0]

    @property
    def b_enc(self) -> torch.Tensor:
        return self._module.b_enc[0]

    @property
    def b_dec(self) -> torch.Tensor:
        return self._module.b_dec[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._module.encode(x)[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._module.decode(codes[None])[0]


def save_sae(folder: str | Path, weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    folder = SAEDir(folder)
    folder.root.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder.weights) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()},
            str(tmp),
            metadata={"format": "sae-toolkit/sae"},
        )
    write_json(folder.cfg, cfg)


def load_sae(folder: str | Path) -> LoadedSAE:
    folder = SAEDir(folder)
    weights_path, cfg_path = folder.weights, folder.cfg
    if not weights_path.exists():
        raise UsageError(f"no SAE in {folder.root}: missing {SAEDir.WEIGHTS}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no SAE in {folder.root}: missing {SAEDir.CFG}") from None
    except json.JSONDecodeError:
        raise UsageError(f"{cfg_path}: not valid JSON") from None
    try:
        w = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise UsageError(f"{weights_path}: unreadable ({str(e).splitlines()[0]})") from None
    missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(w)
    if missing:
        raise UsageError(f"{weights_path}: missing tensors {sorted(missing)}")
    d_in, d_sae = w["W_enc"].shape
    if (
        w["W_dec"].shape != (d_sae, d_in)
        or w["b_enc"].shape != (d_sae,)
        or w["b_dec"].shape != (d_in,)
    ):
        raise UsageError(f"{weights_path}: tensor shapes do not fit W_enc {list(w['W_enc'].shape)}")
    recipe = cfg.get("recipe", DEFAULT_RECIPE)
    sae = SparseAutoencoder(1, d_in, d_sae, recipe, tied=False, seeds=[0])
    sae.load_state_dict({k: w[k][None] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
    return LoadedSAE(sae, cfg)
