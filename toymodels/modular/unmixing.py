"""Unmixing: an orthogonal (preferably involutory) Q with E Q made of pure-frequency columns,
applied to both embeddings and, inversely, to the bilinear weights, so the network's function
does not change: with x' = Qᵀx, L x = (L Q) x'.

Candidates: the identity (already pure), the normalised Sylvester Hadamard matrix H/√d
conjugated by a signed permutation (S H Sᵀ/√d, symmetric and orthogonal, so Q² = I) when d is a
power of two, and the involutory reflections nearest the frequency-plane basis; the purest wins.
Only when the plane basis itself (orthogonal, not involutory) is clearly purer is it used.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from toymodels.modular.fourier import column_purity, fit_directions, fourier_power
from toymodels.modular.model import BilinearWeights

MAX_SIGNED_PERMUTATION_D = 4
"""Search every signed permutation only up to this d (d = 4: 384 candidates)."""


def sylvester_hadamard(d: int) -> Tensor:
    """H/√d for d a power of two (Sylvester's construction): symmetric, orthogonal, Q² = I."""
    if d < 1 or d & (d - 1):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of two, not d={d}")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < d:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / d**0.5


def signed_permutations(d: int) -> list[Tensor]:
    if d > MAX_SIGNED_PERMUTATION_D:
        return [torch.eye(d, dtype=torch.float64)]
    out = []
    for perm in itertools.permutations(range(d)):
        P = torch.eye(d, dtype=torch.float64)[list(perm)]
        for signs in itertools.product((1.0, -1.0), repeat=d):
            out.append(torch.diag(torch.tensor(signs, dtype=torch.float64)) @ P)
    return out


def nearest_involution(M: Tensor) -> Tensor:
    """The symmetric orthogonal matrix (Q² = I) nearest M: the polar factor of (M + Mᵀ)/2."""
    sym = (M + M.T) / 2
    values, vectors = torch.linalg.eigh(sym)
    signs = torch.where(values >= 0, 1.0, -1.0).to(M.dtype)
    return vectors @ torch.diag(signs) @ vectors.T


def plane_basis(E: Tensor, keys: list[int]) -> Tensor:
    """An orthogonal d × d matrix whose columns span each key frequency's plane in turn (nearest
    orthogonal matrix to the per-frequency orthonormal bases), completed to d columns."""
    d = E.shape[1]
    fit = fit_directions(E, keys)
    blocks = []
    for i in range(len(keys)):
        plane = fit.directions[2 * i : 2 * i + 2].T  # [d, 2]
        q, r = torch.linalg.qr(plane)
        rank = int((r.diagonal().abs() > 1e-8 * r.abs().max().clamp_min(1e-30)).sum())
        blocks.append(q[:, :rank])
    B = torch.cat(blocks, dim=1)[:, :d] if blocks else torch.zeros(d, 0, dtype=torch.float64)
    if B.shape[1] < d:  # complete with the orthogonal complement
        full = torch.linalg.qr(torch.cat([B, torch.eye(d, dtype=B.dtype)], 1)).Q
        B = torch.cat([B, full[:, B.shape[1] : d]], 1)
    U, _, Vh = torch.linalg.svd(B)
    return U @ Vh


class Unmixing(NamedTuple):
    Q: Tensor
    """[d, d] float64: the unmixed embedding is E Q."""
    method: str
    """hadamard, reflection (involutory, nearest the plane basis) or orthogonal."""
    purity: Tensor
    """[d] column purity of E Q."""


def purity_of(E: Tensor, keys: list[int]) -> Tensor:
    return column_purity(fourier_power(E.double()), keys)


def weighted_purity(E: Tensor, keys: list[int]) -> float:
    """Column purity averaged with each column's power as its weight: what the search
    maximises, so that a column holding only the fit's small residual (an embedding with fewer
    frequency directions than columns) does not outweigh the columns that carry the signal."""
    power = fourier_power(E.double())
    col = power.sum(0)
    return float((column_purity(power, keys) * col).sum() / col.sum().clamp_min(1e-30))


def find_unmixing(E: Tensor, keys: list[int], reads: Tensor | None = None) -> Unmixing:
    """The unmixing of one embedding E [p, d] (see the module docstring): the involutory
    candidate (the identity, S H Sᵀ/√d, or a reflection nearest the frequency-plane basis) with
    the purest columns (power-weighted, ``weighted_purity``), unless the plane basis itself is
    purer by more than 0.01. ``reads``: the columns of L and R that read this embedding
    ([rows, d]); among candidates of equal purity (to 1e-3) the one that leaves them sparsest
    (smallest L1 norm) wins: E alone cannot tell a frequency's phases apart, the bilinear
    weights can."""
    E = E.double()
    d = E.shape[1]
    perms = signed_permutations(d)

    def rank(candidate: tuple[Tensor, str]) -> tuple[float, float]:
        Q = candidate[0]
        purity = round(weighted_purity(E @ Q, keys), 3)
        return purity, -float((reads.double() @ Q).abs().sum()) if reads is not None else 0.0

    candidates = [(torch.eye(d, dtype=torch.float64), "identity")]
    if d & (d - 1) == 0:
        H = sylvester_hadamard(d)
        candidates += [(S @ H @ S.T, "hadamard") for S in perms]
    O = plane_basis(E, keys)
    candidates += [(nearest_involution(O @ S), "reflection") for S in perms]
    Q, method = max(candidates, key=rank)
    if weighted_purity(E @ O, keys) > weighted_purity(E @ Q, keys) + 0.01:
        return Unmixing(O, "orthogonal", purity_of(E @ O, keys))
    return Unmixing(Q, method, purity_of(E @ Q, keys))


def bilinear_reads(w: BilinearWeights, side: str) -> Tensor:
    """The columns of L and R (one instance) that read E_a (side "a") or E_b ("b"): [2m, d]."""
    d = w.E_a.shape[-1]
    cols = slice(0, d) if side == "a" else slice(d, 2 * d)
    return torch.cat([w.L[0, :, cols], w.R[0, :, cols]])


def apply_unmixing(w: BilinearWeights, Q_a: Tensor, Q_b: Tensor) -> BilinearWeights:
    """E_a Q_a, E_b Q_b, and L, R times blockdiag(Q_a, Q_b) (Q orthogonal: Q⁻ᵀ = Q), for
    weights of one or more instances sharing the Q's."""
    dtype = w.E_a.dtype
    Qa, Qb = Q_a.to(dtype), Q_b.to(dtype)
    block = torch.block_diag(Qa, Qb)
    return BilinearWeights(w.E_a @ Qa, w.E_b @ Qb, w.L @ block, w.R @ block, w.U)
