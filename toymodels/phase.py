"""Phase diagrams of "Superposition as a Phase Change" (Elhage et al. 2022).

n features in n − 1 dimensions (2-in-1, 3-in-2) with a ReLU-output model: the first features
have importance 1, the last ("extra") one importance r, all share the density p = 1 − S. Each
(r, p) point is trained best-of-k in one batched run (``data.importance_sweep`` × ``data.
feature_probability``) and labelled by what happened to the extra feature; the closed-form losses
of the paper's candidate solutions give the theoretical label at every point.

Closed forms (total importance-weighted squared error, b chosen optimally per solution): a
dropped feature costs its importance times Var(x_i) = p/3 − p²/4 (its bias is E x_i = p/2); an
antipodal pair W_a = −W_b (b = 0) loses min(x_a, x_b) on both outputs when both are on, which
costs p²/6 per feature and importance; a dedicated dimension costs nothing. The paper and its
notebook compare (2-in-1) W = [1, 0], [0, 1], [1, −1] and (3-in-2) W ⊥ [0, 0, 1], [1, 0, 0],
[1, 1, 0], [0, 1, 1].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from sae.run.errors import UsageError
from sae.run.files import write_json
from sae.run.layout import RunDir
from toymodels.config import ToyConfig
from toymodels.diagnostics import diagnose, represented

LABELS = ("not_represented", "dedicated", "superposition")
"""What happened to the extra feature: dropped, a dimension to itself, or shared."""
DEDICATED_DIMENSIONALITY = 0.75
"""A represented extra feature with D_i at least this has a dimension to itself (D_i = 1);
below it, it shares one (antipodal D_i = 1/2, triangle 2/3)."""


class Solution(NamedTuple):
    name: str
    label: str


SOLUTIONS: dict[int, tuple[Solution, ...]] = {
    2: (
        Solution("W=[1,0]", "not_represented"),
        Solution("W=[0,1]", "dedicated"),
        Solution("W=[1,-1]", "superposition"),
    ),
    3: (
        Solution("W⊥[0,0,1]", "not_represented"),
        Solution("W⊥[1,0,0]", "dedicated"),
        Solution("W⊥[1,1,0]", "dedicated"),
        Solution("W⊥[0,1,1]", "superposition"),
    ),
}
"""The candidate solutions of each problem (n features in n − 1 dimensions), in the order
``closed_form_losses`` returns their losses."""


def closed_form_losses(n_features: int, r: Any, density: Any) -> np.ndarray:
    """[..., solutions]: each candidate's expected loss, the importance-weighted squared error
    summed over features, at extra-feature importance ``r`` and density ``density``
    (broadcast)."""
    r, p = np.broadcast_arrays(np.asarray(r, dtype=float), np.asarray(density, dtype=float))
    dropped = p / 3 - p**2 / 4  # Var(x_i) for a feature that is on with probability p
    pair = p**2 / 6  # E[min(x_a, x_b)²] · P(both on), per feature of an antipodal pair
    if n_features == 2:
        losses = [r * dropped, dropped, (1 + r) * pair]
    elif n_features == 3:
        losses = [r * dropped, dropped, 2 * pair, (1 + r) * pair]
    else:
        raise UsageError(f"closed forms exist for 2-in-1 and 3-in-2, not n_features={n_features}")
    return np.stack(losses, axis=-1)


def closed_form_winner(n_features: int, r: Any, density: Any) -> tuple[np.ndarray, np.ndarray]:
    """(index of the lowest-loss solution, its label) at every broadcast (r, density)."""
    best = closed_form_losses(n_features, r, density).argmin(axis=-1)
    labels = np.array([s.label for s in SOLUTIONS[n_features]], dtype=object)
    return best, labels[best]


def far_from_boundary(n_features: int, r: float, density: float, log10_margin: float = 0.3) -> bool:
    """Whether the closed-form winner's label stays the same when density (and r) move by up to
    ``log10_margin`` decades either way."""
    steps = np.linspace(-log10_margin, log10_margin, 13)
    rs, ps = np.meshgrid(r * 10.0**steps, density * 10.0**steps)
    _, labels = closed_form_winner(n_features, rs, np.minimum(ps, 1.0))
    return bool((labels == labels.flat[len(steps) ** 2 // 2]).all())


@torch.no_grad()
def classify_extra_feature(model: Any) -> list[str]:
    """Label the last feature of every instance of a tied toy model: ``not_represented``
    (the shared represented rule says no), ``dedicated`` (D_i ≥ 0.75) or ``superposition``."""
    rep = represented(model)[:, -1]
    dim = diagnose(model.feature_weights).feature_dimensionality[:, -1]
    labels = []
    for is_rep, d in zip(rep.tolist(), dim.tolist()):
        if not is_rep:
            labels.append("not_represented")
        elif d >= DEDICATED_DIMENSIONALITY:
            labels.append("dedicated")
        else:
            labels.append("superposition")
    return labels


def phase_grid(config: ToyConfig) -> tuple[list[float], list[float]]:
    """(r values, density values) of a phase-diagram config; refuses configs that are not one."""
    d, m = config.data, config.model
    n = m.n_features
    if n not in SOLUTIONS or m.n_hidden != n - 1:
        raise UsageError(
            "a phase diagram needs model.n_features=2, n_hidden=1 (2-in-1) or n_features=3, "
            f"n_hidden=2 (3-in-2); got n_features={n}, n_hidden={m.n_hidden}"
        )
    if m.kind != "relu_output":
        raise UsageError(f"a phase diagram needs model.kind=relu_output, got {m.kind}")
    if d.importance_sweep is None:
        raise UsageError("a phase diagram needs data.importance_sweep (one vector per r)")
    if d.repeats != 1 or d.relative_density_sweep is not None or d.relative_density is not None:
        raise UsageError(
            "a phase diagram takes data.repeats=1 and no relative density "
            "(use train.restarts for best-of-k)"
        )
    if d.correlated_sets or d.anticorrelated_sets:
        raise UsageError("a phase diagram needs independent features (no correlated sets)")
    for v in d.importance_sweep:
        if any(not math.isclose(x, 1.0) for x in v[:-1]):
            raise UsageError(f"data.importance_sweep: the first features must be 1, got {v}")
    return [float(v[-1]) for v in d.importance_sweep], [float(p) for p in d.feature_probability]


def run_phase_diagram(
    config: ToyConfig, out_dir: str | Path, resume: bool = False
) -> dict[str, Any] | None:
    """Train every (r, density) point best-of-k in one batched run (``train_toy``), label the
    extra feature, and write ``phase.json`` and ``plots/phase_diagram.png``. Returns the
    record on rank 0, None elsewhere."""
    from toymodels.train import train_toy

    phase_grid(config)
    metrics = train_toy(config, out_dir, resume=resume)
    if metrics is None:
        return None
    return write_phase_diagram(out_dir, config, metrics)


def write_phase_diagram(
    out_dir: str | Path, config: ToyConfig, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Label the trained run in ``out_dir`` (its model.safetensors and ``metrics``) and write
    ``phase.json`` and ``plots/phase_diagram.png``; returns the record."""
    from toymodels.io import load_toy_model

    r, density = phase_grid(config)
    out_dir = Path(out_dir)
    loaded = load_toy_model(out_dir)
    labels = classify_extra_feature(loaded.model)
    n = config.model.n_features
    # Instances run (probability, importance): instance j * len(r) + i is (r[i], density[j]).
    at = [[j * len(r) + i for j in range(len(density))] for i in range(len(r))]
    best, theory = closed_form_winner(n, np.array(r)[:, None], np.array(density)[None, :])
    losses = closed_form_losses(n, np.array(r)[:, None], np.array(density)[None, :]) / n
    records = metrics["instances"]
    trained = [[labels[k] for k in row] for row in at]
    closed = theory.tolist()
    agree = [[t == c for t, c in zip(*rows)] for rows in zip(trained, closed)]
    far = [[far_from_boundary(n, ri, pj) for pj in density] for ri in r]
    record = {
        "n_features": n,
        "n_hidden": config.model.n_hidden,
        "restarts": config.train.restarts,
        "steps": config.train.steps,
        "labels": list(LABELS),
        "r": r,
        "density": density,
        "trained": trained,
        "closed_form": closed,
        "closed_form_solution": [[SOLUTIONS[n][b].name for b in row] for row in best.tolist()],
        "closed_form_loss": losses.min(axis=-1).tolist(),
        "trained_loss": [[records[k]["loss"] for k in row] for row in at],
        "far_from_boundary": far,
        "agreement": float(np.mean(agree)),
        "agreement_far_from_boundary": _mean_where(agree, far),
    }
    run = RunDir(out_dir)
    write_json(run.phase, record)
    from toymodels import plots

    plots.plot_phase_diagram(record, run.plot(run.PHASE_FIGURE), _title(config, n))
    return record


def _mean_where(values: list[list[bool]], mask: list[list[bool]]) -> float | None:
    picked = [v for vs, ms in zip(values, mask) for v, m in zip(vs, ms) if m]
    return float(np.mean(picked)) if picked else None


def _title(config: ToyConfig, n: int) -> str:
    return (
        f"{n} features in {n - 1} dimension{'s' if n > 2 else ''}: best of "
        f"{config.train.restarts}, {config.train.steps} steps"
    )
