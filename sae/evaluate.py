"""Score one trained SAE against ground truth on held-out activations: scalars, a per-feature and
per-latent table, and plots. Everything lands in ``eval_stats.json`` next to the weights."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sae.metrics import ReconstructionStats, evaluate_dictionary
from sae.model import SparseAutoencoder
from sae.run.errors import UsageError
from sae.run.files import write_json

EVAL_FILE = "eval_stats.json"


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder,
    ground_truth: Tensor,
    batches: Iterable[tuple[Tensor, Tensor | None]],
    represented: Tensor | None = None,
    feature_names: list[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Scores of instance 0 of ``sae``; ``batches`` yields (activations, true codes or None).

    Cosines compare unit-normalised ground truth with unit-normalised decoder rows, so free
    decoder norms (april2024) need no folding for them; the reconstruction statistics use the
    SAE as it is.
    """
    decoder = sae.decoder[0].detach()
    if ground_truth.shape[1] != decoder.shape[1]:
        raise UsageError(
            f"ground truth has width {ground_truth.shape[1]} but the SAE reads "
            f"{decoder.shape[1]} dimensions"
        )
    dictionary = evaluate_dictionary(ground_truth, decoder, represented, threshold=threshold)
    stats = ReconstructionStats(dictionary.all.latent_best_feature, represented)
    for x, codes in batches:
        out = sae(x.float())
        stats.update(x.float(), out.x_hat[0], out.codes[0], codes)
    scalars = dictionary.to_dict() | stats.compute()
    arrays = stats.arrays()
    n_features = ground_truth.shape[0]
    names = feature_names or [str(i) for i in range(n_features)]
    return {
        "scalars": {k: _json_number(v) for k, v in scalars.items()},
        "features": _feature_rows(dictionary, arrays, names, represented),
        "latents": _latent_rows(dictionary, arrays, names),
        "cos": dictionary.cos,
        "matching": dictionary.all.matching.feature_to_latent,
    }


def _feature_rows(
    dictionary: Any, arrays: dict[str, np.ndarray], names: list[str], represented: Tensor | None
) -> list[dict[str, Any]]:
    s = dictionary.all
    latent_rate = arrays["latent_firing_rate"]
    feature_rate = arrays.get("feature_firing_rate")
    split = set(s.split_features.tolist())
    rows = []
    for i, name in enumerate(names):
        best = int(s.feature_best_latent[i])
        rows.append(
            {
                "feature": name,
                "represented": bool(represented[i]) if represented is not None else None,
                "best_latent": best,
                "best_cos": _json_number(float(s.feature_best_cos[i])),
                "matched_latent": int(s.matching.feature_to_latent[i]),
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

    folder = Path(folder)
    write_json(folder / EVAL_FILE, {k: result[k] for k in ("scalars", "features", "latents")})
    cos = result["cos"].numpy()
    best = np.array(
        [r["best_cos"] if r["best_cos"] is not None else np.nan for r in result["features"]]
    )
    return {
        "cosine_heatmap": plot_cosine_heatmap(
            cos, result["matching"], folder / "cosine_heatmap.png", title
        ),
        "best_cosine_histogram": plot_best_cosine_histogram(
            best, folder / "best_cosine_hist.png", title
        ),
    }


def format_table(rows: list[tuple[str, dict[str, Any]]], keys: list[str]) -> str:
    """A short fixed-width table: one row per SAE, one column per scalar."""
    header = ["sae"] + keys
    body = [[label] + [_fmt(scalars.get(k)) for k in keys] for label, scalars in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + body]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
