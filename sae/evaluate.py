"""Score one trained SAE against ground truth on held-out activations: scalars, a per-feature and
per-latent table, and plots. Everything lands in ``eval_stats.json`` next to the weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sae.code_correlation import CodeCorrelation
from sae.metrics import (
    CeilingStats,
    ReconstructionStats,
    block_rows,
    evaluate_dictionary,
    with_relative_flags,
)
from sae.model import SparseAutoencoder
from sae.run.errors import UsageError
from sae.run.files import write_json
from sae.run.layout import SAEDir

ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
"""``sae eval --accelerator`` choices: ``auto`` is CUDA when available, else the CPU."""
HEATMAP_SIDE = 2048
"""At most this many rows and columns in ``cosine_heatmap.png``'s data (block means above)."""


def resolve_device(accelerator: str) -> torch.device:
    """The torch device that scoring runs on for an ``ACCELERATORS`` name (UsageError if that
    device is not here)."""
    name = accelerator.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU found"
            raise UsageError(
                f"accelerator {accelerator!r} is not available ({why}); "
                "score with --accelerator cpu or auto"
            )
        return torch.device("cuda")
    raise UsageError(
        f"cannot score on accelerator {accelerator!r}: choose one of {', '.join(ACCELERATORS)}"
    )


def scoring_accelerator(runtime_accelerator: str) -> str:
    """The scoring accelerator for a run trained with Lightning's ``runtime.accelerator``:
    itself when scoring supports it, else the CPU (mps, tpu, ...: scoring needs float64)."""
    name = runtime_accelerator.lower()
    return name if name in ACCELERATORS else "cpu"


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder,
    ground_truth: Tensor,
    batches: Iterable[tuple[Tensor, Tensor | None]],
    represented: Tensor | None = None,
    feature_names: list[str] | None = None,
    threshold: float = 0.5,
    *,
    device: torch.device | str | None = None,
    chunk_size: int = 4096,
) -> dict[str, Any]:
    """Scores of instance 0 of ``sae``; ``batches`` yields (activations, true codes or None).

    Cosines compare unit-normalised ground truth with unit-normalised decoder rows, so free
    decoder norms (april2024) need no folding for them; the reconstruction statistics use the
    SAE as it is.

    Everything runs on ``device`` (default: the SAE's), a copy of the SAE moved there if it
    lives elsewhere: cosines in blocks of at most ``chunk_size`` features and each batch in
    slices of at most ``chunk_size`` rows (both also capped at ``CHUNK_ELEMENTS`` numbers per
    block), so memory stays bounded whatever the SAE and batch sizes.
    """
    device = torch.device(device) if device is not None else sae.decoder.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if sae.decoder.device != device:
        sae = copy.deepcopy(sae).to(device)
    decoder = sae.decoder[0].detach()
    if ground_truth.shape[1] != decoder.shape[1]:
        raise UsageError(
            f"ground truth has width {ground_truth.shape[1]} but the SAE reads "
            f"{decoder.shape[1]} dimensions"
        )
    # Split / absorbing flags relative to how close the true features are to each other.
    dictionary = with_relative_flags(
        evaluate_dictionary(
            ground_truth,
            decoder,
            represented,
            threshold=threshold,
            chunk_size=chunk_size,
            device=device,
            heatmap_side=HEATMAP_SIDE,
        )
    )
    stats = ReconstructionStats(dictionary.all.latent_best_feature, represented)
    # Activation-level score of each matched latent (where the data has the true codes).
    code_corr = CodeCorrelation(dictionary.all.matching.feature_to_latent)
    # ... and over the represented features with their own matching, as represented/mcc has.
    repr_corr = None
    if dictionary.represented is not None:
        to_latent = np.full(ground_truth.shape[0], -1, dtype=np.int64)
        to_latent[dictionary.represented.feature_ids] = (
            dictionary.represented.matching.feature_to_latent
        )
        repr_corr = CodeCorrelation(to_latent)
    # The ceiling: the explained variance of the true codes times the true directions (plus the
    # best offset) on the same rows (1 where activations are exactly that mix, below 1 for
    # relu_hidden/abs).
    ceiling = CeilingStats()
    truth = ground_truth.to(device).float()
    width = max(decoder.shape[0], ground_truth.shape[0], decoder.shape[1])
    rows = block_rows(width, chunk_size)
    for x, codes in batches:
        for start in range(0, x.shape[0], rows):
            xb = x[start : start + rows].to(device).float()
            true = None if codes is None else codes[start : start + rows].to(device)
            out = sae(xb)
            stats.update(xb, out.x_hat[0], out.codes[0], true)
            if true is not None:
                ceiling.update(xb, true.float() @ truth)
                code_corr.update(out.codes[0], true.float())
                if repr_corr is not None:
                    repr_corr.update(out.codes[0], true.float())
    stats_scalars, arrays = stats.results()
    scalars = dictionary.to_dict() | stats_scalars
    if ceiling.n_samples:
        scalars["explained_variance_ceiling"] = ceiling.explained_variance()
    if code_corr.n:
        arrays["activation_corr"] = code_corr.per_feature()
        scalars["all/activation_corr"] = code_corr.mean()
        if repr_corr is not None:
            mask = np.zeros(ground_truth.shape[0], dtype=bool)
            mask[dictionary.represented.feature_ids] = True
            scalars["represented/activation_corr"] = repr_corr.mean(mask)
    n_features = ground_truth.shape[0]
    names = feature_names or [str(i) for i in range(n_features)]
    return {
        "scalars": {k: _json_number(v) for k, v in scalars.items()},
        "features": _feature_rows(dictionary, arrays, names, represented),
        "latents": _latent_rows(dictionary, arrays, names),
        "heatmap": dictionary.heatmap,
        "matching": dictionary.all.matching.feature_to_latent,
    }


