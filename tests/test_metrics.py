"""Ground-truth dictionary scores, streaming reconstruction stats and the two plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sae import metrics
from sae.metrics import (
    ReconstructionStats,
    cosine_similarity_matrix,
    evaluate_dictionary,
    match_features,
    score_dictionary,
    score_features,
)
from sae.plots import matched_latent_order, plot_best_cosine_histogram, plot_cosine_heatmap

torch.set_num_threads(1)

COSINE_KEYS = ("mmcs", "recovered_0.9", "recovered_0.99", "mcc")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def random_dirs(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return unit_rows(torch.randn(n, d, generator=g))


def orthonormal(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=g))
    return q.T.contiguous()  # n orthonormal rows (n <= d)


def noisy_copy(gt: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return gt + noise * torch.randn(gt.shape, generator=g) / math.sqrt(gt.shape[1])


# ----------------------------------------------------------------------------- cosines


def test_cosine_matrix_chunked_equals_unchunked_and_reference():
    gt, dec = random_dirs(50, 16, 0) * 3.0, random_dirs(37, 16, 1) * 0.5
    full = cosine_similarity_matrix(gt, dec)
    chunked = cosine_similarity_matrix(gt, dec, chunk_size=7)
    assert full.dtype == torch.float32 and full.shape == (50, 37)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-7)
    ref = torch.nn.functional.cosine_similarity(
        gt.double()[:, None, :], dec.double()[None, :, :], dim=-1
    )
    torch.testing.assert_close(full.double(), ref, rtol=0, atol=1e-6)


def test_zero_rows_give_zero_cosine_not_nan():
    gt = torch.eye(3)
    dec = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    cos = cosine_similarity_matrix(gt, dec)
    assert not torch.isnan(cos).any()
    assert cos[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert cos[:, 1].tolist() == [0.0, 1.0, 0.0]


def test_cosine_matrix_rejects_mismatched_width():
    with pytest.raises(ValueError, match="d="):
        cosine_similarity_matrix(torch.eye(3), torch.eye(4))


# ----------------------------------------------------------------------------- dictionary


def test_identical_dictionary_scores_one():
    gt = random_dirs(64, 32, 0)
    s = evaluate_dictionary(gt, gt.clone()).all
    for key in COSINE_KEYS:
        assert s.scalars()[key] == pytest.approx(1.0, abs=1e-6), key
    assert s.uniqueness == 1.0
    assert np.array_equal(s.feature_best_latent, np.arange(64))
    assert np.array_equal(s.feature_matched_latent, np.arange(64))
    assert np.array_equal(s.latent_best_feature, np.arange(64))
    assert s.split_features.size == 0
    # overcomplete random features overlap (some |cos| > 0.5), orthonormal ones do not
    q = orthonormal(32, 32, 0)
    assert evaluate_dictionary(q, q).all.absorbing_latents.size == 0


def test_permuted_and_rescaled_dictionary_scores_one():
    gt = random_dirs(64, 32, 0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    scale = torch.rand(64, 1, generator=torch.Generator().manual_seed(4)) * 5 + 0.1
    dec = gt[perm] * scale  # latent j is feature perm[j]
    s = evaluate_dictionary(gt, dec).all
    for key in COSINE_KEYS:
        assert s.scalars()[key] == pytest.approx(1.0, abs=1e-6), key
    inverse = torch.argsort(perm).numpy()
    assert np.array_equal(s.feature_best_latent, inverse)
    assert np.array_equal(s.feature_matched_latent, inverse)
    assert np.array_equal(s.latent_best_feature, perm.numpy())


def test_negated_dictionary_mmcs_minus_one_but_mcc_one():
    # One feature, one latent: the only cosine is -1.
    gt = random_dirs(1, 8, 0)
    s = score_dictionary(gt, -3.0 * gt)
    assert s["all/mmcs"] == pytest.approx(-1.0, abs=1e-6)
    assert s["all/recovered_0.9"] == 0.0 and s["all/recovered_0.99"] == 0.0
    assert s["all/mcc"] == pytest.approx(1.0, abs=1e-6)
    # With many features MMCS takes the best *signed* cosine over all latents, so another
    # latent at cos 0 beats the negated copy: an orthonormal basis scores exactly 0.
    q = orthonormal(32, 32, 0)
    ev = evaluate_dictionary(q, -q)
    assert ev.all.mmcs == pytest.approx(0.0, abs=1e-6)
    assert ev.all.recovered_0_9 == 0.0
    assert ev.all.mcc == pytest.approx(1.0, abs=1e-6)  # matching uses |cos|
    assert np.array_equal(ev.all.feature_matched_latent, np.arange(32))
    assert ev.all.uniqueness == 1.0  # |cos| based, as in SAELens
    assert np.allclose(ev.all.latent_best_cos, -1.0, atol=1e-6)


def test_extra_random_latents_never_lower_mmcs():
    gt = random_dirs(64, 32, 0)
    base = noisy_copy(gt, 0.5, seed=5)
    extra = torch.cat([base, random_dirs(200, 32, 6)])
    s_base = evaluate_dictionary(gt, base).all
    s_extra = evaluate_dictionary(gt, extra).all
    assert s_extra.mmcs >= s_base.mmcs
    assert np.all(s_extra.feature_best_cos >= s_base.feature_best_cos)
    assert s_extra.recovered_0_9 >= s_base.recovered_0_9
    # and a perfect dictionary with extra latents stays perfect
    assert score_dictionary(gt, torch.cat([gt, random_dirs(100, 32, 7)]))[
        "all/mmcs"
    ] == pytest.approx(1.0, abs=1e-6)


def test_random_dictionary_scores_low():
    gt, dec = random_dirs(64, 32, 0), random_dirs(64, 32, 1)
    s = score_dictionary(gt, dec)
    assert s["all/mmcs"] < 0.6
    assert s["all/recovered_0.9"] == 0.0
    assert s["all/recovered_0.99"] == 0.0
    assert s["all/mcc"] < 0.6


def test_represented_mask_differs_when_features_missing():
    gt = torch.eye(8)
    dec = torch.eye(8)[:4] * 2.0  # only features 0..3 are in the dictionary
    represented = np.array([True] * 4 + [False] * 4)
    ev = evaluate_dictionary(gt, dec, represented)
    d = ev.to_dict()
    assert d["all/mmcs"] == 0.5 and d["all/recovered_0.99"] == 0.5
    assert d["all/mcc"] == 0.5  # unmatched features count 0
    assert d["represented/mmcs"] == 1.0 and d["represented/recovered_0.9"] == 1.0
    assert d["represented/mcc"] == 1.0
    assert d["all/n_features"] == 8 and d["represented/n_features"] == 4
    assert np.array_equal(ev.represented.feature_ids, np.arange(4))
    assert np.array_equal(ev.all.feature_matched_latent[:4], np.arange(4))
    assert np.all(ev.all.feature_matched_latent[4:] == -1)
    json.dumps(d)  # flat and JSON-ready
    assert "represented/mmcs" not in score_dictionary(gt, dec)


def test_represented_subset_uses_global_indices_and_own_matching():
    gt = torch.eye(4)
    # latent 0 sits between features 0 and 1; feature 1 is not represented
    dec = unit_rows(torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    ev = evaluate_dictionary(gt, dec, torch.tensor([True, False, True, False]))
    rep = ev.represented
    assert np.array_equal(rep.feature_ids, [0, 2])
    assert np.array_equal(rep.latent_best_feature, [0, 2])
    assert np.array_equal(rep.feature_matched_latent, [0, 1])
    assert rep.mcc == pytest.approx((1 / math.sqrt(1.81) + 1.0) / 2, abs=1e-6)


def test_split_and_absorbing_flags_and_uniqueness():
    gt = torch.eye(4)
    dec = torch.stack(
        [
            torch.tensor([1.0, 0.0, 0.0, 0.0]),  # feature 0
            torch.tensor([1.0, 0.1, 0.0, 0.0]),  # feature 0 again: a split
            torch.tensor([0.0, 0.0, 1.0, 1.0]),  # features 2 and 3 at 0.707: absorbing
        ]
    )
    s = evaluate_dictionary(gt, dec, threshold=0.5).all
    assert s.split_features.tolist() == [0]
    assert s.absorbing_latents.tolist() == [2]
    assert s.latent_best_feature.tolist() == [0, 0, 2]  # ties go to the first feature
    assert s.uniqueness == pytest.approx(2 / 3)
    assert s.scalars()["n_split_features"] == 1 and s.scalars()["n_absorbing_latents"] == 1
    # a stricter threshold clears both flags
    strict = evaluate_dictionary(gt, dec, threshold=0.999).all
    assert strict.split_features.size == 0 and strict.absorbing_latents.size == 0


def test_negated_latent_is_not_a_split_copy():
    gt = torch.eye(2)
    dec = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    s = evaluate_dictionary(gt, dec).all
    assert s.latent_best_feature.tolist() == [0, 0]
    assert s.latent_best_cos.tolist() == [1.0, -1.0]
    assert s.split_features.size == 0


def test_empty_represented_mask_gives_nan_not_error():
    gt = torch.eye(3)
    d = score_dictionary(gt, gt, np.zeros(3, dtype=bool))
    assert math.isnan(d["represented/mmcs"]) and math.isnan(d["represented/mcc"])
    assert d["represented/uniqueness"] == 0.0 and d["all/mcc"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- matching


@pytest.mark.parametrize("n_latents", [300, 200, 150])
def test_sparse_topk_matching_equals_dense_hungarian(n_latents):
    gt = random_dirs(200, 64, 0)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(1))
    dec = noisy_copy(gt[perm], 0.8, seed=2)
    if n_latents > 200:
        dec = torch.cat([dec, random_dirs(n_latents - 200, 64, 3)])
    dec = dec[:n_latents]
    cos = cosine_similarity_matrix(gt, dec)
    dense = match_features(cos, method="dense")
    sparse = match_features(cos, method="sparse", top_k=8)
    assert dense.method == "dense" and sparse.method == "sparse"
    assert sparse.matched_abs_cos.sum() == pytest.approx(dense.matched_abs_cos.sum(), abs=1e-9)
    assert (sparse.feature_to_latent >= 0).sum() == min(200, n_latents)
    matched = sparse.feature_to_latent[sparse.feature_to_latent >= 0]
    assert np.unique(matched).size == matched.size  # one-to-one
    # through score_features the MCC agrees too
    mcc_dense = score_features(cos, matching="dense").mcc
    mcc_sparse = score_features(cos, matching="sparse").mcc
    assert mcc_sparse == pytest.approx(mcc_dense, abs=1e-9)


def test_sparse_matching_is_lower_bound_on_random_dictionary():
    cos = cosine_similarity_matrix(random_dirs(100, 16, 0), random_dirs(100, 16, 1))
    dense = match_features(cos, method="dense").matched_abs_cos.sum()
    sparse = match_features(cos, method="sparse", top_k=3).matched_abs_cos.sum()
    assert sparse <= dense + 1e-9
    assert sparse > 0.8 * dense


def test_auto_matching_switches_to_sparse_above_limit(monkeypatch):
    gt = random_dirs(20, 8, 0)
    cos = cosine_similarity_matrix(gt, gt)
    assert match_features(cos).method == "dense"
    monkeypatch.setattr(metrics, "DENSE_MATCHING_LIMIT", 100)
    m = match_features(cos)
    assert m.method == "sparse"
    assert np.array_equal(m.feature_to_latent, np.arange(20))


def test_greedy_fallback_is_one_to_one():
    vals = np.array([[0.9, 0.8], [0.95, 0.1]])
    idx = np.array([[0, 1], [0, 1]])
    assert metrics._greedy(vals, idx).tolist() == [1, 0]


# ----------------------------------------------------------------------------- streaming


def test_explained_variance_exact_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 5, generator=g) + 3.0
    perfect = ReconstructionStats()
    mean = ReconstructionStats()
    codes = torch.ones(5, 3)
    for batch in (x[:5], x[5:]):
        perfect.update(batch, batch, codes)
        mean.update(batch, x.mean(dim=0).expand_as(batch), codes)
    p, m = perfect.compute(), mean.compute()
    assert p["explained_variance"] == 1.0 and p["mse"] == 0.0 and p["shrinkage"] == 1.0
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-12)
    var = x.double().var(dim=0, unbiased=False).sum().item()
    assert m["mse"] == pytest.approx(var / 5, rel=1e-12)
    # SAELens's shrinkage: the mean of the per-sample ratio ||x_hat|| / ||x|| (not a ratio of
    # means: here that would be ||E x|| / E||x||, a different number).
    per_sample = x.mean(dim=0).norm().item() / x.norm(dim=1)
    assert m["shrinkage"] == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert m["shrinkage"] != pytest.approx(
        x.mean(dim=0).norm().item() / x.norm(dim=1).mean().item(), rel=1e-4
    )
    assert p["n_samples"] == 10


def test_l0_and_dead_latents_on_hand_built_codes():
    codes = torch.tensor(
        [
            [1.0, 0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, -1.0, 3.0, 0.0],  # negative values do not fire
            [1.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    x = torch.randn(4, 3)
    stats = ReconstructionStats()
    stats.update(x[:1], x[:1], codes[:1])
    stats.update(x[1:], x[1:], codes[1:])
    out = stats.compute()
    assert out["sae_l0"] == 1.25
    assert out["dead_latents"] == 2 and out["dead_fraction"] == 0.4
    assert stats.arrays()["latent_firing_rate"].tolist() == [0.5, 0.25, 0.0, 0.5, 0.0]
    assert "true_l0" not in out and "classification/precision" not in out


def test_precision_recall_f1_on_hand_built_codes():
    true = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    codes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    x = torch.randn(4, 3)
    stats = ReconstructionStats(latent_to_feature=[0, 1, 1], represented=[False, True])
    for rows in (slice(0, 3), slice(3, 4)):
        stats.update(x[rows], x[rows], codes[rows], true[rows])
    out, arr = stats.compute(), stats.arrays()
    # latent 0 vs f0: TP 1, FP 1, FN 1; latent 1 vs f1: perfect; latent 2 vs f1: TP 1, FN 1
    assert arr["precision"].tolist() == [0.5, 1.0, 1.0]
    assert arr["recall"].tolist() == [0.5, 1.0, 0.5]
    assert arr["f1_score"] == pytest.approx([0.5, 1.0, 2 / 3])
    assert arr["feature_firing_rate"].tolist() == [0.5, 0.5]
    assert out["classification/precision"] == pytest.approx(2.5 / 3)
    assert out["classification/recall"] == pytest.approx(2 / 3)
    assert out["classification/f1_score"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert out["classification/accuracy"] == pytest.approx((0.5 + 1.0 + 0.75) / 3)
    assert out["represented/classification/precision"] == 1.0
    assert out["represented/classification/recall"] == 0.75
    assert out["represented/classification/f1_score"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["true_l0"] == 1.0
    json.dumps(out)


def test_dead_latent_has_zero_precision_and_recall():
    stats = ReconstructionStats(latent_to_feature=[0])
    stats.update(torch.ones(2, 1), torch.ones(2, 1), torch.zeros(2, 1), torch.ones(2, 1))
    out = stats.compute()
    assert out["classification/precision"] == 0.0 and out["classification/recall"] == 0.0
    assert out["classification/f1_score"] == 0.0 and out["dead_latents"] == 1


def test_reconstruction_stats_rejects_inconsistent_input():
    stats = ReconstructionStats()
    with pytest.raises(ValueError, match="before any update"):
        stats.compute()
    stats.update(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 5))
    with pytest.raises(ValueError, match="every batch"):
        stats.update(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="expected x"):
        stats.update(torch.ones(2, 3), torch.ones(2, 2), torch.ones(2, 4))
    bad = ReconstructionStats(latent_to_feature=[0, 5])
    with pytest.raises(ValueError, match="refers past"):
        bad.update(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 2), torch.ones(2, 5))


def test_dictionary_assignment_feeds_reconstruction_stats():
    gt = torch.eye(4)
    dec = gt[[2, 0, 3, 1]]
    ev = evaluate_dictionary(gt, dec)
    true = (torch.rand(64, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    codes = true[:, ev.all.latent_best_feature]  # each latent fires exactly with its feature
    stats = ReconstructionStats(ev.all.latent_best_feature)
    stats.update(true @ gt, codes @ dec, codes, true)
    out = stats.compute()
    assert out["explained_variance"] == pytest.approx(1.0)
    assert out["classification/precision"] == 1.0 and out["classification/recall"] == 1.0


# ----------------------------------------------------------------------------- plots


def test_matched_latent_order():
    assert matched_latent_order(np.array([2, -1, 0]), 4).tolist() == [2, 0, 1, 3]


def test_plots_write_png(tmp_path):
    gt = random_dirs(12, 8, 0)
    dec = torch.cat([gt[torch.randperm(12)], random_dirs(4, 8, 1)])
    s = evaluate_dictionary(gt, dec)
    heat = plot_cosine_heatmap(
        s.cos.numpy(), s.all.feature_matched_latent, tmp_path / "a" / "heat.png", title="t"
    )
    hist = plot_best_cosine_histogram(s.all.feature_best_cos, tmp_path / "hist.png")
    for path in (heat, hist):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_shrinkage_is_the_mean_of_per_sample_norm_ratios_as_in_saelens():
    """SAELens 6.x ``ShrinkageCalculator``: mean over samples with ||x|| > 1e-6 of
    ||x_hat|| / ||x|| (its value on these rows is 1.25, checked with sae-lens 6.54)."""
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    x_hat = torch.tensor([[0.0, 2.5], [1.0, 1.0], [2.0, 0.0]])  # ratios 0.5, skipped, 2.0
    stats = ReconstructionStats()
    stats.update(x[:2], x_hat[:2], torch.ones(2, 4))
    stats.update(x[2:], x_hat[2:], torch.ones(1, 4))
    assert stats.compute()["shrinkage"] == pytest.approx(1.25, rel=1e-12)
    empty = ReconstructionStats()
    empty.update(torch.zeros(2, 2), torch.ones(2, 2), torch.ones(2, 4))
    assert math.isnan(empty.compute()["shrinkage"])
