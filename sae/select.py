"""Choosing one SAE of a run without ground truth (``sae select``).

Outside a toy model nobody knows the true features, so λ and the dictionary size must be
chosen from what the SAEs alone show. Every signal here is computed from the SAEs' decoders
and their activations on held-out rows; none reads the ground truth.

Per instance (``InstanceSignals``):

- ``explained_variance``, ``l0``, ``dead_fraction`` (never fired on the held-out rows),
  ``loss`` (‖x − x̂‖² summed over dimensions + λ·sparsity, the training objective, on the
  inputs as training scaled them).
- ``seed_mmcs``: agreement between seeds of the same setting (λ, lr, width): the symmetric
  mean max cosine similarity (MMCS) between their alive decoder rows, averaged over the other
  seeds. Features a data set really has come back from any seed; artefacts of one seed do not.
- ``larger_mmcs`` (Sharkey, Braun & Millidge 2022, method 3): MMCS from this dictionary into
  the next larger one of the same λ, lr and seed.
- ``lambda_mmcs``: symmetric MMCS with the dictionaries of the neighbouring λ values (same
  width, lr, seed): a plateau of λ over which the dictionary stays put.
- ``l0_slope``: |d log L0 / d log λ| along the λ sweep: where the SAE has found the features,
  more λ shrinks codes without changing which latents fire.
- ``ev_knee``: how far (explained variance, log λ) lies above the chord of its λ sweep,
  normalised (the knee of the curve: the largest λ before reconstruction collapses).

Per width chain (same λ, lr, seed; Sharkey et al.'s methods 1 and 2): ``dead_onset_width``,
the largest width with at most ``DEAD_TOLERANCE`` dead latents (dead latents appear once the
dictionary outgrows the features), and ``loss_elbow_width``, the knee of the loss against log
width.

A method is a width rule and a λ rule: the width rule keeps, in each width chain, the instances
at the width it estimates; the λ rule then takes the best score among those. ``auto`` is the
rule measured best (``bench/bench_select.py``, BENCHMARKS.md): the width at the loss elbow (when
the run sweeps three or more widths), then the explained-variance knee over λ (three or more λ
values); else seed agreement, else the λ stability of the dictionary.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

DEAD_TOLERANCE = 0.01
"""A dictionary with at most this fraction of dead latents is not yet wider than the data."""

WIDTH_RULES = ("none", "dead_onset", "loss_elbow", "larger_mmcs")
LAMBDA_RULES = ("seed_mmcs", "lambda_mmcs", "l0_plateau", "ev_knee", "loss")
AUTO = "auto"


class SAEView(NamedTuple):
    """What selection needs of one trained SAE."""

    name: str
    """Its folder name (``sae_<k>``)."""
    cfg: dict[str, Any]
    """Its ``cfg.json`` (λ, lr, seed, d_sae)."""
    module: Any
    """A one-instance ``SparseAutoencoder``."""


class InstanceSignals(NamedTuple):
    name: str
    l1_coefficient: float
    lr: float
    seed: int
    d_sae: int
    explained_variance: float
    l0: float
    dead_fraction: float
    loss: float
    seed_mmcs: float | None
    larger_mmcs: float | None
    lambda_mmcs: float | None
    l0_slope: float | None
    ev_knee: float | None


class Selection(NamedTuple):
    instance: int
    """Position of the chosen SAE in the run's list (``sae_<instance>`` for a sweep)."""
    name: str
    method: str
    """The method as run (``auto`` resolved to the rule it took)."""
    signals: list[InstanceSignals]
    widths: dict[str, dict[str, int]]
    """``dead_onset_width`` and ``loss_elbow_width`` per width chain (``l1=..,lr=..,seed=..``)."""
    choices: dict[str, int | None]
    """What every method would choose (None: the run lacks what it needs)."""


# ---------------------------------------------------------------------------- statistics


