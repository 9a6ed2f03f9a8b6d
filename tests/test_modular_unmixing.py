"""Unmixing of the modular-addition embeddings: Q² = I, the Hadamard search on a constructed
mixed embedding, the fallback for d that has no Hadamard matrix, and an unchanged function."""

from __future__ import annotations

import math

import pytest
import torch

from toymodels.modular.fourier import column_purity, fourier_power, key_frequencies
from toymodels.modular.mixing_loss import sparse_solution
from toymodels.modular.model import BilinearWeights, all_pairs, logits
from toymodels.modular.unmixing import (
    apply_unmixing,
    bilinear_reads,
    find_unmixing,
    nearest_involution,
    sylvester_hadamard,
)


@pytest.mark.parametrize("d", [1, 2, 4, 8, 16])
def test_sylvester_hadamard_is_an_orthogonal_involution(d: int) -> None:
    Q = sylvester_hadamard(d)
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.allclose(Q @ Q, eye, atol=1e-12)
    assert torch.allclose(Q, Q.T)
    # every entry ±1/√d: the densest orthogonal basis
    assert torch.allclose(Q.abs(), torch.full((d, d), 1 / math.sqrt(d), dtype=torch.float64))


def test_sylvester_hadamard_refuses_other_sizes() -> None:
    with pytest.raises(ValueError, match="powers of two"):
        sylvester_hadamard(3)


def test_nearest_involution_squares_to_identity() -> None:
    M = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Q = nearest_involution(M)
    assert torch.allclose(Q @ Q, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(Q, Q.T, atol=1e-12)


def test_fourier_power_and_purity_of_pure_and_mixed_columns() -> None:
    E = sparse_solution(113, [14, 35]).E_a[0]
    power = fourier_power(E)
    assert key_frequencies(power, share=0.99, cap=4) == [14, 35]
    assert torch.allclose(column_purity(power, [14, 35]), torch.ones(4, dtype=torch.float64))
    mixed = E @ sylvester_hadamard(4)
    # each Hadamard column is an even mix of the two frequencies
    purity = column_purity(fourier_power(mixed), [14, 35])
    assert torch.allclose(purity, torch.full((4,), 0.5, dtype=torch.float64), atol=1e-9)


def test_hadamard_mixture_is_found_and_the_function_does_not_change() -> None:
    p = 113
    sparse = sparse_solution(p, [14, 35])
    # a mixture with a permuted, sign-flipped Hadamard: the search must find its inverse
    S = torch.eye(4, dtype=torch.float64)[[2, 0, 3, 1]] * torch.tensor([1.0, -1, 1, -1])[:, None]
    Q_mix = S @ sylvester_hadamard(4) @ S.T
    mixed = apply_unmixing(sparse, Q_mix, Q_mix)
    a, b, _ = all_pairs(p)
    unmix = find_unmixing(mixed.E_a[0], [14, 35], reads=bilinear_reads(mixed, "a"))
    assert unmix.method == "hadamard"
    assert torch.allclose(unmix.Q @ unmix.Q, torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert unmix.purity.min() > 0.999
    unmixed = apply_unmixing(mixed, unmix.Q, unmix.Q)
    assert (logits(unmixed, a, b) - logits(sparse, a, b)).abs().max() < 1e-9
    # the unmixed bilinear weights are as sparse as the constructed ones (one entry per row)
    assert int((unmixed.L.abs() > 1e-9).sum()) == int((sparse.L.abs() > 1e-9).sum()) == 8


def test_fallback_unmixes_a_rotated_embedding_without_a_hadamard_matrix() -> None:
    # d = 3 (no Hadamard): two pure columns cos/sin of k=5 plus one of k=9, rotated at random
    p = 61
    a = torch.arange(p, dtype=torch.float64)
    w5, w9 = 2 * math.pi * 5 / p, 2 * math.pi * 9 / p
    E = torch.stack([torch.cos(w5 * a), torch.sin(w5 * a), torch.cos(w9 * a)], 1)
    O = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)).double()).Q
    mixed = E @ O
    assert column_purity(fourier_power(mixed), [5, 9]).mean() < 0.9
    unmix = find_unmixing(mixed, [5, 9])
    assert unmix.method in ("reflection", "orthogonal")
    assert torch.allclose(unmix.Q.T @ unmix.Q, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert unmix.purity.min() > 0.99


def test_apply_unmixing_keeps_float32_logits_of_random_weights() -> None:
    g = torch.Generator().manual_seed(0)
    w = BilinearWeights(
        *(torch.randn(s, generator=g) for s in [(2, 17, 4)] * 2 + [(2, 8, 8)] * 2 + [(2, 17, 8)])
    )
    Q = sylvester_hadamard(4).float()
    a, b, _ = all_pairs(17)
    assert (logits(apply_unmixing(w, Q, Q), a, b) - logits(w, a, b)).abs().max() < 1e-4


def test_direction_spread_of_pure_and_hadamard_mixed_embeddings() -> None:
    from toymodels.modular.analysis import direction_spread

    E = sparse_solution(113, [14, 35]).E_a[0]
    assert direction_spread(E, [14, 35]) == pytest.approx(1.0)
    assert direction_spread(E @ sylvester_hadamard(4), [14, 35]) == pytest.approx(4.0)
