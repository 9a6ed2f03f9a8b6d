"""Figures of one trained instance: the embedding's Fourier spectrum per column and the bilinear
weights L and R, each before and after unmixing. Saved through ``sae.run.files.save_figure``."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from sae.run.files import save_figure
from toymodels.modular.fourier import fourier_power
from toymodels.modular.model import BilinearWeights


def plot_spectrum(
    E: Tensor, E_unmixed: Tensor, keys: list[int], path: str | os.PathLike, title: str = ""
) -> Path:
    """Power per frequency of each column of E (top row) and of E Q (bottom row); the key
    frequencies are marked."""
    d = E.shape[1]
    fig, axes = plt.subplots(2, d, figsize=(2.6 * d, 4.6), sharex=True, squeeze=False)
    for row, (emb, label) in enumerate(((E, "learned"), (E_unmixed, "unmixed"))):
        power = fourier_power(emb.double()).numpy()
        share = power / np.maximum(power.sum(0, keepdims=True), 1e-30)
        freqs = np.arange(1, power.shape[0] + 1)
        for j in range(d):
            ax = axes[row, j]
            colors = ["C3" if f in keys else "C0" for f in freqs]
            ax.bar(freqs, share[:, j], color=colors, width=1.0)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{label} column {j}", fontsize=9)
            if j == 0:
                ax.set_ylabel("share of power")
            if row == 1:
                ax.set_xlabel("frequency k")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _finish(fig, path, f"{title}: E_a spectrum (key frequencies {keys} in red)")


def plot_bilinear(
    w: BilinearWeights, unmixed: BilinearWeights, path: str | os.PathLike, title: str = ""
) -> Path:
    """Heatmaps of L and R (rows: hidden units; columns: x = [E_a; E_b]) before and after
    unmixing, one symmetric colour scale."""
    mats = [
        ("L", w.L[0]),
        ("R", w.R[0]),
        ("L unmixed", unmixed.L[0]),
        ("R unmixed", unmixed.R[0]),
    ]
    vmax = max(float(m.abs().max()) for _, m in mats) or 1.0
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for i, (ax, (name, m)) in enumerate(zip(axes, mats)):
        im = ax.imshow(m.double().numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("input (a | b)")
        if i == 0:
            ax.set_ylabel("hidden unit")
        half = m.shape[1] / 2 - 0.5
        ax.axvline(half, color="k", lw=0.6)
    fig.colorbar(im, ax=axes, shrink=0.8)
    return _finish(fig, path, title)


def _finish(fig: plt.Figure, path: str | os.PathLike, title: str) -> Path:
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return Path(path)