@torch.no_grad()
def held_out_stats(
    saes: Sequence[SAEView], batches: Iterable[Tensor], max_rows: int = 16_384
) -> list[dict[str, Any]]:
    """Explained variance, L0, dead fraction, loss and the dead-latent mask of each SAE on up
    to ``max_rows`` held-out rows (float64 sums)."""
    n = 0
    acc = [defaultdict(float) for _ in saes]
    fired = [torch.zeros(s.module.d_sae, dtype=torch.bool) for s in saes]
    sum_x, sum_sq = None, 0.0
    for x in batches:
        x = x[: max_rows - n].float()
        if x.shape[0] == 0:
            break
        x64 = x.double()
        sum_x = x64.sum(0) if sum_x is None else sum_x + x64.sum(0)
        sum_sq += float(x64.square().sum())
        for s, a, f in zip(saes, acc, fired):
            out = s.module(x)
            l1 = float(s.cfg.get("l1_coefficient") or 0.0)
            rows = x.shape[0]
            a["err"] += float((out.x_hat[0].double() - x64).square().sum())
            a["l0"] += float((out.codes[0] > 0).sum())
            # The training objective, on the inputs training saw (c·x when normalize_input
            # folded a scale c into the saved weights): the reconstruction error grows by c²,
            # a decoder-norm-weighted penalty by c, plain Σ f not at all.
            c = float(s.cfg.get("input_scale_folded") or 1.0)
            penalty = s.module.rules.sparsity(out.codes, s.module.decoder * c) / rows
            a["loss"] += rows * float(c * c * out.reconstruction[0] + l1 * penalty[0])
            f |= (out.codes[0] > 0).any(0).cpu()
        n += x.shape[0]
        if n >= max_rows:
            break
    if n == 0:
        raise ValueError("no held-out rows to select on")
    variance = sum_sq / n - float((sum_x / n).square().sum())
    return [
        {
            "explained_variance": 1 - (a["err"] / n) / variance if variance > 0 else math.nan,
            "l0": a["l0"] / n,
            "loss": a["loss"] / n,
            "dead_fraction": float((~f).float().mean()),
            "alive": f,
        }
        for a, f in zip(acc, fired)
    ]


def _unit_alive(module: Any, alive: Tensor) -> Tensor:
    d = module.decoder[0].detach().float()[alive]
    return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def mmcs(a: Tensor, b: Tensor) -> float:
    """Mean over the rows of ``a`` of the best cosine with a row of ``b`` (unit rows)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return 0.0
    return float((a @ b.T).max(dim=1).values.mean())


def knee(xs: Sequence[float], ys: Sequence[float], above: bool = True) -> list[float]:
    """Signed distance of each point above (``above``) or below the chord from the first to
    the last point, with both axes scaled to [0, 1] (Kneedle's difference curve): the largest is
    the knee. Signed, so a point on the wrong side (past a collapse) never wins."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return [0.0] * len(x)
    x, y = (x - x.min()) / np.ptp(x), (y - y.min()) / np.ptp(y)
    chord = y[0] + (y[-1] - y[0]) * (x - x[0]) / (x[-1] - x[0])
    return list(y - chord if above else chord - y)


# ---------------------------------------------------------------------------- signals


def _key(cfg: dict[str, Any], *fields: str) -> tuple:
    return tuple(cfg.get(f) for f in fields)


def compute_signals(
    saes: Sequence[SAEView], stats: list[dict[str, Any]]
) -> tuple[list[InstanceSignals], dict[str, dict[str, int]]]:
    """Every per-instance signal and the width estimates of each width chain."""
    units = [_unit_alive(s.module, st["alive"]) for s, st in zip(saes, stats)]
    cfgs = [s.cfg for s in saes]
    n = len(saes)

    def groups(*fields: str) -> list[list[int]]:
        out: dict[tuple, list[int]] = defaultdict(list)
        for k, c in enumerate(cfgs):
            out[_key(c, *fields)].append(k)
        return list(out.values())

    seed_mmcs: list[float | None] = [None] * n
    for members in groups("l1_coefficient", "lr", "d_sae"):
        if len({cfgs[k].get("seed") for k in members}) < 2:
            continue
        for k in members:
            others = [j for j in members if j != k and cfgs[j].get("seed") != cfgs[k].get("seed")]
            seed_mmcs[k] = float(
                np.mean([(mmcs(units[k], units[j]) + mmcs(units[j], units[k])) / 2 for j in others])
            )

    larger: list[float | None] = [None] * n
    widths: dict[str, dict[str, int]] = {"dead_onset_width": {}, "loss_elbow_width": {}}
    for chain in groups("l1_coefficient", "lr", "seed"):
        chain = sorted(chain, key=lambda k: cfgs[k]["d_sae"])
        if len({cfgs[k]["d_sae"] for k in chain}) < 2:
            continue
        for small, big in zip(chain, chain[1:]):
            larger[small] = mmcs(units[small], units[big])
        label = _chain_label(cfgs[chain[0]], ("l1_coefficient", "lr", "seed"))
        widths["dead_onset_width"][label] = _dead_onset(
            [cfgs[k]["d_sae"] for k in chain], [stats[k]["dead_fraction"] for k in chain]
        )
        if len(chain) >= 3:
            d = knee(
                [math.log(cfgs[k]["d_sae"]) for k in chain],
                [stats[k]["loss"] for k in chain],
                above=False,
            )
            widths["loss_elbow_width"][label] = cfgs[chain[int(np.argmax(d))]]["d_sae"]

    lam_mmcs: list[float | None] = [None] * n
    slope: list[float | None] = [None] * n
    ev_knee: list[float | None] = [None] * n
    for chain in groups("d_sae", "lr", "seed"):
        chain = [k for k in chain if (cfgs[k].get("l1_coefficient") or 0) > 0]
        chain = sorted(chain, key=lambda k: cfgs[k]["l1_coefficient"])
        if len(chain) < 2:
            continue
        log_l1 = np.log([cfgs[k]["l1_coefficient"] for k in chain])
        log_l0 = np.log([max(stats[k]["l0"], 1e-6) for k in chain])
        grads = np.gradient(log_l0, log_l1)
        evs = [stats[k]["explained_variance"] for k in chain]
        knees = knee(list(log_l1), evs)
        for i, k in enumerate(chain):
            nbrs = [chain[j] for j in (i - 1, i + 1) if 0 <= j < len(chain)]
            lam_mmcs[k] = float(
                np.mean([(mmcs(units[k], units[j]) + mmcs(units[j], units[k])) / 2 for j in nbrs])
            )
            slope[k] = float(abs(grads[i]))
            ev_knee[k] = float(knees[i]) if len(chain) >= 3 else None

    signals = [
        InstanceSignals(
            s.name,
            float(s.cfg.get("l1_coefficient") or 0.0),
            float(s.cfg.get("lr") or 0.0),
            int(s.cfg.get("seed") or 0),
            int(s.cfg["d_sae"]),
            st["explained_variance"],
            st["l0"],
            st["dead_fraction"],
            st["loss"],
            seed_mmcs[k],
            larger[k],
            lam_mmcs[k],
            slope[k],
            ev_knee[k],
        )
        for k, (s, st) in enumerate(zip(saes, stats))
    ]
    return signals, widths


def _chain_label(cfg: dict[str, Any], fields: tuple[str, ...]) -> str:
    short = {"l1_coefficient": "l1", "lr": "lr", "seed": "seed", "d_sae": "d_sae"}

    def fmt(v: Any) -> str:
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)

    return ",".join(f"{short[f]}={fmt(cfg.get(f))}" for f in fields)


