"""SAE persistence in SAELens's layout: a folder per SAE with ``sae_weights.safetensors``
(``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc``, ``b_dec``) and ``cfg.json``.

``cfg.json`` holds every field of SAELens 6.x's standard-SAE config (``SAELENS_FIELDS``), so
``sae_lens.SAE.load_from_disk(folder)`` loads it as it is, and our own fields beside them.
``load_sae`` reads our folders and any SAELens standard (ReLU) SAE folder."""

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


SAELENS_FORMAT_VERSION = "6.0.0"
"""The SAELens config format ``cfg.json`` follows (its ``metadata.sae_lens_version``: SAELens
reads a config without one, or older than 6.0, as a legacy config and converts it)."""


def saelens_fields(d_in: int, d_sae: int, dtype: torch.dtype) -> dict[str, Any]:
    """What SAELens 6.x's ``StandardSAEConfig`` needs (its dataclass fields, ``architecture``,
    and ``metadata``) for an SAE f = ReLU(W_encᵀ(x − b_dec) + b_enc), x̂ = W_decᵀf + b_dec on
    unnormalised inputs."""
    return {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "trained_with": "sae-toolkit"},
    }


def save_sae(folder: str | Path, weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    """Write one SAE: ``weights`` in SAELens's names and layouts, and ``cfg.json`` with SAELens's
    fields first, then ``cfg`` (ours: recipe, λ, lr, seed, ...)."""
    d_in, d_sae = weights["W_enc"].shape
    cfg = saelens_fields(d_in, d_sae, weights["W_enc"].dtype) | cfg
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
    """One SAE from its folder: ours, or any SAELens standard (ReLU) SAE (``cfg.json`` of
    SAELens 6.x or older, weights in any float dtype; read as float32)."""
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
    if not isinstance(cfg, dict):
        raise UsageError(f"{cfg_path}: not a config (a JSON object)")
    _check_supported(cfg, cfg_path)
    try:
        w = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise UsageError(f"{weights_path}: unreadable ({str(e).splitlines()[0]})") from None
    missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(w)
    if missing:
        raise UsageError(f"{weights_path}: missing tensors {sorted(missing)}")
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        if name in w and not torch.all(w[name] == 1):
            raise UsageError(f"{weights_path}: a {name} other than 1 is not supported")
    w = {k: w[k].float() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    d_in, d_sae = w["W_enc"].shape
    if (
        w["W_dec"].shape != (d_sae, d_in)
        or w["b_enc"].shape != (d_sae,)
        or w["b_dec"].shape != (d_in,)
    ):
        raise UsageError(f"{weights_path}: tensor shapes do not fit W_enc {list(w['W_enc'].shape)}")
    if cfg.get("apply_b_dec_to_input") is False:
        # SAELens then encodes ReLU(x W_enc + b_enc); ours subtracts b_dec first, so fold it in.
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    recipe = cfg.get("recipe", DEFAULT_RECIPE)
    sae = SparseAutoencoder(1, d_in, d_sae, recipe, tied=False, seeds=[0])
    sae.load_state_dict({k: v[None] for k, v in w.items()})
    return LoadedSAE(sae, cfg)


def _check_supported(cfg: dict[str, Any], path: Path) -> None:
    """Refuse, in one line, a SAELens SAE that is not a plain ReLU SAE on raw inputs."""
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    normalize = cfg.get("normalize_activations") or "none"
    if architecture != "standard" or activation != "relu":
        raise UsageError(
            f"{path}: a {architecture} SAE with activation {activation!r}; only standard "
            "ReLU SAEs can be scored"
        )
    if normalize != "none":
        raise UsageError(
            f"{path}: normalize_activations={normalize!r} is not supported (only 'none')"
        )