def _feature_rows(
    dictionary: Any, arrays: dict[str, np.ndarray], names: list[str], represented: Tensor | None
) -> list[dict[str, Any]]:
    s = dictionary.all
    latent_rate = arrays["latent_firing_rate"]
    feature_rate = arrays.get("feature_firing_rate")
    code_corr = arrays.get("activation_corr")
    split = set(s.split_features.tolist())
    rep = None if represented is None else np.asarray(represented.detach().cpu(), dtype=bool)
    rows = []
    for i, name in enumerate(names):
        best = int(s.feature_best_latent[i])
        rows.append(
            {
                "feature": name,
                "represented": bool(rep[i]) if rep is not None else None,
                "best_latent": best,
                "best_cos": _json_number(float(s.feature_best_cos[i])),
                "matched_latent": int(s.matching.feature_to_latent[i]),
                "matched_cos": _json_number(float(s.matching.matched_abs_cos[i])),
                # from float32 codes: 6 decimals are what the rows of any batching agree on
                "activation_corr": _json_number(round(float(code_corr[i]), 6))
                if code_corr is not None
                else None,
                "feature_firing_rate": _json_number(float(feature_rate[i]))
                if feature_rate is not None
                else None,
                "latent_firing_rate": _json_number(float(latent_rate[best])) if best >= 0 else None,
                "split": i in split,
            }
        )
    return rows


def _latent_rows(
    dictionary: Any, arrays: dict[str, np.ndarray], names: list[str]
) -> list[dict[str, Any]]:
    s = dictionary.all
    absorbing = set(s.absorbing_latents.tolist())
    f1 = arrays.get("f1_score")
    rows = []
    for j in range(s.latent_best_feature.size):
        best = int(s.latent_best_feature[j])
        rows.append(
            {
                "latent": j,
                "best_feature": names[best] if best >= 0 else None,
                "best_cos": _json_number(float(s.latent_best_cos[j])),
                "firing_rate": _json_number(float(arrays["latent_firing_rate"][j])),
                "f1_score": _json_number(float(f1[j])) if f1 is not None else None,
                "absorbing": j in absorbing,
            }
        )
    return rows


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_eval(folder: str | Path, result: dict[str, Any], title: str = "") -> dict[str, Path]:
    """``eval_stats.json`` and the two plots in ``folder``; returns the plot paths."""
    from sae.plots import plot_best_cosine_histogram, plot_cosine_heatmap

    folder = SAEDir(folder)
    write_json(folder.eval_stats, {k: result[k] for k in ("scalars", "features", "latents")})
    heat = result["heatmap"]
    best = np.array(
        [r["best_cos"] if r["best_cos"] is not None else np.nan for r in result["features"]]
    )
    return {
        "cosine_heatmap": plot_cosine_heatmap(
            heat.values,
            None,
            folder.cosine_heatmap,
            title,
            full_shape=(heat.n_features, heat.n_latents),
        ),
        "best_cosine_histogram": plot_best_cosine_histogram(best, folder.best_cosine_hist, title),
    }


def format_table(rows: list[tuple[str, dict[str, Any]]], keys: list[str]) -> str:
    """A short fixed-width table: one row per SAE, one column per scalar."""
    header = ["sae"] + keys
    body = [[label] + [format_scalar(scalars.get(k), 4) for k in keys] for label, scalars in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + body]
    return "\n".join(lines)


def format_scalar(v: Any, digits: int) -> str:
    """A score for a table: '-' for a missing one, floats to ``digits`` decimals."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)