def _dead_onset(widths: list[int], dead: list[float]) -> int:
    """The largest width with at most ``DEAD_TOLERANCE`` dead latents (the smallest if none)."""
    ok = [w for w, f in zip(widths, dead) if f <= DEAD_TOLERANCE]
    return max(ok) if ok else min(widths)


# ---------------------------------------------------------------------------- methods


def _width_keep(rule: str, signals: list[InstanceSignals]) -> list[int] | None:
    """Instances at the width ``rule`` estimates for their chain (None: rule not available)."""
    if rule == "none":
        return list(range(len(signals)))
    chains: dict[tuple, list[int]] = defaultdict(list)
    for k, s in enumerate(signals):
        chains[(s.l1_coefficient, s.lr, s.seed)].append(k)
    keep: list[int] = []
    for chain in chains.values():
        chain = sorted(chain, key=lambda k: signals[k].d_sae)
        if len({signals[k].d_sae for k in chain}) < 2:
            return None
        if rule == "dead_onset":
            w = _dead_onset(
                [signals[k].d_sae for k in chain], [signals[k].dead_fraction for k in chain]
            )
            keep += [k for k in chain if signals[k].d_sae == w]
        elif rule == "loss_elbow":
            if len(chain) < 3:
                return None
            d = knee(
                [math.log(signals[k].d_sae) for k in chain],
                [signals[k].loss for k in chain],
                above=False,
            )
            keep.append(chain[int(np.argmax(d))])
        elif rule == "larger_mmcs":
            scored = [k for k in chain if signals[k].larger_mmcs is not None]
            keep.append(max(scored, key=lambda k: signals[k].larger_mmcs))
        else:
            raise ValueError(f"unknown width rule {rule!r}")
    return keep


COLLAPSE_L0 = 1e-3
"""Mean active latents per row below which an SAE counts as collapsed."""
COLLAPSE_EV = 0.05
"""Explained variance at or below which an SAE counts as collapsed."""


def collapsed(s: InstanceSignals) -> bool:
    """Nothing fires, or nothing is reconstructed: no λ rule may pick it over a working SAE."""
    return s.l0 < COLLAPSE_L0 or s.explained_variance <= COLLAPSE_EV


