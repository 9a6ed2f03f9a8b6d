"""Ground truth for dictionaries: the concatenated inputs x = [E_a[a]; E_b[b]] of the (a, b)
pairs as activations, and the pure frequency directions as ground truth.

For each embedding and key frequency k, the least-squares fit E ≈ mean + cos(ω_k a)·u_k +
sin(ω_k a)·v_k gives two directions (u_k, v_k) in that embedding's half of x. Each is split into
± halves as for the ``abs`` toy model: ``a:cos14+`` is u_k/‖u_k‖ with code ReLU(cos(ω_k a))·‖u_k‖
and ``a:cos14-`` is −u_k/‖u_k‖ with code ReLU(−cos(ω_k a))·‖u_k‖, so x − mean = Σ codes ·
directions (up to the fit's residual) with non-negative codes, as an SAE writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sae.activations import write_activation_file
from sae.run.config_io import config_to_dict
from sae.run.errors import UsageError
from toymodels.modular.config import ModularConfig
from toymodels.modular.fourier import fit_directions, fourier_power, key_frequencies
from toymodels.modular.io import load_modular
from toymodels.modular.model import BilinearWeights, all_pairs
from toymodels.modular.unmixing import bilinear_reads, find_unmixing


class PureFrequencies(NamedTuple):
    directions: Tensor
    """[n_features, 2d] unit ground-truth directions (± halves)."""
    names: list[str]
    codes: Tensor
    """[p², n_features] non-negative true codes of every pair (a-major)."""
    keys: list[int]
    mean: Tensor
    """[2d] the constant part of x (not a feature)."""
    explained: float
    """Share of the centred x's variance that the key-frequency fit explains."""


def pure_frequencies(w: BilinearWeights, config: ModularConfig) -> PureFrequencies:
    """The ground truth of one instance (``w`` holds it alone)."""
    p, d = config.model.p, config.model.d
    a, b, _ = all_pairs(p)
    power = torch.cat([fourier_power(w.E_a[0]), fourier_power(w.E_b[0])], dim=1)
    an = config.analysis
    keys = key_frequencies(power, an.key_frequencies, an.key_power_share, cap=d)
    directions, names, codes, means, explained = [], [], [], [], []
    for side, E, index, offset in (("a", w.E_a[0], a, 0), ("b", w.E_b[0], b, d)):
        fit = fit_directions(E, keys)
        means.append(fit.mean)
        variance = float((E.double() - fit.mean).square().sum())
        explained.append((fit.explained * variance, variance))
        for i, name in enumerate(fit.names):
            g = fit.directions[i]
            norm = g.norm().clamp_min(1e-30)
            wave = fit.waves[index, i] * norm
            for sign, suffix in ((1.0, "+"), (-1.0, "-")):
                full = torch.zeros(2 * d, dtype=torch.float64)
                full[offset : offset + d] = sign * g / norm
                directions.append(full)
                names.append(f"{side}:{name}{suffix}")
                codes.append((sign * wave).clamp_min(0))
    return PureFrequencies(
        torch.stack(directions),
        names,
        torch.stack(codes, dim=1),
        keys,
        torch.cat(means),
        sum(e for e, _ in explained) / max(sum(v for _, v in explained), 1e-30),
    )


def pair_inputs(w: BilinearWeights, p: int) -> Tensor:
    """x = [E_a[a]; E_b[b]] of every pair, [p², 2d] (a-major; before any LayerNorm)."""
    a, b, _ = all_pairs(p)
    return torch.cat([w.E_a[0, a], w.E_b[0, b]], dim=-1)


def code_l1(w: BilinearWeights, config: ModularConfig) -> dict[str, float]:
    """Mean L1 norm per pair of x's codes in three bases: the pure frequency directions (the
    ground-truth codes), the learned embedding columns (centred x) and the unmixed columns
    (centred x times blockdiag(Q_a, Q_b); Q orthogonal, so the same norm of x)."""
    pure = pure_frequencies(w, config)
    x = pair_inputs(w, config.model.p).double()
    centred = x - x.mean(dim=0)
    Qa = find_unmixing(w.E_a[0], pure.keys, bilinear_reads(w, "a")).Q
    Qb = find_unmixing(w.E_b[0], pure.keys, bilinear_reads(w, "b")).Q
    unmixed = centred @ torch.block_diag(Qa, Qb)
    return {
        "pure_basis": float(pure.codes.sum(1).mean()),
        "learned_basis": float(centred.abs().sum(1).mean()),
        "unmixed_basis": float(unmixed.abs().sum(1).mean()),
    }


