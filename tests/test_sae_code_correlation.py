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


def test_eval_reports_the_correlation_next_to_the_decoder_cosine() -> None:
    """An SAE whose latents are exactly the true codes (orthogonal features, identity weights)
    scores 1 on both; swapping two latents' encoders keeps the decoder cosines of the
    untouched features and drops the correlations of the swapped ones to ~0."""
    from sae.evaluate import evaluate_sae
    from sae.model import SparseAutoencoder

    g = torch.Generator().manual_seed(1)
    n = 6
    true = torch.rand(4000, n, generator=g) * (torch.rand(4000, n, generator=g) < 0.3)
    directions = torch.eye(n)
    sae = SparseAutoencoder(1, n, n, "constrained", seeds=[0])
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(n)[None])
        sae.W_dec.copy_(torch.eye(n)[None])
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    represented = torch.tensor([True, True, True, True, False, False])
    result = evaluate_sae(sae, directions, [(true @ directions, true)], represented)
    assert result["scalars"]["all/activation_corr"] == pytest.approx(1.0, abs=1e-9)
    # over the represented features, with their own matching (as represented/mcc)
    assert result["scalars"]["represented/activation_corr"] == pytest.approx(1.0, abs=1e-9)
    rows = result["features"]
    assert all(r["matched_cos"] == pytest.approx(1.0) for r in rows)
    assert all(r["activation_corr"] == pytest.approx(1.0, abs=1e-9) for r in rows)
    with torch.no_grad():  # latent 0 reads feature 1's coordinate and latent 1 feature 0's
        sae.W_enc[0, :, :2] = torch.eye(n)[:, [1, 0]]
    result = evaluate_sae(sae, directions, [(true @ directions, true)])
    corr = [r["activation_corr"] for r in result["features"]]
    assert abs(corr[0]) < 0.1 and abs(corr[1]) < 0.1
    assert corr[2:] == pytest.approx([1.0] * (n - 2), abs=1e-9)
    assert [r["matched_cos"] for r in result["features"]] == pytest.approx([1.0] * n)
    # no true codes: no activation-level score
    result = evaluate_sae(sae, directions, [(true @ directions, None)])
    assert "all/activation_corr" not in result["scalars"]
    assert result["features"][0]["activation_corr"] is None
