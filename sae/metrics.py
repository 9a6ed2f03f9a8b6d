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

Both run on whichever device their inputs are given (``evaluate_dictionary(device=...)``, the
batches' device for the statistics). The cosine matrix is never built whole for scoring: one
pass over blocks of at most ``chunk_size`` features (and at most ``CHUNK_ELEMENTS`` cosines)
keeps only per-feature and per-latent reductions, the ``top_k`` edges of the sparse matching,
and only where the dense Hungarian matching is used (at most ``DENSE_MATCHING_LIMIT`` pairs),
the ``|cos|`` rows it needs. Results reach the host in one copy at the end; scipy's matchings
then run on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

MatchingMethod = Literal["auto", "dense", "sparse"]

#: Above this many (feature, latent) pairs the dense Hungarian algorithm is too slow.
DENSE_MATCHING_LIMIT = 4096 * 4096
RECOVERY_THRESHOLDS = (0.9, 0.99)
#: Most cosines (features x latents) or activations (rows x width) in one block: bounds the
#: working memory of every pass (a float64 block of this size is 128 MiB).
CHUNK_ELEMENTS = 2**24
#: Most elements kept for the cosine heatmap (a float32 summary of this size is 128 MiB).
HEATMAP_ELEMENTS = 2**25

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


def block_rows(n_cols: int, chunk_size: int, budget: int | None = None) -> int:
    """Rows per block: at most ``chunk_size``, and at most ``budget`` (default
    ``CHUNK_ELEMENTS``) elements of ``n_cols``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    budget = CHUNK_ELEMENTS if budget is None else budget
    return max(1, min(chunk_size, budget // max(n_cols, 1)))


class CosineBlocks:
    """Row blocks of the float32 cosine matrix of ``ground_truth`` x ``decoder``, computed on
    ``device`` (default: ``decoder``'s) from float64 unit rows, without the whole matrix."""

    def __init__(
        self, ground_truth: Tensor, decoder: Tensor, device: torch.device | str | None = None
    ) -> None:
        _check_2d("ground_truth", ground_truth)
        _check_2d("decoder", decoder)
        if ground_truth.shape[1] != decoder.shape[1]:
            raise ValueError(
                f"ground_truth has d={ground_truth.shape[1]} but decoder has d={decoder.shape[1]}"
            )
        self.device = torch.device(device) if device is not None else decoder.device
        self.gt = _unit_rows(ground_truth.detach().to(self.device))
        self.dec_t = _unit_rows(decoder.detach().to(self.device)).T
        self.shape = (ground_truth.shape[0], decoder.shape[0])

    def __call__(self, rows: Tensor | slice) -> Tensor:
        gt = self.gt[rows] if isinstance(rows, slice) else self.gt.index_select(0, rows)
        return (gt @ self.dec_t).to(torch.float32)


def cosine_similarity_matrix(
    ground_truth: Tensor,
    decoder: Tensor,
    chunk_size: int = 4096,
    device: torch.device | str | None = None,
) -> Tensor:
    """Cosine of every feature with every latent: float32 ``[n_features, n_latents]``.

    The whole matrix (1 GiB at 16k x 16k), built ``chunk_size`` features at a time on
    ``device`` (default: ``decoder``'s). Scoring never needs it whole; plots and tests do.
    """
    blocks = CosineBlocks(ground_truth, decoder, device)
    n, m = blocks.shape
    out = torch.empty(n, m, dtype=torch.float32, device=blocks.device)
    step = block_rows(m, chunk_size)
    for start in range(0, n, step):
        out[start : start + step] = blocks(slice(start, start + step))
    return out


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


def _resolve_method(method: str, n: int, n_latents: int) -> str:
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"unknown matching method {method!r}")
    if n == 0 or n_latents == 0:
        return "none"
    if method == "auto":
        return "dense" if n * n_latents <= DENSE_MATCHING_LIMIT else "sparse"
    return method


def _match_dense(abs_cos: np.ndarray) -> Matching:
    """scipy's exact Hungarian matching on a float64 ``|cos|`` matrix."""
    n = abs_cos.shape[0]
    rows, cols = linear_sum_assignment(abs_cos, maximize=True)
    f2l = np.full(n, -1, dtype=np.int64)
    f2l[rows] = cols
    matched = np.zeros(n, dtype=np.float64)
    matched[rows] = abs_cos[rows, cols]
    return Matching(f2l, matched, "dense")


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


def _match_sparse(vals: np.ndarray, idx: np.ndarray, n_latents: int) -> Matching:
    """Optimal matching restricted to each feature's top-k latents by ``|cos|`` (the edges
    ``vals`` float64 / ``idx`` [n, k]).

    Every feature also gets a private dummy latent of weight 0 so that a full matching
    always exists; a feature matched to its dummy counts as unmatched. Weights are shifted
    by +1 because sparse graphs treat zeros as missing edges; every feature is matched
    exactly once, so the shift does not change the optimum.
    """
    from scipy.sparse import csr_matrix

    n, k = vals.shape
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
    return score_features(
        cos, feature_ids, matching=method, top_k=top_k, chunk_size=chunk_size
    ).matching


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


class _Subset:
    """Per-latent running reductions over one set of scanned rows (its ``positions``)."""

    def __init__(
        self, positions: np.ndarray | None, n_latents: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.positions = positions  # sorted positions into the scan order; None = all
        self.pos_t = None if positions is None else torch.as_tensor(positions, device=device)
        self.lat_abs = torch.full((n_latents,), -1.0, dtype=dtype, device=device)
        self.lat_arg = torch.full((n_latents,), -1, dtype=torch.long, device=device)  # local
        self.lat_cos = torch.zeros(n_latents, dtype=dtype, device=device)
        self.lat_n_above = torch.zeros(n_latents, dtype=torch.long, device=device)

    def update(self, block: Tensor, abs_block: Tensor, offset: int, threshold: float) -> None:
        """Fold in a block of the subset's rows whose first row has local index ``offset``."""
        # Running argmax of |cos| over features, per latent; strict > keeps the first.
        bmax, barg = abs_block.max(dim=0)
        better = bmax > self.lat_abs
        self.lat_abs = torch.where(better, bmax, self.lat_abs)
        self.lat_arg = torch.where(better, barg + offset, self.lat_arg)
        self.lat_cos = torch.where(better, block.gather(0, barg[None]).squeeze(0), self.lat_cos)
        # Counts in int32 (a block has < 2**31 rows): twice as fast as int64 on the CPU.
        self.lat_n_above += (block > threshold).sum(dim=0, dtype=torch.int32)


class CosineHeatmap(NamedTuple):
    """``|cos|`` for plotting: rows are features in order, columns latents in matched order
    (see :func:`sae.plots.matched_latent_order`), each cell the mean over a block of at most
    ``row_block x col_block`` cells of the full ``n_features x n_latents`` matrix (1 x 1, i.e.
    the exact matrix, when it has at most ``heatmap_side`` rows and columns and at most
    ``HEATMAP_ELEMENTS`` cells)."""

    values: np.ndarray  # [ceil(n_features / row_block), ceil(n_latents / col_block)]
    n_features: int
    n_latents: int
    row_block: int
    col_block: int


def _block_mean_columns(a: np.ndarray, block: int) -> np.ndarray:
    if block == 1:
        return a
    n = a.shape[1]
    m = -(-n // block)
    padded = np.zeros((a.shape[0], m * block), dtype=np.float64)
    padded[:, :n] = a
    counts = np.minimum(block, n - np.arange(m) * block)
    return padded.reshape(a.shape[0], m, block).sum(axis=2) / counts


def _scan(
    cosines: Callable[[Tensor | slice], Tensor],
    shape: tuple[int, int],
    order: Tensor | None,
    subsets: list[np.ndarray | None],
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    threshold: float,
    matching: str,
    top_k: int,
    chunk_size: int,
    heatmap_side: int = 0,
) -> tuple[list[DictionaryScores], CosineHeatmap | None]:
    """Every decoder-only score of each subset of the scanned rows, in one pass over blocks of
    ``cosines(rows)`` (``dtype`` ``[rows, n_latents]`` on ``device``) with no host sync.

    The scan visits the rows ``order`` (global feature ids on ``device``; None: all
    ``shape[0]`` rows in index order) in that order, so ties go to the earlier position.
    ``subsets`` holds sorted positions into the scan (None: all of them). ``heatmap_side`` > 0
    also keeps a :class:`CosineHeatmap` of at most that many rows and columns; it needs
    ``order=None`` and the first subset to be all rows (its matching orders the columns).
    """
    n, n_latents = shape if order is None else (order.numel(), shape[1])
    sizes = [n if p is None else p.size for p in subsets]
    methods = [_resolve_method(matching, size, n_latents) for size in sizes]
    states = [_Subset(p, n_latents, dtype, device) for p in subsets]
    row_best_cos = torch.zeros(n, dtype=torch.float64, device=device)
    row_best_lat = torch.full((n,), -1, dtype=torch.long, device=device)
    k = min(top_k, n_latents)
    need_topk = "sparse" in methods
    topk_vals = torch.zeros(n if need_topk else 0, k, dtype=dtype, device=device)
    topk_idx = torch.zeros(n if need_topk else 0, k, dtype=torch.long, device=device)
    # Rows kept whole, only for subsets matched by the dense Hungarian algorithm.
    dense = np.zeros(n, dtype=bool)
    for p, m in zip(subsets, methods):
        if m == "dense":
            dense[slice(None) if p is None else p] = True
    dense_pos = np.flatnonzero(dense)
    dense_pos_t = torch.as_tensor(dense_pos, device=device)
    dense_rows = torch.empty(dense_pos.size, n_latents, dtype=dtype, device=device)
    step = block_rows(n_latents, chunk_size)
    heat = row_block = None
    if heatmap_side > 0 and order is None and n and n_latents:
        groups = max(1, min(heatmap_side, HEATMAP_ELEMENTS // n_latents))
        row_block = -(-n // groups)
        step = max(row_block, step // row_block * row_block)  # blocks hold whole row groups
        heat = torch.zeros(-(-n // row_block), n_latents, dtype=dtype, device=device)

    for start in range(0, n if n_latents else 0, step):
        stop = min(start + step, n)
        block = cosines(slice(start, stop) if order is None else order[start:stop])
        v, i = block.max(dim=1)
        row_best_cos[start:stop] = v.to(torch.float64)
        row_best_lat[start:stop] = i
        abs_block = block.abs()
        if need_topk:
            topk_vals[start:stop], topk_idx[start:stop] = abs_block.topk(k, dim=1)
        a, b = np.searchsorted(dense_pos, (start, stop))
        if b > a:
            dense_rows[a:b] = abs_block.index_select(0, dense_pos_t[a:b] - start)
        for s in states:
            if s.positions is None:
                s.update(block, abs_block, start, threshold)
                continue
            a, b = np.searchsorted(s.positions, (start, stop))
            if b > a:
                local = s.pos_t[a:b] - start
                s.update(
                    block.index_select(0, local), abs_block.index_select(0, local), a, threshold
                )
        if heat is not None:
            g0, rows = start // row_block, stop - start
            pad = -rows % row_block
            if pad:
                abs_block = torch.cat([abs_block, abs_block.new_zeros(pad, n_latents)])
            heat[g0 : g0 + (rows + pad) // row_block] = abs_block.view(
                -1, row_block, n_latents
            ).sum(dim=1)
        del block, abs_block

    # Everything to the host together, once; the rest is small bookkeeping and scipy.
    to_host = {
        "row_best_cos": row_best_cos,
        "row_best_lat": row_best_lat,
        "topk_vals": topk_vals,
        "topk_idx": topk_idx,
        "dense_rows": dense_rows,
        "heat": heat,
    }
    for j, s in enumerate(states):
        to_host |= {f"{j}/arg": s.lat_arg, f"{j}/cos": s.lat_cos, f"{j}/above": s.lat_n_above}
    host = {key: None if t is None else t.cpu().numpy() for key, t in to_host.items()}
    host["order"] = np.arange(n) if order is None else order.cpu().numpy()

    scores = []
    for j, (p, size, method) in enumerate(zip(subsets, sizes, methods)):
        pos = np.arange(n) if p is None else p
        scores.append(_finish(host, j, pos, size, n_latents, method, dense_pos, threshold))
    heatmap = None
    if heatmap_side > 0:
        heatmap = _heatmap(host["heat"], scores[0].matching, n, n_latents, row_block, heatmap_side)
    return scores, heatmap


def _finish(
    host: dict[str, np.ndarray],
    j: int,
    pos: np.ndarray,
    n: int,
    n_latents: int,
    method: str,
    dense_pos: np.ndarray,
    threshold: float,
) -> DictionaryScores:
    """Scores of subset ``j`` (positions ``pos`` of the scan) from the host copies."""
    ids_np = host["order"][pos]
    best_cos_np = host["row_best_cos"][pos]
    lat_arg_np = host[f"{j}/arg"]
    lat_cos_np = host[f"{j}/cos"].astype(np.float64)
    has_best = lat_arg_np >= 0
    lat_best_feature = np.where(has_best, ids_np[np.maximum(lat_arg_np, 0)] if n else -1, -1)

    strong = has_best & (lat_cos_np > threshold)
    split_local = np.flatnonzero(np.bincount(lat_arg_np[strong], minlength=n) >= 2)
    uniqueness = float(np.unique(lat_arg_np[has_best]).size / n_latents) if n and n_latents else 0.0

    if method == "dense":
        rows = np.searchsorted(dense_pos, pos)
        whole = rows.size == dense_pos.size
        m = _match_dense(
            (host["dense_rows"] if whole else host["dense_rows"][rows]).astype(np.float64)
        )
    elif method == "sparse":
        vals = host["topk_vals"][pos].astype(np.float64)
        m = _match_sparse(vals, host["topk_idx"][pos], n_latents)
    else:
        m = Matching(np.full(n, -1, dtype=np.int64), np.zeros(n), "none")
    return DictionaryScores(
        mmcs=_mean(best_cos_np),
        recovered_0_9=_mean(best_cos_np > RECOVERY_THRESHOLDS[0]),
        recovered_0_99=_mean(best_cos_np > RECOVERY_THRESHOLDS[1]),
        mcc=float(m.matched_abs_cos.sum() / n) if n else float("nan"),
        uniqueness=uniqueness,
        threshold=float(threshold),
        feature_ids=ids_np,
        feature_best_latent=host["row_best_lat"][pos],
        feature_best_cos=best_cos_np,
        matching=m,
        latent_best_feature=lat_best_feature.astype(np.int64),
        latent_best_cos=lat_cos_np,
        split_features=ids_np[split_local],
        absorbing_latents=np.flatnonzero(host[f"{j}/above"] >= 2),
    )


def _heatmap(
    heat: np.ndarray | None,
    matching: Matching,
    n: int,
    n_latents: int,
    row_block: int | None,
    side: int,
) -> CosineHeatmap:
    """Row-block sums of ``|cos|`` -> block means with the latents in matched order."""
    if heat is None:
        return CosineHeatmap(np.zeros((n, n_latents)), n, n_latents, 1, 1)
    order = np.concatenate(
        [
            matching.feature_to_latent[matching.feature_to_latent >= 0],
            np.setdiff1d(np.arange(n_latents), matching.feature_to_latent),
        ]
    )  # sae.plots.matched_latent_order, without importing matplotlib
    row_counts = np.minimum(row_block, n - np.arange(heat.shape[0]) * row_block)
    col_block = -(-n_latents // side)
    values = heat[:, order]
    if row_block > 1 or col_block > 1:
        values = _block_mean_columns(values, col_block) / row_counts[:, None]
    return CosineHeatmap(values, n, n_latents, row_block, col_block)


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

    Runs on ``cos``'s device in blocks of ``chunk_size`` rows; :func:`evaluate_dictionary`
    gives the same scores without the whole matrix.
    """
    ids = _feature_ids(cos, feature_ids)

    def rows(r: Tensor | slice) -> Tensor:
        return cos[r] if isinstance(r, slice) else cos.index_select(0, r)

    scores, _ = _scan(
        rows,
        tuple(cos.shape),
        ids,
        [None],
        device=cos.device,
        dtype=cos.dtype,
        threshold=threshold,
        matching=matching,
        top_k=top_k,
        chunk_size=chunk_size,
    )
    return scores[0]


class DictionaryEvaluation:
    """Scores over all features and, when a mask was given, over the represented ones."""

    def __init__(
        self,
        all: DictionaryScores,
        represented: DictionaryScores | None,
        blocks: CosineBlocks,
        chunk_size: int,
        heatmap: CosineHeatmap | None = None,
    ) -> None:
        self.all, self.represented, self.heatmap = all, represented, heatmap
        self._blocks, self._chunk_size = blocks, chunk_size
        self._cos: Tensor | None = None

    @property
    def cos(self) -> Tensor:
        """The whole float32 ``[n_features, n_latents]`` cosine matrix on the evaluation
        device, built on first use (1 GiB at 16k x 16k; the scores never need it)."""
        if self._cos is None:
            b = self._blocks
            self._cos = torch.empty(b.shape, dtype=torch.float32, device=b.device)
            step = block_rows(b.shape[1], self._chunk_size)
            for start in range(0, b.shape[0], step):
                self._cos[start : start + step] = b(slice(start, start + step))
        return self._cos

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
    device: torch.device | str | None = None,
    heatmap_side: int = 0,
) -> DictionaryEvaluation:
    """Score ``decoder`` [n_latents, d] against ``ground_truth`` [n_features, d].

    ``represented`` (bool [n_features]) adds a second set of scores restricted to those
    features; the matching is re-solved on that subset so that unrepresented features
    cannot take latents away. See :func:`score_features` for the definitions.

    Runs on ``device`` (default: ``decoder``'s) in one pass over blocks of at most
    ``chunk_size`` features, never holding the whole cosine matrix (``.cos`` builds it on
    demand). ``heatmap_side`` > 0 also fills ``.heatmap`` (:class:`CosineHeatmap`, at most
    that many rows and columns) for :func:`sae.plots.plot_cosine_heatmap`.
    """
    blocks = CosineBlocks(ground_truth, decoder, device)
    subsets: list[np.ndarray | None] = [None]
    if represented is not None:
        subsets.append(np.flatnonzero(_as_mask(represented, blocks.shape[0])))
    scores, heatmap = _scan(
        blocks,
        blocks.shape,
        None,
        subsets,
        device=blocks.device,
        threshold=threshold,
        matching=matching,
        top_k=top_k,
        chunk_size=chunk_size,
        heatmap_side=heatmap_side,
    )
    rep = scores[1] if represented is not None else None
    return DictionaryEvaluation(scores[0], rep, blocks, chunk_size, heatmap)


FLAG_MARGIN = 0.05
"""How far a latent must beat the true features' own closeness to count in a flag."""


def with_relative_flags(ev: DictionaryEvaluation) -> DictionaryEvaluation:
    """``ev`` with its split / absorption flags judged relative to the true features' own
    closeness (``_relative_flags``); ``sae eval`` reports these. The threshold-only flags of
    ``evaluate_dictionary`` / ``score_features`` are a superset."""
    size = ev._chunk_size
    ev.all = _relative_flags(ev.all, ev._blocks, size)
    if ev.represented is not None:
        ev.represented = _relative_flags(ev.represented, ev._blocks, size)
    return ev


def _relative_flags(s: DictionaryScores, blocks: CosineBlocks, chunk_size: int) -> DictionaryScores:
    """Split and absorption flags judged against how close the true features themselves are
    (when true features overlap, as ReLU(W_i) do for relu_hidden, a perfect dictionary must
    raise no flag). Of the candidates the threshold rule flagged, keep:

    - split feature f: 2+ latents whose best feature is f with cos > max(threshold,
      nn(f) + FLAG_MARGIN), nn(f) = the highest cosine of f with another scored feature;
    - absorbing latent j (best feature f): 2+ scored features g with cos(j, g) >
      max(threshold, cos(f, g) + FLAG_MARGIN) (f itself: cos(j, f) > threshold).

    Only candidates are recomputed (rows of at most ``chunk_size``), never the whole matrix.
    """
    if not (s.split_features.size or s.absorbing_latents.size):
        return s
    dev = blocks.device
    ids = torch.as_tensor(s.feature_ids, dtype=torch.long, device=dev)
    truths = blocks.gt.index_select(0, ids)  # unit rows of the scored features
    position = {int(f): k for k, f in enumerate(s.feature_ids)}
    step = max(1, block_rows(max(ids.numel(), 1), chunk_size))

    split = []
    for start in range(0, s.split_features.size, step):
        cand = s.split_features[start : start + step]
        rows = torch.as_tensor([position[int(f)] for f in cand], dtype=torch.long, device=dev)
        near = truths.index_select(0, rows) @ truths.T
        near[torch.arange(rows.numel(), device=dev), rows] = -math.inf
        bar = near.max(dim=1).values.clamp_min(s.threshold - FLAG_MARGIN) + FLAG_MARGIN
        bar = bar.cpu().numpy()
        for f, b in zip(cand, bar):
            mine = (s.latent_best_feature == f) & (s.latent_best_cos > b)
            if mine.sum() >= 2:
                split.append(int(f))

    absorbing = []
    for start in range(0, s.absorbing_latents.size, step):
        lat = torch.as_tensor(s.absorbing_latents[start : start + step], device=dev)
        best = torch.as_tensor(s.latent_best_feature[lat.cpu().numpy()], device=dev)
        rows = torch.as_tensor([position[int(f)] for f in best.tolist()], device=dev)
        cos = blocks.dec_t.T.index_select(0, lat) @ truths.T  # [k, scored features]
        own = truths.index_select(0, rows) @ truths.T
        own[torch.arange(rows.numel(), device=dev), rows] = -math.inf
        counted = cos > own.clamp_min(s.threshold - FLAG_MARGIN) + FLAG_MARGIN
        absorbing.extend(lat[counted.sum(dim=1) >= 2].tolist())
    return s._replace(
        split_features=np.asarray(split, dtype=np.int64),
        absorbing_latents=np.asarray(absorbing, dtype=np.int64),
    )


def score_dictionary(
    ground_truth: Tensor,
    decoder: Tensor,
    represented: ArrayLike | None = None,
    **kwargs,
) -> dict[str, float]:
    """Flat JSON-ready scores; ``evaluate_dictionary(...)`` for the per-feature arrays."""
    return evaluate_dictionary(ground_truth, decoder, represented, **kwargs).to_dict()


# ----------------------------------------------------------------------------- streaming


SHRINKAGE_MIN_NORM = 1e-6
"""Samples with a smaller input norm are left out of ``shrinkage`` (SAELens's cutoff)."""


class CeilingStats:
    """Streaming explained variance of the ground truth's own reconstruction of the rows
    (true codes × true directions) with the best constant offset, as an SAE has ``b_dec``:
    ``1 - tr Cov(x - x_truth) / tr Cov(x)``. 1 where the rows are exactly an affine mix of the
    true directions; below 1 where they are not (relu_hidden, abs)."""

    def __init__(self) -> None:
        self.n_samples = 0

    def update(self, x: Tensor, x_truth: Tensor) -> None:
        x, r = x.double(), (x - x_truth).double()
        if self.n_samples == 0:
            self._sum_x, self._sum_r = x.sum(0), r.sum(0)
            self._sq_x, self._sq_r = x.square().sum(), r.square().sum()
        else:
            self._sum_x += x.sum(0)
            self._sum_r += r.sum(0)
            self._sq_x += x.square().sum()
            self._sq_r += r.square().sum()
        self.n_samples += x.shape[0]

    def explained_variance(self) -> float:
        n = self.n_samples
        total = float(self._sq_x - self._sum_x.square().sum() / n)
        residual = float(self._sq_r - self._sum_r.square().sum() / n)
        return 1.0 - residual / total if total > 0 else float("nan")


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
    - ``shrinkage`` = mean over samples with ``||x|| > 1e-6`` of ``||x_hat|| / ||x||``:
      SAELens's definition (``synthetic.evals.ShrinkageCalculator``; NaN, where SAELens says
      0, when no sample qualifies)
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
        self._sum_norm_ratio = torch.zeros((), dtype=f64, device=dev)
        self._n_norm_ratio = torch.zeros((), dtype=torch.long, device=dev)
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
                # Latents averaged in each classification mean, found on the host.
                assigned = self._l2f >= 0
                groups = {"classification": assigned}
                if self._represented is not None:
                    groups["represented/classification"] = (
                        assigned & self._represented[self._l2f.clamp(min=0)]
                    )
                self._groups = {k: sel.nonzero()[:, 0].to(dev) for k, sel in groups.items()}
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
        norm_x = x64.norm(dim=1)
        counted = norm_x > SHRINKAGE_MIN_NORM
        ratio = xh64.norm(dim=1) / norm_x.clamp(min=SHRINKAGE_MIN_NORM)
        self._sum_norm_ratio += torch.where(counted, ratio, torch.zeros_like(ratio)).sum()
        self._n_norm_ratio += counted.sum()
        fires = codes.detach() > 0
        self._fires += fires.sum(dim=0, dtype=torch.int32)
        if true_codes is not None:
            true_fires = true_codes.detach() > 0
            self._true_fires += true_fires.sum(dim=0, dtype=torch.int32)
            if self._l2f is not None:
                own = true_fires[:, self._l2f.clamp(min=0)]
                self._tp += (fires & own).sum(dim=0, dtype=torch.int32)
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

    def results(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """``(compute(), arrays())`` from one copy to the host."""
        if self.n_samples == 0:
            raise ValueError("ReconstructionStats.results() called before any update()")
        n, f64 = self.n_samples, torch.float64
        nan = torch.tensor(float("nan"), dtype=f64, device=self._fires.device)
        mean_x = self._sum_x / n
        variance = self._sum_sq_x / n - mean_x.square().sum()
        err = self._sum_sq_err / n
        dead = (self._fires == 0).to(f64)
        scalars: dict[str, Tensor] = {
            "explained_variance": torch.where(variance > 0, 1.0 - err / variance, nan),
            "mse": err / self._sum_x.numel(),
            "sae_l0": self._fires.sum().to(f64) / n,
            "dead_latents": dead.sum(),
            "dead_fraction": dead.mean(),
            "shrinkage": torch.where(
                self._n_norm_ratio > 0,
                self._sum_norm_ratio / self._n_norm_ratio.clamp(min=1),
                nan,
            ),
        }
        arrays = {"latent_firing_rate": self._fires.to(f64) / n}
        if self._with_true:
            scalars["true_l0"] = self._true_fires.sum().to(f64) / n
            arrays["feature_firing_rate"] = self._true_fires.to(f64) / n
            if self._l2f is not None:
                per_latent_metrics = self._classification()
                for prefix, sel in self._groups.items():
                    for name, per_latent in per_latent_metrics.items():
                        scalars[f"{prefix}/{name}"] = (
                            per_latent.index_select(0, sel).mean() if sel.numel() else nan
                        )
                arrays |= {k: v for k, v in per_latent_metrics.items() if k != "accuracy"}
        values = list(scalars.values()) + list(arrays.values())
        flat = torch.cat([v.reshape(-1).to(f64) for v in values]).cpu().numpy()
        out: dict[str, float] = {"n_samples": n}
        for i, key in enumerate(scalars):
            out[key] = int(flat[i]) if key == "dead_latents" else float(flat[i])
        host, at = {}, len(scalars)
        for key, v in arrays.items():
            host[key], at = flat[at : at + v.numel()], at + v.numel()
        return out, host

    def compute(self) -> dict[str, float]:
        """Flat JSON-ready scalars (see the class docstring for definitions)."""
        if self.n_samples == 0:
            raise ValueError("ReconstructionStats.compute() called before any update()")
        return self.results()[0]

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-latent (``latent_firing_rate``, ``precision``, ``recall``, ``f1_score``) and
        per-feature (``feature_firing_rate``) arrays, as float64 numpy."""
        if self.n_samples == 0:
            raise ValueError("ReconstructionStats.arrays() called before any update()")
        return self.results()[1]
