"""Diagnostic plots of a learned dictionary against the ground truth (PNG, headless)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt
import numpy as np

from sae.run.files import save_figure


def matched_latent_order(matching: np.ndarray, n_latents: int) -> np.ndarray:
    """Latent order putting ``matching[f]`` in column ``f`` (skipping unmatched features),
    then the unmatched latents in index order."""
    matching = np.asarray(matching, dtype=np.int64)
    matched = matching[matching >= 0]
    rest = np.setdiff1d(np.arange(n_latents), matched)
    return np.concatenate([matched, rest])


def plot_cosine_heatmap(
    cos: np.ndarray,
    matching: np.ndarray | None,
    path: str | os.PathLike,
    title: str = "",
    full_shape: tuple[int, int] | None = None,
) -> Path:
    """|cos| heatmap, features in order (rows), matched latents on the diagonal (columns).

    ``matching=None``: the columns of ``cos`` are already in that order. ``full_shape``
    (features, latents): ``cos`` summarises a larger matrix (block means, see
    ``sae.metrics.CosineHeatmap``) and the axes count in its indices."""
    cos = np.abs(np.asarray(cos, dtype=np.float64))
    if matching is not None:
        cos = cos[:, matched_latent_order(matching, cos.shape[1])]
    extent = None
    if full_shape is not None and tuple(full_shape) != cos.shape:
        extent = (-0.5, full_shape[1] - 0.5, full_shape[0] - 0.5, -0.5)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(cos, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", extent=extent)
    fig.colorbar(im, ax=ax, label="|cosine|")
    ax.set_xlabel("latent (matched first, in feature order)")
    ax.set_ylabel("ground-truth feature")
    ax.set_title(title or "|cos(feature, latent)|")
    save_figure(fig, path)
    return Path(path)


def plot_best_cosine_histogram(
    best_cos: np.ndarray, path: str | os.PathLike, title: str = ""
) -> Path:
    """Histogram of each feature's best signed cosine, with the 0.9 / 0.99 recovery lines."""
    best_cos = np.asarray(best_cos, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(best_cos, bins=np.linspace(-1.0, 1.0, 81), color="tab:blue")
    for tau, style in ((0.9, "--"), (0.99, ":")):
        ax.axvline(tau, color="tab:red", linestyle=style, label=f"{tau}")
    ax.set_xlabel("best cosine with any latent")
    ax.set_ylabel("features")
    ax.legend(title="recovered at")
    ax.set_title(title or f"best cosine per feature (n={best_cos.size})")
    save_figure(fig, path)
    return Path(path)
