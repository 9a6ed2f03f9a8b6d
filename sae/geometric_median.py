"""The geometric median (Weiszfeld's algorithm), a robust centre for initialising b_dec."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def geometric_median(points: Tensor, iterations: int = 100, tol: float = 1e-7) -> Tensor:
    """argmin_y Σ_i ‖x_i − y‖ for points [n, d], starting from the mean."""
    x = points.double()
    y = x.mean(0)
    for _ in range(iterations):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(1e-12)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - y).norm() <= tol * (1.0 + y.norm()):
            y = new
            break
        y = new
    return y.to(points.dtype)