LAMBDA_SCORES: dict[str, Callable[[InstanceSignals], float | None]] = {
    "seed_mmcs": lambda s: s.seed_mmcs,
    "lambda_mmcs": lambda s: s.lambda_mmcs,
    "l0_plateau": lambda s: None if s.l0_slope is None else -s.l0_slope,
    "ev_knee": lambda s: s.ev_knee,
    "loss": lambda s: -s.loss,
}
"""Higher is better; None where the run lacks what the score needs."""


def method_names() -> list[str]:
    """Every method: ``<λ rule>`` alone or ``<width rule>+<λ rule>``."""
    names = [AUTO] + list(LAMBDA_SCORES)
    names += [f"{w}+{lam}" for w in WIDTH_RULES[1:] for lam in LAMBDA_SCORES]
    return names


def choose(method: str, signals: list[InstanceSignals]) -> int | None:
    """The instance ``method`` picks, or None when the run lacks what it needs."""
    width_rule, _, lam_rule = method.rpartition("+")
    keep = _width_keep(width_rule or "none", signals)
    if keep is None:
        return None
    score = LAMBDA_SCORES[lam_rule]
    # A collapsed SAE (almost nothing fires or nothing is reconstructed) can look stable to the
    # λ rules (L0 flat at 0, neighbours equally dead): never recommend one while another exists.
    working = [k for k in keep if not collapsed(signals[k])]
    keep = working or keep
    scored = [(score(signals[k]), k) for k in keep if score(signals[k]) is not None]
    if not scored:
        return None
    best = max(v for v, _ in scored)
    return min(k for v, k in scored if v == best)  # ties: the first instance


def resolve_auto(signals: list[InstanceSignals]) -> str:
    """What ``auto`` runs on this run: the first of ``AUTO_ORDER`` the run can feed."""
    for method in AUTO_ORDER:
        if choose(method, signals) is not None:
            return method
    return "loss"


AUTO_ORDER = ("loss_elbow+ev_knee", "ev_knee", "seed_mmcs", "lambda_mmcs", "loss")
"""``auto``'s rules, the first the run can feed wins. Measured (``bench/bench_select.py``,
BENCHMARKS.md 'Choosing an SAE without ground truth', six data sets, 21 methods): with widths
swept, the loss elbow over width then the explained-variance knee over λ had mean regret 0.035
in MCC and 0.001 in a width-aware score (matched |cos| over max(features, alive latents)); the
knee alone had 0.005 in MCC but 0.369 width-aware (it keeps the widest dictionary: MCC does not
penalise surplus latents). Without a width sweep the knee alone; with fewer than three λ values,
seed agreement, then λ stability."""


def select(
    saes: Sequence[SAEView], batches: Iterable[Tensor], method: str = AUTO, max_rows: int = 16_384
) -> Selection:
    """Signals of every SAE on held-out ``batches`` (activations only) and ``method``'s pick."""
    if method not in method_names():
        raise ValueError(f"unknown selection method {method!r}")
    stats = held_out_stats(saes, batches, max_rows)
    signals, widths = compute_signals(saes, stats)
    choices = {m: choose(m, signals) for m in method_names() if m != AUTO}
    resolved = resolve_auto(signals) if method == AUTO else method
    k = choose(resolved, signals)
    if k is None:
        raise ValueError(f"method {method!r} needs what this run lacks (seeds, λ or widths)")
    return Selection(k, saes[k].name, resolved, signals, widths, choices)


def selection_record(sel: Selection, requested: str) -> dict[str, Any]:
    """``selection.json``: the choice, the method, every signal, every method's choice."""
    return {
        "instance": sel.instance,
        "sae": sel.name,
        "method": sel.method,
        "requested_method": requested,
        "signals": {
            "instances": [_clean(s._asdict()) for s in sel.signals],
            "widths": sel.widths,
        },
        "choices": {
            m: (None if k is None else sel.signals[k].name) for m, k in sel.choices.items()
        },
    }


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def truth_scores(
    saes: Sequence[SAEView], directions: Tensor, represented: Tensor | None
) -> list[float]:
    """Each SAE's ground-truth score for the regret report: MCC over the represented features
    (all features when the file does not say which are represented)."""
    from sae.metrics import evaluate_dictionary

    key = "represented/mcc" if represented is not None else "all/mcc"
    return [
        float(
            evaluate_dictionary(directions, s.module.decoder[0].detach(), represented).to_dict()[
                key
            ]
        )
        for s in saes
    ]
