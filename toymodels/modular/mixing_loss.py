"""Loss of mixing: a constructed sparse solution of modular addition and its Hadamard-mixed twin.

The sparse solution, for key frequencies k_1 .. k_K (d = 2K, m = 4K): E_a = E_b = [cos ω_k a,
sin ω_k a]_k, four hidden units per frequency computing cos a·cos b, sin a·sin b, sin a·cos b and
cos a·sin b (each row of L and R has one nonzero entry), and U combining them into
cos(ω_k(a + b − c)). Its logits are Σ_k cos(ω_k(a + b − c)): 100% accuracy.

The mixed twin inserts Q = H/√d (Q² = I) between the embeddings and the bilinear layer
(E Q, L·blockdiag(Q, Q), R·blockdiag(Q, Q)): the same function. Under a per-entry bound B (every
matrix rescaled so its largest |entry| is B, which is what a strong weight decay approximates)
the mixed matrices spread each unit's weight over all entries, so their rescalings multiply the
logits by a factor above 1 and the cross-entropy drops. Matched on the Frobenius norm instead,
Q changes nothing (it is orthogonal): same logits, same loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from toymodels.modular.model import BilinearWeights, accuracy, all_pairs, logits, per_instance_loss
from toymodels.modular.unmixing import apply_unmixing, sylvester_hadamard


def sparse_solution(p: int, frequencies: list[int]) -> BilinearWeights:
    """The constructed sparse solution (one instance, float64, unit per-entry bound)."""
    K = len(frequencies)
    d, m = 2 * K, 4 * K
    a = torch.arange(p, dtype=torch.float64)
    E = torch.zeros(p, d, dtype=torch.float64)
    L = torch.zeros(m, 2 * d, dtype=torch.float64)
    R = torch.zeros(m, 2 * d, dtype=torch.float64)
    U = torch.zeros(p, m, dtype=torch.float64)
    for i, k in enumerate(frequencies):
        w = 2 * math.pi * k / p
        E[:, 2 * i], E[:, 2 * i + 1] = torch.cos(w * a), torch.sin(w * a)
        ca, sa, cb, sb = 2 * i, 2 * i + 1, d + 2 * i, d + 2 * i + 1
        # units: cos a cos b, sin a sin b, sin a cos b, cos a sin b
        for j, (left, right) in enumerate(((ca, cb), (sa, sb), (sa, cb), (ca, sb))):
            L[4 * i + j, left] = 1.0
            R[4 * i + j, right] = 1.0
        # cos(w(a+b-c)) = cos(w(a+b))cos(wc) + sin(w(a+b))sin(wc)
        U[:, 4 * i] = torch.cos(w * a)
        U[:, 4 * i + 1] = -torch.cos(w * a)
        U[:, 4 * i + 2] = torch.sin(w * a)
        U[:, 4 * i + 3] = torch.sin(w * a)
    return BilinearWeights(E[None], E[None].clone(), L[None], R[None], U[None])


def rescale(w: BilinearWeights, bound: float | None = None, like: BilinearWeights | None = None):
    """Every matrix rescaled to largest |entry| ``bound``, or to the Frobenius norm of the same
    matrix in ``like``."""
    out = []
    for i, t in enumerate(w):
        if like is not None:
            target = like[i].flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1)
        else:
            target = bound / t.flatten(1).abs().max(dim=1).values
        out.append(t * target.view(-1, 1, 1))
    return BilinearWeights(*out)


class MixingLoss(NamedTuple):
    p: int
    frequencies: list[int]
    bound: float
    sparse_ce: float
    mixed_ce: float
    frobenius_matched_ce: float
    sparse_accuracy: float
    mixed_accuracy: float
    logit_scale: float
    """Mixed logits / sparse logits under the per-entry bound (the same function, scaled)."""


def score(w: BilinearWeights, p: int) -> tuple[float, float, Tensor]:
    a, b, y = all_pairs(p)
    out = logits(w, a, b)
    return float(per_instance_loss(out, y, "ce")[0]), float(accuracy(out, y)[0]), out


def mixing_loss(p: int = 113, frequencies: list[int] = (14, 35), bound: float = 1.0) -> MixingLoss:
    """Cross-entropy of the sparse solution, its Hadamard-mixed twin (per-entry bound) and the
    twin matched on Frobenius norm, over all p² pairs."""
    frequencies = list(frequencies)
    sparse = rescale(sparse_solution(p, frequencies), bound)
    d = 2 * len(frequencies)
    Q = sylvester_hadamard(d)
    mixed_raw = apply_unmixing(sparse, Q, Q)
    mixed = rescale(mixed_raw, bound)
    matched = rescale(mixed_raw, like=sparse)
    ce_s, acc_s, out_s = score(sparse, p)
    ce_m, acc_m, out_m = score(mixed, p)
    ce_f, _, _ = score(matched, p)
    scale = float((out_m.flatten() @ out_s.flatten()) / out_s.flatten().square().sum())
    return MixingLoss(p, frequencies, bound, ce_s, ce_m, ce_f, acc_s, acc_m, scale)


def code_l1(p: int = 113, frequencies: list[int] = (14, 35)) -> tuple[float, float]:
    """Mean L1 norm per embedding row of the codes of the Fourier embedding in the pure basis
    (the cos/sin coordinates) and in the Hadamard basis (E H/√d): (pure, mixed)."""
    E = sparse_solution(p, list(frequencies)).E_a[0]
    Q = sylvester_hadamard(E.shape[1])
    return float(E.abs().sum(1).mean()), float((E @ Q).abs().sum(1).mean())
