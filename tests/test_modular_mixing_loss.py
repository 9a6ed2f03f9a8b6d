"""Loss of mixing: the constructed sparse solution and its Hadamard-mixed twin (per-entry bound)
both solve modular addition; the twin has the lower cross-entropy, the Frobenius-matched twin
the same one; and the L1 norm of the Fourier embedding's codes in both bases."""

from __future__ import annotations

import pytest

from toymodels.modular.mixing_loss import code_l1, mixing_loss, sparse_solution


def test_issue_figures_p113_two_frequencies_m8() -> None:
    r = mixing_loss(113, [14, 35], bound=1.0)
    assert sparse_solution(113, [14, 35]).L.shape == (1, 8, 8)  # m = 8 units
    assert r.sparse_accuracy == 1.0 and r.mixed_accuracy == 1.0
    assert r.sparse_ce == pytest.approx(3.1993, abs=1e-4)
    assert r.mixed_ce == pytest.approx(2.3652, abs=1e-4)
    assert r.frobenius_matched_ce == pytest.approx(r.sparse_ce, abs=1e-9)
    # the twin is the same function, scaled up by the per-entry bound
    assert r.logit_scale == pytest.approx(2.0215, abs=1e-4)


@pytest.mark.parametrize("frequencies", [[1, 2], [7, 50], [3, 41], [5]])
def test_mixing_lowers_cross_entropy_under_a_per_entry_bound(frequencies: list[int]) -> None:
    r = mixing_loss(113, frequencies, bound=1.0)
    assert r.sparse_accuracy == 1.0 and r.mixed_accuracy == 1.0
    assert r.mixed_ce < r.sparse_ce - 0.3
    assert r.frobenius_matched_ce == pytest.approx(r.sparse_ce, abs=1e-9)


def test_code_l1_is_larger_in_the_pure_basis() -> None:
    pure, mixed = code_l1(113, [14, 35])
    assert pure == pytest.approx(2.5464, abs=1e-4)  # 4 · E|cos| = 8/π for uniform phases
    assert mixed == pytest.approx(2.2926, abs=1e-4)
