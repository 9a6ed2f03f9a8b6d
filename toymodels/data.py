"""The paper's synthetic features, drawn on the model's device inside the training step.

Definitions (Elhage et al. 2022, "Demonstrating Superposition" and "Correlated and
Anticorrelated Features"):

- independent feature i: zero with probability S = 1 − p, else uniform on [0, 1]
  ([−1, 1] when ``signed``, the absolute-value task);
- correlated set: one draw decides whether the whole set is zero (probability S); each member
  that is on has its own uniform magnitude;
- anticorrelated set: the set is zero with probability S, else exactly one member, chosen
  uniformly, is active with a uniform magnitude.

One uniform draw per element does the work of two: with u ~ U[0, 1], "u < p" is the on/off
event and, given it, u / p is again U[0, 1]. An anticorrelated set likewise reads its on/off
event, its member and the magnitude from a single draw.

Samples are stored instance-major (see ``instance_major``): the layout the models' batched
products read without a copy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toymodels.config import ToyDataConfig


def instance_major(x: Tensor) -> Tensor:
    """``x`` [batch, instances, features] with the same shape and values, stored as
    [instances, features, batch] (the batch fastest). The toy models multiply each instance's
    [features, batch] block; torch's CPU ``bmm`` on the batch-major layout falls back to a slow
    strided kernel (36x slower for the basic-results sweep on a 2-core Xeon), and elementwise
    ops mixing the two layouts are 4x slower. A no-op (a view) when ``x`` is already stored so.
    """
    return x.permute(1, 2, 0).contiguous().permute(2, 0, 1)


class FeatureDistribution(nn.Module):
    """Samples x [batch, instances, n_features] (stored instance-major); holds p and importance
    as buffers so they follow the model onto its device."""

    probability: Tensor
    importance: Tensor

    def __init__(
        self,
        probability: Tensor,
        importance: Tensor,
        correlated_sets: int = 0,
        anticorrelated_sets: int = 0,
        set_size: int = 2,
        signed: bool = False,
    ) -> None:
        super().__init__()
        n_instances, n_features = probability.shape
        if importance.shape != probability.shape:
            raise ValueError("importance and probability must both be [instances, features]")
        self.register_buffer("probability", probability.float().clone())
        self.register_buffer("importance", importance.float().clone())
        self.correlated_sets = correlated_sets
        self.anticorrelated_sets = anticorrelated_sets
        self.set_size = set_size
        self.signed = signed
        self.n_instances, self.n_features = n_instances, n_features

    @classmethod
    def from_config(
        cls, config: ToyDataConfig, n_features: int, repeats_each: int = 1, signed: bool = False
    ) -> FeatureDistribution:
        """Instances ordered (probability, importance, relative density, repeat, restart), as
        ``config.instance_settings``; each setting covers ``repeats_each`` instances."""
        settings = config.instance_settings(n_features)
        p = torch.tensor(
            [[s.feature_probability * r for r in s.relative_density] for s in settings],
            dtype=torch.float64,
        ).clamp(max=1.0)
        imp = torch.tensor([s.importance for s in settings], dtype=torch.float64)
        return cls(
            p.repeat_interleave(repeats_each, dim=0).float(),
            imp.repeat_interleave(repeats_each, dim=0).float(),
            config.correlated_sets,
            config.anticorrelated_sets,
            config.set_size,
            signed,
        )

    def marginal_probability(self) -> Tensor:
        """[instances, n_features]: how often each feature is nonzero. An anticorrelated set is
        on with probability p and then picks one of its k members, so each member is on with
        p / k; independent and correlated features are on with p."""
        marginal = self.probability.clone()
        start = self.correlated_sets * self.set_size
        stop = start + self.anticorrelated_sets * self.set_size
        marginal[:, start:stop] /= self.set_size
        return marginal

    def select(self, index: Tensor | slice) -> FeatureDistribution:
        """The distribution of the chosen instances only (in this one's dtype)."""
        return FeatureDistribution(
            self.probability[index],
            self.importance[index],
            self.correlated_sets,
            self.anticorrelated_sets,
            self.set_size,
            self.signed,
        ).to(self.probability.dtype)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw x [batch_size, instances, n_features] on the buffers' device, stored
        instance-major (the numbers do not depend on the layout)."""
        return self.features(self.uniforms(batch_size, generator))

    def uniforms(self, batch_size: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """The random numbers of ``batch_size`` inputs, in the generator's order: u [batch,
        instances, features], then the correlated sets' gates [batch, instances, sets], then
        the anticorrelated sets' draws [batch, instances, sets] (when the sets exist); each
        stored instance-major (the numbers do not depend on the layout).

        The part of ``sample`` that needs the generator: a thread drawing batches ahead makes
        only this, the draw and the copy into the products' layout. Each torch call on another
        thread costs the training thread a GIL handoff, which on a virtual machine's idle core
        can cost more than the few cheap passes of ``features``, so those stay in the training
        step; the copy, a transpose of the whole batch, is worth moving (basic-results sweep, 2
        Xeon cores: ~3% more steps/s)."""
        shape = (batch_size, self.n_instances)
        device, dtype = self.probability.device, self.probability.dtype
        sizes = [self.n_features, self.correlated_sets, self.anticorrelated_sets]
        return [
            instance_major(torch.rand((*shape, n), device=device, dtype=dtype, generator=generator))
            for i, n in enumerate(sizes)
            if i == 0 or n
        ]

    def features(self, uniforms: list[Tensor]) -> Tensor:
        """x [batch, instances, n_features] (stored instance-major) from ``uniforms``' draws."""
        p = self.probability
        u = instance_major(uniforms[0])  # (a view: drawn so) every result below keeps it
        # magnitude where u < p, else 0: ReLU's backward kernel keeps it where p − u > 0, in
        # place. The numbers of where(u < p, magnitude, 0) in two passes over the batch (the
        # sign-and-clamp mask took four); the where itself, or a multiply by the bool mask, is
        # slower still on the CPU (their comparison and mixed-dtype kernels).
        x = self._magnitude(u / p)
        torch.ops.aten.threshold_backward.grad_input(x, p - u, 0, grad_input=x)
        k = self.set_size
        n_corr = self.correlated_sets * k
        rest = iter(uniforms[1:])
        if self.correlated_sets:
            gate = next(rest)
            p_set = p[:, :n_corr:k]
            on = (gate < p_set).repeat_interleave(k, dim=-1)
            x[..., :n_corr] = torch.where(on, self._magnitude(u[..., :n_corr]), 0.0)
        if self.anticorrelated_sets:
            a = self.anticorrelated_sets
            g = next(rest)
            p_set = p[:, n_corr : n_corr + a * k : k]
            scaled = (g / p_set) * k  # in [0, k) exactly when the set is on
            member = scaled.floor().clamp_(max=k - 1)
            magnitude = self._magnitude(scaled - member)
            slots = torch.arange(k, device=p.device, dtype=member.dtype)
            chosen = (member[..., None] == slots) & (g < p_set)[..., None]
            block = torch.where(chosen, magnitude[..., None], 0.0)
            x[..., n_corr : n_corr + a * k] = block.flatten(-2)
        return x

    def _magnitude(self, unit: Tensor) -> Tensor:
        return unit * 2.0 - 1.0 if self.signed else unit
