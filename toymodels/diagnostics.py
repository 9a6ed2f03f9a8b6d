"""Per-instance superposition diagnostics from the paper, on W [instances, n_features, n_hidden].

- feature norm ‖W_i‖; a feature counts as represented when ‖W_i‖ > 0.5;
- interference Σ_{j≠i} (Ŵ_i·W_j)²;
- feature dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² (0 for an unrepresented zero row);
- dimensions per feature D* = m / ‖W‖_F².
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

REPRESENTED_NORM = 0.5


class Diagnostics(NamedTuple):
    feature_norms: Tensor
    """[instances, n_features]"""
    interference: Tensor
    """[instances, n_features]"""
    feature_dimensionality: Tensor
    """[instances, n_features]"""
    dims_per_feature: Tensor
    """[instances]: D* = m / ‖W‖_F²"""
    n_represented: Tensor
    """[instances]: features with ‖W_i‖ > 0.5"""
    represented: Tensor
    """[instances, n_features] bool"""


@torch.no_grad()
def diagnose(W: Tensor) -> Diagnostics:
    W = W.detach().double()
    norms = W.norm(dim=-1)
    unit = W / norms.clamp_min(1e-12)[..., None]
    overlap_sq = torch.einsum("ifh,igh->ifg", unit, W).square()  # (Ŵ_i·W_j)²
    total = overlap_sq.sum(-1)
    self_term = torch.diagonal(overlap_sq, dim1=-2, dim2=-1)
    dimensionality = torch.where(norms > 1e-6, norms.square() / total.clamp_min(1e-24), 0.0)
    m = W.shape[-1]
    frob = W.square().sum(dim=(-2, -1))
    represented = norms > REPRESENTED_NORM
    return Diagnostics(
        feature_norms=norms.float(),
        interference=(total - self_term).float(),
        feature_dimensionality=dimensionality.float(),
        dims_per_feature=(m / frob.clamp_min(1e-24)).float(),
        n_represented=represented.sum(-1),
        represented=represented,
    )
