"""Score a learned SAE dictionary against known ground-truth feature directions.

Conventions: ``ground_truth`` is ``[n_features, d]`` and the SAE decoder ``W_dec`` is
``[n_latents, d]``; both hold directions as rows. Cosines are taken between unit-normalised
rows (a zero row has cosine 0 with everything) and accumulated in float64.

Names follow ``sae_lens.synthetic`` where a metric is shared: ``mcc``, ``uniqueness``,
``sae_l0``, ``true_l0``, ``dead_latents``, ``shrinkage``, ``explained_variance`` and
``classification/{precision,recall,f1_score,accuracy}``. ``mmcs`` and ``recovered_<tau>``
have no SAELens counterpart.

Two entry points:

- :func:`evaluate_dictionary` / :func:`score_dictionary`: decoder-only scores, over all
  features and over the features the toy model represents.
- :class:`ReconstructionStats`: streaming reconstruction / sparsity / detection statistics
  over held-out batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

MatchingMethod = Literal["auto", "dense", "sparse"]

#: Above this many (feature, latent) pairs the dense Hungarian algorithm is too slow.
DENSE_MATCHING_LIMIT = 4096 * 4096
RECOVERY_THRESHOLDS = (0.9, 0.99)

ArrayLike = Tensor | np.ndarray | Sequence


# ----------------------------------------------------------------------------- cosines


def _check_2d(name: str, t: Tensor) -> None:
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, d], got shape {tuple(t.shape)}")


def _unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit norm in float64; zero rows stay zero (never NaN)."""
    x = x.detach().to(torch.float64)
    norms = x.norm(dim=1, keepdim=True)
    return x / torch.where(norms > 0, norms, torch.ones_like(norms))


