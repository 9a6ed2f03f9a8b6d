"""Activation-level scores: how well each matched latent's activation tracks its feature's true
code, next to how well its decoder row points along the feature's direction.

A latent can point the right way yet fire on the wrong rows (absorbed into a neighbour, or
shrunk to zero on weak occurrences); the decoder cosine cannot see that, the correlation of the
codes can. Needs the true codes (``feature_acts`` in the activation file).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class CodeCorrelation:
    """Streaming Pearson correlation, over held-out rows, between the activation of latent
    ``feature_to_latent[i]`` and the true code of feature i (float64 sums on the batches'
    device; no host sync in ``update``).

    ``per_feature()`` is NaN for an unmatched feature or a constant code (a dead latent, a
    feature that never fires); ``mean(mask)`` averages over features counting those as 0, as MCC
    counts an unmatched feature."""

    def __init__(self, feature_to_latent: np.ndarray) -> None:
        self._l2 = torch.as_tensor(np.asarray(feature_to_latent), dtype=torch.long)
        self._sums: Tensor | None = None
        self.n = 0

    @torch.no_grad()
    def update(self, codes: Tensor, true_codes: Tensor) -> None:
        """``codes`` [B, n_latents] SAE activations, ``true_codes`` [B, n_features]."""
        if true_codes.shape[1] != self._l2.numel():
            raise ValueError(
                f"true codes have {true_codes.shape[1]} features, the matching {self._l2.numel()}"
            )
        if self._sums is None:
            self._l2 = self._l2.to(codes.device)
            self._sums = torch.zeros(5, self._l2.numel(), dtype=torch.float64, device=codes.device)
        a = codes.index_select(1, self._l2.clamp(min=0)).double()
        b = true_codes.double()
        self._sums += torch.stack(
            [a.sum(0), b.sum(0), a.square().sum(0), b.square().sum(0), (a * b).sum(0)]
        )
        self.n += codes.shape[0]

    def per_feature(self) -> np.ndarray:
        """[n_features] correlation of each feature's true code with its matched latent."""
        if self._sums is None or self.n == 0:
            return np.full(self._l2.numel(), np.nan)
        sa, sb, saa, sbb, sab = self._sums.cpu().numpy()
        n = float(self.n)
        cov = sab / n - (sa / n) * (sb / n)
        var_a = saa / n - (sa / n) ** 2
        var_b = sbb / n - (sb / n) ** 2
        denom = np.sqrt(np.clip(var_a, 0, None) * np.clip(var_b, 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(denom > 1e-24, cov / denom, np.nan)
        corr[self._l2.cpu().numpy() < 0] = np.nan
        return corr

    def mean(self, mask: np.ndarray | None = None) -> float:
        """Mean over the features (those in ``mask``), NaN counted as 0; NaN if none."""
        corr = self.per_feature()
        if mask is not None:
            corr = corr[np.asarray(mask, dtype=bool)]
        return float(np.nan_to_num(corr, nan=0.0).mean()) if corr.size else float("nan")