def unmixing_dictionary(w: BilinearWeights, config: ModularConfig) -> Tensor:
    """The dictionary the unmixing offers: ± each column of blockdiag(Q_a, Q_b) (unit rows,
    [4d, 2d]), to score against the ground truth like an SAE's decoder."""
    power = torch.cat([fourier_power(w.E_a[0]), fourier_power(w.E_b[0])], dim=1)
    an = config.analysis
    keys = key_frequencies(power, an.key_frequencies, an.key_power_share, cap=config.model.d)
    Qa = find_unmixing(w.E_a[0], keys, bilinear_reads(w, "a")).Q
    Qb = find_unmixing(w.E_b[0], keys, bilinear_reads(w, "b")).Q
    columns = torch.block_diag(Qa, Qb).T
    return torch.cat([columns, -columns])


def latent_frequency_purity(decoder: Tensor, w: BilinearWeights, keys: list[int]) -> Tensor:
    """Per latent (decoder rows [n_latents, 2d]): the largest share of the power of its signal
    over the inputs (E_a · its a half, and E_b · its b half, summed) in one key frequency.
    1: the latent reads a single frequency; 1/K for an even mix of K."""
    d = w.E_a.shape[-1]
    dec = decoder.double()
    signal_a = w.E_a[0].double() @ dec[:, :d].T  # [p, n_latents]
    signal_b = w.E_b[0].double() @ dec[:, d:].T
    power = fourier_power(signal_a) + fourier_power(signal_b)  # [n_freq, n_latents]
    idx = torch.tensor([k - 1 for k in keys])
    return (power[idx] / power.sum(0, keepdim=True).clamp_min(1e-30)).max(dim=0).values


def export_modular(
    run_dir: str | Path,
    instance: int,
    out: str | Path,
    samples: int | None = None,
    seed: int = 0,
    feature_acts: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write the pairs' inputs of ``instance`` with the pure-frequency ground truth to ``out``.

    Rows are the p² pairs in a seeded random order (scoring holds out the last rows);
    ``samples`` below p² keeps that many. More than p² is refused: repeated rows would put
    training pairs into the held-out tail (SAE training passes over the file as often as its
    steps need)."""
    loaded = load_modular(run_dir)
    config = loaded.config
    n = config.n_instances
    if not 0 <= instance < n:
        raise UsageError(f"instance {instance} out of range: {run_dir} has instances 0..{n - 1}")
    p = config.model.p
    samples = p * p if samples is None else samples
    if not 1 <= samples <= p * p:
        raise UsageError(
            f"--samples must lie in 1..{p * p} (the p² = {p * p} distinct pairs; more would repeat "
            f"rows into the held-out tail), got {samples}"
        )
    if Path(out).exists() and not overwrite:
        raise UsageError(f"{out} already exists; use --overwrite to replace it")
    w = loaded.weights.select(instance)
    truth = pure_frequencies(w, config)
    x = pair_inputs(w, p)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(p * p, generator=g)[:samples]
    info: dict[str, Any] = {
        "source": "modular-addition",
        "run_dir": str(run_dir),
        "model_kind": "modular_addition",
        "instance": instance,
        "seed": seed,
        "samples": samples,
        "key_frequencies": truth.keys,
        "fourier_fit_explained": truth.explained,
        "feature_names": truth.names,
        "config": config_to_dict(config),
    }
    write_activation_file(
        out,
        x[order],
        ground_truth=truth.directions.float(),
        feature_probability=(truth.codes > 0).double().mean(0).float(),
        represented=torch.ones(len(truth.names), dtype=torch.uint8),
        feature_acts=truth.codes[order].float() if feature_acts else None,
        info=info,
    )
    return Path(out)
