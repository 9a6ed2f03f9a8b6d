"""Per-instance superposition diagnostics from the paper, on W [instances, n_features, n_hidden].

- feature norm ‖W_i‖;
- interference Σ_{j≠i} (Ŵ_i·W_j)²;
- feature dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² (0 for an unrepresented zero row);
- dimensions per feature D* = m / ‖W‖_F².

Whether a feature is *represented* is decided by one functional rule, shared by metrics.json
and the activation export (``represented``): alone at its largest value, the feature moves its
own output by more than ``REPRESENTED_RESPONSE``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

REPRESENTED_RESPONSE = 0.5
"""A lone feature at magnitude 1 must move its own output by more than this (half of the
value it should reproduce) to count as represented."""


class Diagnostics(NamedTuple):
    feature_norms: Tensor
    """[instances, n_features]"""
    interference: Tensor
    """[instances, n_features]"""
    feature_dimensionality: Tensor
    """[instances, n_features]"""
    dims_per_feature: Tensor
    """[instances]: D* = m / ‖W‖_F²"""


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
    return Diagnostics(
        feature_norms=norms.float(),
        interference=(total - self_term).float(),
        feature_dimensionality=dimensionality.float(),
        dims_per_feature=(m / frob.clamp_min(1e-24)).float(),
    )


@torch.no_grad()
def represented(model: Any) -> Tensor:
    """[instances, n_ground] bool: which ground-truth directions the model represents (the
    functional rule above; ``model.lone_feature_response`` answers for each kind)."""
    return model.lone_feature_response() > REPRESENTED_RESPONSE