def cosine_similarity_matrix(
    ground_truth: Tensor, decoder: Tensor, chunk_size: int = 4096
) -> Tensor:
    """Cosine of every feature with every latent: float32 ``[n_features, n_latents]``.

    Built ``chunk_size`` features at a time so that only one float64 chunk exists beside
    the float32 result (16k x 16k fits in ~1 GiB + one chunk). Lives on ``decoder``'s device.
    """
    _check_2d("ground_truth", ground_truth)
    _check_2d("decoder", decoder)
    if ground_truth.shape[1] != decoder.shape[1]:
        raise ValueError(
            f"ground_truth has d={ground_truth.shape[1]} but decoder has d={decoder.shape[1]}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = decoder.device
    dec = _unit_rows(decoder)
    out = torch.empty(ground_truth.shape[0], decoder.shape[0], dtype=torch.float32, device=device)
    for start in range(0, ground_truth.shape[0], chunk_size):
        gt = _unit_rows(ground_truth[start : start + chunk_size].to(device))
        out[start : start + chunk_size] = gt @ dec.T
    return out


def _row_blocks(cos: Tensor, ids: Tensor, chunk_size: int) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(offset, cos[ids[offset:offset+chunk]])`` so subsets never copy the whole matrix."""
    for start in range(0, ids.numel(), chunk_size):
        yield start, cos.index_select(0, ids[start : start + chunk_size])


def _feature_ids(cos: Tensor, feature_ids: ArrayLike | None) -> Tensor:
    if feature_ids is None:
        return torch.arange(cos.shape[0], device=cos.device)
    return torch.as_tensor(np.asarray(feature_ids), dtype=torch.long, device=cos.device)


# ----------------------------------------------------------------------------- matching


class Matching(NamedTuple):
    """One-to-one feature -> latent matching on ``|cos|``."""

    feature_to_latent: np.ndarray  # [n_scored] latent index, -1 when unmatched
    matched_abs_cos: np.ndarray  # [n_scored] float64 |cos| of the pair, 0 when unmatched
    method: str  # "dense", "sparse" or "greedy" (fallback)


def _match_dense(cos: Tensor, ids: Tensor) -> Matching:
    n = ids.numel()
    abs_cos = cos.index_select(0, ids).abs().to(torch.float64).cpu().numpy()
    rows, cols = linear_sum_assignment(abs_cos, maximize=True)
    f2l = np.full(n, -1, dtype=np.int64)
    f2l[rows] = cols
    matched = np.zeros(n, dtype=np.float64)
    matched[rows] = abs_cos[rows, cols]
    return Matching(f2l, matched, "dense")


def _topk_edges(cos: Tensor, ids: Tensor, k: int, chunk_size: int) -> tuple[np.ndarray, ...]:
    vals, idx = [], []
    for _, block in _row_blocks(cos, ids, chunk_size):
        v, i = block.abs().topk(k, dim=1)
        vals.append(v.to(torch.float64).cpu().numpy())
        idx.append(i.cpu().numpy())
    return np.concatenate(vals), np.concatenate(idx)


def _greedy(vals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Take edges by decreasing ``|cos|`` while both ends are free."""
    f2l = np.full(vals.shape[0], -1, dtype=np.int64)
    used: set[int] = set()
    order = np.argsort(-vals, axis=None, kind="stable")
    for row, col in zip(*np.unravel_index(order, vals.shape)):
        latent = int(idx[row, col])
        if f2l[row] < 0 and latent not in used:
            f2l[row] = latent
            used.add(latent)
    return f2l


def _match_sparse_topk(cos: Tensor, ids: Tensor, top_k: int, chunk_size: int) -> Matching:
    """Optimal matching restricted to each feature's ``top_k`` latents by ``|cos|``.

    Every feature also gets a private dummy latent of weight 0 so that a full matching
    always exists; a feature matched to its dummy counts as unmatched. Weights are shifted
    by +1 because sparse graphs treat zeros as missing edges; every feature is matched
    exactly once, so the shift does not change the optimum.
    """
    from scipy.sparse import csr_matrix

    n, n_latents = ids.numel(), cos.shape[1]
    k = min(top_k, n_latents)
    vals, idx = _topk_edges(cos, ids, k, chunk_size)
    data = np.concatenate([vals + 1.0, np.ones((n, 1))], axis=1).ravel()
    cols = np.concatenate([idx, n_latents + np.arange(n)[:, None]], axis=1).ravel()
    graph = csr_matrix((data, cols, np.arange(0, n * (k + 1) + 1, k + 1)), shape=(n, n_latents + n))
    try:
        from scipy.sparse.csgraph import min_weight_full_bipartite_matching

        rows, matched_cols = min_weight_full_bipartite_matching(graph, maximize=True)
        f2l = np.full(n, -1, dtype=np.int64)
        f2l[rows] = matched_cols
        f2l[f2l >= n_latents] = -1
        method = "sparse"
    except (ImportError, ValueError):
        # Old scipy or a solver failure: a greedy matching is still one-to-one.
        f2l = _greedy(vals, idx)
        method = "greedy"
    # Read matched values off the kept edges (the matching only uses kept edges).
    hit = idx == f2l[:, None]
    matched = np.where(hit.any(axis=1), (vals * hit).sum(axis=1), 0.0)
    return Matching(f2l, matched, method)


def match_features(
    cos: Tensor,
    feature_ids: ArrayLike | None = None,
    *,
    method: MatchingMethod = "auto",
    top_k: int = 8,
    chunk_size: int = 4096,
) -> Matching:
    """Maximum-weight one-to-one matching of features (rows of ``cos``) to latents on ``|cos|``.

    ``method="dense"`` runs scipy's exact ``linear_sum_assignment`` on the full matrix.
    ``method="sparse"`` keeps each feature's ``top_k`` latents and runs
    ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``; it is exact whenever the
    optimal matching only uses those edges (true for any dictionary that recovers features
    well) and otherwise a close lower bound. ``"auto"`` picks dense up to
    ``DENSE_MATCHING_LIMIT`` pairs (4096 x 4096), sparse above.
    ``feature_ids`` restricts the rows; results are aligned with it.
    """
    ids = _feature_ids(cos, feature_ids)
    n, n_latents = ids.numel(), cos.shape[1]
    if n == 0 or n_latents == 0:
        return Matching(np.full(n, -1, dtype=np.int64), np.zeros(n), "none")
    if method == "auto":
        method = "dense" if n * n_latents <= DENSE_MATCHING_LIMIT else "sparse"
    if method == "dense":
        return _match_dense(cos, ids)
    if method == "sparse":
        return _match_sparse_topk(cos, ids, top_k, chunk_size)
    raise ValueError(f"unknown matching method {method!r}")


# ----------------------------------------------------------------------------- dictionary


class DictionaryScores(NamedTuple):
    """Decoder-only scores over one set of ground-truth features (all, or the represented).

    Per-feature arrays are aligned with ``feature_ids`` (global feature indices); latent
    and feature indices stored in arrays are always global.
    """

    mmcs: float  # mean over features of the best *signed* cosine with any latent
    recovered_0_9: float  # fraction of features whose best signed cosine > 0.9
    recovered_0_99: float  # ... > 0.99
    mcc: float  # mean matched |cos| over features (one-to-one; unmatched count 0)
    uniqueness: float  # distinct best features among latents / n_latents (SAELens)
    threshold: float  # cosine threshold used by the split / absorption flags
    feature_ids: np.ndarray  # [n] global indices of the scored features
    feature_best_latent: np.ndarray  # [n] argmax_l cos(f, l) (signed), -1 if no latents
    feature_best_cos: np.ndarray  # [n] that cosine
    matching: Matching  # feature -> latent (aligned with feature_ids)
    latent_best_feature: np.ndarray  # [n_latents] argmax_f |cos| over scored features
    latent_best_cos: np.ndarray  # [n_latents] signed cosine with that feature
    split_features: np.ndarray  # feature ids that are the best match (cos > thr) of 2+ latents
    absorbing_latents: np.ndarray  # latent ids with cos > thr to 2+ scored features

    @property
    def feature_matched_latent(self) -> np.ndarray:
        return self.matching.feature_to_latent

    def scalars(self) -> dict[str, float]:
        """Flat JSON-ready summary."""
        return {
            "mmcs": self.mmcs,
            "recovered_0.9": self.recovered_0_9,
            "recovered_0.99": self.recovered_0_99,
            "mcc": self.mcc,
            "uniqueness": self.uniqueness,
            "n_features": int(self.feature_ids.size),
            "n_latents": int(self.latent_best_feature.size),
            "n_split_features": int(self.split_features.size),
            "n_absorbing_latents": int(self.absorbing_latents.size),
        }


def _mean(x: np.ndarray) -> float:
    return float(x.mean(dtype=np.float64)) if x.size else float("nan")


def score_features(
    cos: Tensor,
    feature_ids: ArrayLike | None = None,
    *,
    threshold: float = 0.5,
    matching: MatchingMethod = "auto",
    top_k: int = 8,
    chunk_size: int = 4096,
) -> DictionaryScores:
    """All decoder-only scores from a cosine matrix, over the features in ``feature_ids``.

    - ``mmcs``/``recovered_*`` use the best *signed* cosine over all latents: extra latents
      can only raise them, and a latent along ``-f`` counts -1 for ``f`` (the whole score
      is -1 for a negated dictionary only if no other latent has a higher cosine with
      ``f``; for a negated orthonormal basis it is 0).
    - ``mcc`` matches on ``|cos|`` (SAELens ``mean_correlation_coefficient``) but averages
      over the scored features, so unmatched ones (n_latents < n_features) count 0; SAELens
      averages over the ``min(n_features, n_latents)`` matched pairs instead.
    - ``uniqueness`` is SAELens ``feature_uniqueness``: each latent's best feature by
      ``|cos|`` among the scored ones, distinct count / n_latents (0 if either is empty).
    - ``split_features``: features that are the best match, with signed cos > ``threshold``,
      of 2+ latents. ``absorbing_latents``: latents with signed cos > ``threshold`` to 2+
      scored features. Signed, because a latent along ``-f`` does not detect ``f``.
    """
    ids = _feature_ids(cos, feature_ids)
    n, n_latents, device = ids.numel(), cos.shape[1], cos.device

    feat_best_cos = torch.zeros(n, dtype=torch.float64, device=device)
    feat_best_lat = torch.full((n,), -1, dtype=torch.long, device=device)
    lat_abs = torch.full((n_latents,), -1.0, dtype=cos.dtype, device=device)
    lat_arg = torch.full((n_latents,), -1, dtype=torch.long, device=device)  # local index
    lat_cos = torch.zeros(n_latents, dtype=cos.dtype, device=device)
    lat_n_above = torch.zeros(n_latents, dtype=torch.long, device=device)
    if n_latents > 0:
        for start, block in _row_blocks(cos, ids, chunk_size):
            v, i = block.max(dim=1)
            feat_best_cos[start : start + v.numel()] = v.to(torch.float64)
            feat_best_lat[start : start + v.numel()] = i
            # Running argmax of |cos| over features, per latent; strict > keeps the first.
            bmax, barg = block.abs().max(dim=0)
            better = bmax > lat_abs
            lat_abs = torch.where(better, bmax, lat_abs)
            lat_arg = torch.where(better, barg + start, lat_arg)
            lat_cos = torch.where(better, block.gather(0, barg[None]).squeeze(0), lat_cos)
            lat_n_above += (block > threshold).sum(dim=0)

    ids_np = ids.cpu().numpy()
    best_cos_np = feat_best_cos.cpu().numpy()
    lat_arg_np = lat_arg.cpu().numpy()
    lat_cos_np = lat_cos.to(torch.float64).cpu().numpy()
    has_best = lat_arg_np >= 0
    lat_best_feature = np.where(has_best, ids_np[np.maximum(lat_arg_np, 0)] if n else -1, -1)

    strong = has_best & (lat_cos_np > threshold)
    split_local = np.flatnonzero(np.bincount(lat_arg_np[strong], minlength=n) >= 2)
    uniqueness = float(np.unique(lat_arg_np[has_best]).size / n_latents) if n and n_latents else 0.0

    m = match_features(cos, ids, method=matching, top_k=top_k, chunk_size=chunk_size)
    return DictionaryScores(
        mmcs=_mean(best_cos_np),
        recovered_0_9=_mean(best_cos_np > RECOVERY_THRESHOLDS[0]),
        recovered_0_99=_mean(best_cos_np > RECOVERY_THRESHOLDS[1]),
        mcc=float(m.matched_abs_cos.sum() / n) if n else float("nan"),
        uniqueness=uniqueness,
        threshold=float(threshold),
        feature_ids=ids_np,
        feature_best_latent=feat_best_lat.cpu().numpy(),
        feature_best_cos=best_cos_np,
        matching=m,
        latent_best_feature=lat_best_feature.astype(np.int64),
        latent_best_cos=lat_cos_np,
        split_features=ids_np[split_local],
        absorbing_latents=np.flatnonzero(lat_n_above.cpu().numpy() >= 2),
    )


class DictionaryEvaluation(NamedTuple):
    """Scores over all features and, when a mask was given, over the represented ones."""

    cos: Tensor  # float32 [n_features, n_latents]
    all: DictionaryScores
    represented: DictionaryScores | None

    def to_dict(self) -> dict[str, float]:
        """Flat ``{"all/mmcs": ..., "represented/mmcs": ...}`` (no ``represented/`` keys
        when no mask was given)."""
        out = {f"all/{k}": v for k, v in self.all.scalars().items()}
        if self.represented is not None:
            out.update({f"represented/{k}": v for k, v in self.represented.scalars().items()})
        return out


def _as_mask(represented: ArrayLike, n_features: int) -> np.ndarray:
    if isinstance(represented, Tensor):
        represented = represented.detach().cpu().numpy()
    mask = np.asarray(represented)
    if mask.shape != (n_features,):
        raise ValueError(f"represented must have shape ({n_features},), got {mask.shape}")
    return mask.astype(bool)


def evaluate_dictionary(
    ground_truth: Tensor,
    decoder: Tensor,
    represented: ArrayLike | None = None,
    *,
    threshold: float = 0.5,
    matching: MatchingMethod = "auto",
    top_k: int = 8,
    chunk_size: int = 4096,
) -> DictionaryEvaluation:
    """Score ``decoder`` [n_latents, d] against ``ground_truth`` [n_features, d].

    ``represented`` (bool [n_features]) adds a second set of scores restricted to those
    features; the matching is re-solved on that subset so that unrepresented features
    cannot take latents away. See :func:`score_features` for the definitions.
    """
    cos = cosine_similarity_matrix(ground_truth, decoder, chunk_size=chunk_size)
    kw = dict(threshold=threshold, matching=matching, top_k=top_k, chunk_size=chunk_size)
    scores_all = score_features(cos, None, **kw)
    scores_rep = None
    if represented is not None:
        ids = np.flatnonzero(_as_mask(represented, ground_truth.shape[0]))
        scores_rep = score_features(cos, ids, **kw)
    return DictionaryEvaluation(cos, scores_all, scores_rep)


def score_dictionary(
    ground_truth: Tensor,
    decoder: Tensor,
    represented: ArrayLike | None = None,
    **kwargs,
) -> dict[str, float]:
    """Flat JSON-ready scores; ``evaluate_dictionary(...)`` for the per-feature arrays."""
    return evaluate_dictionary(ground_truth, decoder, represented, **kwargs).to_dict()


# ----------------------------------------------------------------------------- streaming


class ReconstructionStats:
    """Streaming reconstruction, sparsity and detection statistics over held-out batches.

    ``latent_to_feature`` ([n_latents] feature index, -1 for none; typically
    ``DictionaryScores.latent_best_feature``) enables per-latent precision / recall / F1 of
    "latent > 0" as a detector of "true code of its feature > 0" (SAELens
    ``ClassificationMetricsCalculator``; undefined ratios count 0). ``represented``
    ([n_features] bool) adds those means over latents assigned to represented features.

    All sums stay on the batches' device in float64 / int64; ``update`` never syncs with
    the host. Definitions (``n`` samples):

    - ``explained_variance = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2)``
    - ``mse`` = mean squared error per element
    - ``sae_l0`` = mean number of latents > 0 per sample; ``true_l0`` likewise for true codes
    - ``dead_latents`` = latents never > 0 on the eval set (also ``dead_fraction``)
    - ``shrinkage = E||x_hat|| / E||x||``: a ratio of means, which needs no cutoff for
      near-zero inputs (SAELens averages the per-sample ratio over inputs with norm > 1e-6)
    """

    def __init__(
        self,
        latent_to_feature: ArrayLike | None = None,
        represented: ArrayLike | None = None,
    ) -> None:
        self._l2f = (
            None
            if latent_to_feature is None
            else torch.as_tensor(np.asarray(latent_to_feature), dtype=torch.long)
        )
        self._represented = (
            None
            if represented is None
            else torch.as_tensor(_as_mask(represented, len(represented)))
        )
        self.n_samples = 0
        self._with_true: bool | None = None

    def _init(self, x: Tensor, codes: Tensor, true_codes: Tensor | None) -> None:
        dev, f64 = x.device, torch.float64
        self._sum_sq_err = torch.zeros((), dtype=f64, device=dev)
        self._sum_sq_x = torch.zeros((), dtype=f64, device=dev)
        self._sum_x = torch.zeros(x.shape[1], dtype=f64, device=dev)
        self._sum_norm_x = torch.zeros((), dtype=f64, device=dev)
        self._sum_norm_xhat = torch.zeros((), dtype=f64, device=dev)
        self._fires = torch.zeros(codes.shape[1], dtype=torch.long, device=dev)
        self._with_true = true_codes is not None
        if true_codes is not None:
            self._true_fires = torch.zeros(true_codes.shape[1], dtype=torch.long, device=dev)
            if self._l2f is not None:
                if self._l2f.shape != (codes.shape[1],):
                    raise ValueError(
                        f"latent_to_feature has shape {tuple(self._l2f.shape)}, "
                        f"codes have {codes.shape[1]} latents"
                    )
                n_features = true_codes.shape[1]
                # Checked while still on the host (constructor input), so no device sync.
                if self._l2f.numel() and int(self._l2f.max()) >= n_features:
                    raise ValueError(f"latent_to_feature refers past {n_features} features")
                if self._represented is not None and self._represented.numel() != n_features:
                    raise ValueError(
                        f"represented has {self._represented.numel()} entries, "
                        f"true_codes have {n_features} features"
                    )
                self._l2f = self._l2f.to(dev)
                self._tp = torch.zeros(codes.shape[1], dtype=torch.long, device=dev)

    @torch.no_grad()
    def update(
        self, x: Tensor, x_hat: Tensor, codes: Tensor, true_codes: Tensor | None = None
    ) -> None:
        """Add a batch: ``x``/``x_hat`` [B, d], ``codes`` [B, n_latents],
        ``true_codes`` [B, n_features] or None (same choice for every batch)."""
        if x.ndim != 2 or x_hat.shape != x.shape or codes.ndim != 2 or codes.shape[0] != x.shape[0]:
            raise ValueError(
                f"expected x, x_hat [B, d] and codes [B, n_latents], got {tuple(x.shape)}, "
                f"{tuple(x_hat.shape)}, {tuple(codes.shape)}"
            )
        if true_codes is not None and (true_codes.ndim != 2 or true_codes.shape[0] != x.shape[0]):
            raise ValueError(f"true_codes must be [B, n_features], got {tuple(true_codes.shape)}")
        if self._with_true is None:
            self._init(x, codes, true_codes)
        elif self._with_true != (true_codes is not None):
            raise ValueError("pass true_codes for every batch or for none")

        x64, xh64 = x.detach().to(torch.float64), x_hat.detach().to(torch.float64)
        self._sum_sq_err += (x64 - xh64).square().sum()
        self._sum_sq_x += x64.square().sum()
        self._sum_x += x64.sum(dim=0)
        self._sum_norm_x += x64.norm(dim=1).sum()
        self._sum_norm_xhat += xh64.norm(dim=1).sum()
        fires = codes.detach() > 0
        self._fires += fires.sum(dim=0)
        if true_codes is not None:
            true_fires = true_codes.detach() > 0
            self._true_fires += true_fires.sum(dim=0)
            if self._l2f is not None:
                own = true_fires[:, self._l2f.clamp(min=0)]
                self._tp += (fires & own).sum(dim=0)
        self.n_samples += x.shape[0]

    def _classification(self) -> dict[str, Tensor]:
        n = self.n_samples
        tp, fires = self._tp.double(), self._fires.double()
        own = self._true_fires[self._l2f.clamp(min=0)].double()
        fp, fn = fires - tp, own - tp
        tn = n - tp - fp - fn

        def ratio(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(b > 0, a / b.clamp(min=1e-300), torch.zeros_like(a))

        precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
        return {
            "precision": precision,
            "recall": recall,
            "f1_score": ratio(2 * precision * recall, precision + recall),
            "accuracy": (tp + tn) / n,
        }

    def compute(self) -> dict[str, float]:
        """Flat JSON-ready scalars (see the class docstring for definitions)."""
        if self.n_samples == 0:
            raise ValueError("ReconstructionStats.compute() called before any update()")
        n = self.n_samples
        mean_x = self._sum_x / n
        variance = self._sum_sq_x / n - mean_x.square().sum()
        err = self._sum_sq_err / n
        ev = 1.0 - err / variance if variance > 0 else torch.tensor(float("nan"))
        out: dict[str, float] = {
            "n_samples": n,
            "explained_variance": float(ev),
            "mse": float(err / self._sum_x.numel()),
            "sae_l0": float(self._fires.sum().double() / n),
            "dead_latents": int((self._fires == 0).sum()),
            "dead_fraction": float((self._fires == 0).double().mean()),
            "shrinkage": float(self._sum_norm_xhat / self._sum_norm_x)
            if self._sum_norm_x > 0
            else float("nan"),
        }
        if self._with_true:
            out["true_l0"] = float(self._true_fires.sum().double() / n)
            if self._l2f is not None:
                assigned = self._l2f >= 0
                groups = {"classification": assigned}
                if self._represented is not None:
                    rep = self._represented.to(assigned.device)
                    groups["represented/classification"] = assigned & rep[self._l2f.clamp(min=0)]
                per_latent_metrics = self._classification()
                for prefix, sel in groups.items():
                    for name, per_latent in per_latent_metrics.items():
                        vals = per_latent[sel]
                        out[f"{prefix}/{name}"] = (
                            float(vals.mean()) if vals.numel() else float("nan")
                        )
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-latent (``latent_firing_rate``, ``precision``, ``recall``, ``f1_score``) and
        per-feature (``feature_firing_rate``) arrays, as float64 numpy."""
        if self.n_samples == 0:
            raise ValueError("ReconstructionStats.arrays() called before any update()")
        n = self.n_samples
        out = {"latent_firing_rate": (self._fires.double() / n).cpu().numpy()}
        if self._with_true:
            out["feature_firing_rate"] = (self._true_fires.double() / n).cpu().numpy()
            if self._l2f is not None:
                for name, per_latent in self._classification().items():
                    if name != "accuracy":
                        out[name] = per_latent.cpu().numpy()
        return out
