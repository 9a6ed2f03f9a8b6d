"""Fourier structure of the embeddings: power per column and frequency, key frequencies, column
purity and the pure frequency directions (cos and sin of each key frequency, in embedding space).

Frequencies are k = 1 .. p // 2 (k and p − k are the same real frequency); the constant part
(k = 0) is left out, so a column's power is that of its centred values.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


def fourier_power(E: Tensor) -> Tensor:
    """Power of each column per frequency: [..., p // 2, d] for embeddings [..., p, d]
    (|DFT|² at k = 1 .. p // 2, doubled when k ≠ p − k, so the rows sum to p · the variance)."""
    p = E.shape[-2]
    spectrum = torch.fft.rfft(E.double(), dim=-2)[..., 1 : p // 2 + 1, :]
    power = spectrum.abs().square()
    doubled = torch.full((power.shape[-2], 1), 2.0, dtype=power.dtype, device=power.device)
    if p % 2 == 0:  # the Nyquist frequency has no twin
        doubled[-1] = 1.0
    return power * doubled


def key_frequencies(
    power: Tensor, n: int = 0, share: float = 0.9, cap: int | None = None
) -> list[int]:
    """The frequencies (1-based) carrying most of the power of one instance; ``power`` is
    [n_freq, columns] (columns of both embeddings together). ``n`` > 0: the top ``n``; else the
    fewest top ones whose power reaches ``share`` of the total, at most ``cap``."""
    total = power.sum(dim=-1)
    order = torch.argsort(total, descending=True)
    if n <= 0:
        cumulative = torch.cumsum(total[order], 0) / total.sum().clamp_min(1e-30)
        n = int((cumulative < share).sum()) + 1
        if cap is not None:
            n = min(n, cap)
    return sorted(int(k) + 1 for k in order[:n])


def column_purity(power: Tensor, keys: list[int]) -> Tensor:
    """Per column, the largest share of its power in a single key frequency ([..., columns]):
    1 for a pure column, 0.5 for an even mix of two."""
    idx = torch.tensor([k - 1 for k in keys], device=power.device)
    share = power[..., idx, :] / power.sum(dim=-2, keepdim=True).clamp_min(1e-30)
    return share.max(dim=-2).values


def key_power_share(power: Tensor, keys: list[int]) -> float:
    """Share of the total power (all columns) in the key frequencies."""
    idx = torch.tensor([k - 1 for k in keys], device=power.device)
    return float(power[..., idx, :].sum() / power.sum().clamp_min(1e-30))


class FourierFit(NamedTuple):
    """E ≈ mean + codes @ directions, with codes the cos and sin waves of the key frequencies."""

    names: list[str]
    """``cos<k>``, ``sin<k>`` for each key frequency k."""
    waves: Tensor
    """[p, 2K]: cos(2πka/p), sin(2πka/p) for each key frequency."""
    directions: Tensor
    """[2K, d]: the embedding direction each wave moves along (least squares, exact for a pure
    Fourier embedding)."""
    mean: Tensor
    """[d]: the constant part."""
    explained: float
    """Share of the centred embedding's variance the fit explains."""


def fourier_waves(p: int, keys: list[int]) -> tuple[Tensor, list[str]]:
    a = torch.arange(p, dtype=torch.float64)
    cols, names = [], []
    for k in keys:
        cols += [torch.cos(2 * math.pi * k * a / p), torch.sin(2 * math.pi * k * a / p)]
        names += [f"cos{k}", f"sin{k}"]
    return torch.stack(cols, dim=1), names


def fit_directions(E: Tensor, keys: list[int]) -> FourierFit:
    """The pure frequency directions of one embedding E [p, d]."""
    E = E.double()
    p = E.shape[0]
    waves, names = fourier_waves(p, keys)
    mean = E.mean(dim=0)
    centred = E - mean
    directions = torch.linalg.lstsq(waves, centred).solution
    residual = centred - waves @ directions
    explained = 1.0 - float(residual.square().sum() / centred.square().sum().clamp_min(1e-30))
    return FourierFit(names, waves, directions, mean, explained)
