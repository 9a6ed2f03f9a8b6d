"""Activation-level scores: each matched latent's activations against its feature's true code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae.code_correlation import CodeCorrelation


def test_streamed_correlation_equals_numpy_on_all_rows() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.rand(3000, 4, generator=g) * (torch.rand(3000, 4, generator=g) < 0.2)
    codes = torch.zeros(3000, 6)
    codes[:, 5] = 2.5 * true[:, 0]  # a perfect latent for feature 0, at another scale
    codes[:, 1] = torch.relu(true[:, 1] - 0.3)  # shrunk: fires only on strong occurrences
    codes[:, 2] = true[torch.randperm(3000, generator=g), 2]  # right rate, wrong rows
    # latent 3 is dead; feature 3 matched to it; latent 0 and 4 unmatched
    corr = CodeCorrelation(np.array([5, 1, 2, 3]))
    for start in range(0, 3000, 700):  # uneven batches
        corr.update(codes[start : start + 700], true[start : start + 700])
    got = corr.per_feature()
    expect = [
        np.corrcoef(codes[:, j].double(), true[:, i].double())[0, 1]
        for i, j in [(0, 5), (1, 1), (2, 2)]
    ]
    np.testing.assert_allclose(got[:3], expect, atol=1e-9)
    assert got[0] == pytest.approx(1.0, abs=1e-9)
    assert 0.5 < got[1] < 0.99 and abs(got[2]) < 0.1
    assert np.isnan(got[3])  # a dead latent has no correlation
    # the mean counts it as 0, like MCC counts an unmatched feature
    assert corr.mean() == pytest.approx((got[0] + got[1] + got[2]) / 4)
    assert corr.mean(np.array([1, 0, 0, 0])) == pytest.approx(1.0)


def test_an_unmatched_feature_scores_nan() -> None:
    corr = CodeCorrelation(np.array([-1, 0]))
    true = torch.rand(100, 2)
    corr.update(true[:, 1:].clone(), true)
    got = corr.per_feature()
    assert np.isnan(got[0]) and got[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 features"):
        corr.update(torch.rand(5, 1), torch.rand(5, 3))
