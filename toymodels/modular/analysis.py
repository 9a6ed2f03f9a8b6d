"""Per-instance analysis of trained weights: Fourier structure, ±c bilinear weights, rounding,
unmixing and sparsity (what ``metrics.json`` holds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from toymodels.modular.config import ModularAnalysisConfig
from toymodels.modular.fourier import (
    column_purity,
    fit_directions,
    fourier_power,
    key_frequencies,
    key_power_share,
)
from toymodels.modular.model import BilinearWeights, accuracy, logits, per_instance_loss
from toymodels.modular.unmixing import (
    Unmixing,
    apply_unmixing,
    bilinear_reads,
    find_unmixing,
    weighted_purity,
)


class PlusMinus(NamedTuple):
    c: float
    fraction: float


def plus_minus(values: Tensor, tolerance: float = 0.15) -> PlusMinus:
    """The c for which the most entries lie within ``tolerance``·c of ±c, and that share."""
    mags = values.abs().flatten().double()
    candidates = mags[mags > 1e-12]
    if candidates.numel() == 0:
        return PlusMinus(0.0, 0.0)
    near = ((mags[None, :] - candidates[:, None]).abs() <= tolerance * candidates[:, None]).sum(1)
    best = int(near.argmax())
    # Refine: c = the mean magnitude of the entries it caught (a centre, not an edge entry).
    c = candidates[best]
    caught = (mags - c).abs() <= tolerance * c
    c = mags[caught].mean()
    caught = (mags - c).abs() <= tolerance * c
    return PlusMinus(float(c), float(caught.double().mean()))


def zero_fraction(w: Tensor, tolerance: float = 0.1) -> float:
    """Share of entries with |w| <= tolerance · max|w| (1 instance's matrix)."""
    mags = w.abs()
    return float((mags <= tolerance * mags.max()).double().mean())


def direction_spread(E: Tensor, keys: list[int]) -> float:
    """Mean participation ratio (Σ g_j²)² / Σ g_j⁴ of the pure frequency directions g (cos and
    sin of each key frequency, fitted in embedding space) over the d columns: 1 when each sits
    in one column, d when spread evenly over all (a Hadamard mix). Unlike column purity it also
    sees one frequency's cos and sin spread over many columns."""
    g = fit_directions(E, keys).directions
    sq = g.square()
    ratio = sq.sum(1).square() / sq.square().sum(1).clamp_min(1e-30)
    return float(ratio.mean())


class UnmixedInstance(NamedTuple):
    weights: BilinearWeights
    """The unmixed weights of the instance (1 instance, float64)."""
    unmix_a: Unmixing
    unmix_b: Unmixing


def _loss_acc(
    w: BilinearWeights, a: Tensor, b: Tensor, y: Tensor, loss: str, layernorm: bool
) -> tuple[float, float, Tensor]:
    out = logits(w, a, b, layernorm)
    return float(per_instance_loss(out, y, loss)[0]), float(accuracy(out, y)[0]), out


@torch.no_grad()
def analyse_instance(
    w: BilinearWeights,
    pairs: tuple[Tensor, Tensor, Tensor],
    config: ModularAnalysisConfig,
    loss: str = "ce",
    layernorm: bool = False,
) -> tuple[dict[str, Any], UnmixedInstance]:
    """The metrics of one instance (``w`` holds it alone) on all pairs ``(a, b, y)``."""
    w = BilinearWeights(*(t.double() for t in w))
    a, b, y = pairs
    d = w.E_a.shape[-1]
    power_a, power_b = fourier_power(w.E_a[0]), fourier_power(w.E_b[0])
    power = torch.cat([power_a, power_b], dim=1)
    keys = key_frequencies(power, config.key_frequencies, config.key_power_share, cap=d)
    purity = column_purity(power, keys)

    base_loss, base_acc, _ = _loss_acc(w, a, b, y, loss, layernorm)
    bilinear = torch.cat([w.L.flatten(), w.R.flatten()])
    pm = plus_minus(bilinear, config.pm_tolerance)
    rounded = w._replace(L=pm.c * torch.sign(w.L), R=pm.c * torch.sign(w.R))
    round_loss, round_acc, _ = _loss_acc(rounded, a, b, y, loss, layernorm)

    unmix_a = find_unmixing(w.E_a[0], keys, bilinear_reads(w, "a"))
    unmix_b = find_unmixing(w.E_b[0], keys, bilinear_reads(w, "b"))
    unmixed = apply_unmixing(w, unmix_a.Q, unmix_b.Q)
    # The function check runs in float32, the precision the model trains and is saved in.
    f32 = BilinearWeights(*(t.float() for t in w))
    out32 = logits(f32, a, b, layernorm)
    unmixed32 = apply_unmixing(f32, unmix_a.Q.float(), unmix_b.Q.float())
    logit_change = float((logits(unmixed32, a, b, layernorm) - out32).abs().max())
    power_u = torch.cat([fourier_power(unmixed.E_a[0]), fourier_power(unmixed.E_b[0])], dim=1)
    eye = torch.eye(d, dtype=torch.float64)
    z = config.zero_tolerance

    def _weighted(v: BilinearWeights) -> float:
        return (weighted_purity(v.E_a[0], keys) + weighted_purity(v.E_b[0], keys)) / 2

    record = {
        "loss": base_loss,
        "accuracy": base_acc,
        "key_frequencies": keys,
        "key_power_share": key_power_share(power, keys),
        "power_per_frequency": power.sum(1).tolist(),
        "column_purity": purity.tolist(),
        "mean_column_purity": float(purity.mean()),
        "direction_spread": (direction_spread(w.E_a[0], keys) + direction_spread(w.E_b[0], keys))
        / 2,
        "unmixed_direction_spread": (
            direction_spread(unmixed.E_a[0], keys) + direction_spread(unmixed.E_b[0], keys)
        )
        / 2,
        "c": pm.c,
        "bilinear_pm_fraction": pm.fraction,
        "rounded_loss": round_loss,
        "rounded_accuracy": round_acc,
        "rounding_loss_change": round_loss - base_loss,
        "unmix_method": [unmix_a.method, unmix_b.method],
        "unmix_involutory_error": max(
            float((unmix_a.Q @ unmix_a.Q - eye).abs().max()),
            float((unmix_b.Q @ unmix_b.Q - eye).abs().max()),
        ),
        "unmix_max_logit_change": logit_change,
        "max_abs_logit": float(out32.abs().max()),
        "unmixed_column_purity": column_purity(power_u, keys).tolist(),
        "mean_unmixed_column_purity": float(column_purity(power_u, keys).mean()),
        "weighted_column_purity": _weighted(w),
        "unmixed_weighted_column_purity": _weighted(unmixed),
        "L_zero_fraction": zero_fraction(w.L, z),
        "R_zero_fraction": zero_fraction(w.R, z),
        "unmixed_L_zero_fraction": zero_fraction(unmixed.L, z),
        "unmixed_R_zero_fraction": zero_fraction(unmixed.R, z),
        "unmixed_bilinear_pm_fraction": plus_minus(
            torch.cat([unmixed.L.flatten(), unmixed.R.flatten()]), config.pm_tolerance
        ).fraction,
        "unmix_Q_a": unmix_a.Q.tolist(),
        "unmix_Q_b": unmix_b.Q.tolist(),
    }
    return record, UnmixedInstance(unmixed, unmix_a, unmix_b)


def report_purity(
    run_dir: Any,
    instance: int,
    decoders: list[tuple[str, Tensor]],
    score: Callable[[Tensor, Tensor], dict[str, float]],
) -> list[str]:
    """Lines for ``sae toy modular-purity``: the L1 norm per pair of x's codes in the pure,
    learned and unmixed bases; then, for the unmixing's dictionary and each named decoder
    ([n_latents, 2d]), the per-latent frequency purity (mean, and share of latents above 0.9)
    and ``score(ground_truth, decoder)``'s ``all/mcc`` and ``all/recovered_0.99`` (the CLI passes
    ``sae.metrics.score_dictionary``: toymodels does not import the SAE package)."""
    from sae.run.errors import UsageError
    from toymodels.modular.export import (
        code_l1,
        latent_frequency_purity,
        pure_frequencies,
        unmixing_dictionary,
    )
    from toymodels.modular.io import load_modular

    loaded = load_modular(run_dir)
    n = loaded.config.n_instances
    if not 0 <= instance < n:
        raise UsageError(f"instance {instance} out of range: {run_dir} has instances 0..{n - 1}")
    w = loaded.weights.select(instance)
    truth = pure_frequencies(w, loaded.config)
    l1 = code_l1(w, loaded.config)
    lines = [
        f"key frequencies {truth.keys}; Fourier fit explains {truth.explained:.4f} of x",
        "L1 of codes per pair: " + ", ".join(f"{name} {value:.4f}" for name, value in l1.items()),
    ]
    for name, decoder in [("unmixing", unmixing_dictionary(w, loaded.config)), *decoders]:
        if decoder.shape[1] != truth.directions.shape[1]:
            raise UsageError(f"{name}: d_in {decoder.shape[1]} does not match x (2d)")
        purity = latent_frequency_purity(decoder.detach(), w, truth.keys)
        scores = score(truth.directions.float(), decoder.detach().float())
        lines.append(
            f"{name}: latent purity mean {float(purity.mean()):.4f}, "
            f">0.9 {float((purity > 0.9).double().mean()):.3f}; mcc {scores['all/mcc']:.4f}, "
            f"recovered@0.99 {scores['all/recovered_0.99']:.3f}"
        )
    return lines
