"""The bilinear modular-addition model, batched over instances, and its losses.

x = [E_a[a]; E_b[b]] ∈ R^{2d}, h = (L x) ⊙ (R x) ∈ R^m, logits = U h ∈ R^p: the "embedded MLP" of
Chughtai et al. (2023) with its ReLU layer replaced by a bilinear layer. Every weight carries a
leading instances dimension; instances never interact (the loss is summed over them).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_NAMES = ("E_a", "E_b", "L", "R", "U")


class BilinearWeights(NamedTuple):
    """One set of weights as plain tensors (analysis works on these, batched over instances)."""

    E_a: Tensor
    """[instances, p, d]"""
    E_b: Tensor
    """[instances, p, d]"""
    L: Tensor
    """[instances, m, 2d]"""
    R: Tensor
    """[instances, m, 2d]"""
    U: Tensor
    """[instances, p, m]"""

    def detach(self) -> BilinearWeights:
        return BilinearWeights(*(w.detach() for w in self))

    def select(self, k: int) -> BilinearWeights:
        """Instance ``k`` alone (keeps the instances dimension, of size 1)."""
        return BilinearWeights(*(w[k : k + 1] for w in self))


class BilinearModAdd(nn.Module):
    def __init__(self, n_instances: int, p: int, d: int, m: int, layernorm: bool = False) -> None:
        super().__init__()
        self.p, self.d, self.m, self.layernorm = p, d, m, layernorm
        self.E_a = nn.Parameter(torch.empty(n_instances, p, d))
        self.E_b = nn.Parameter(torch.empty(n_instances, p, d))
        self.L = nn.Parameter(torch.empty(n_instances, m, 2 * d))
        self.R = nn.Parameter(torch.empty(n_instances, m, 2 * d))
        self.U = nn.Parameter(torch.empty(n_instances, p, m))

    @property
    def n_instances(self) -> int:
        return self.E_a.shape[0]

    @torch.no_grad()
    def initialize(self, seeds: list[int]) -> None:
        """Each instance from its own seed: normal entries with variance 1 / fan-in (so x, Lx
        and the logits start at unit scale)."""
        fan_in = {"E_a": 1, "E_b": 1, "L": 2 * self.d, "R": 2 * self.d, "U": self.m}
        for k, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(seed)
            for name in WEIGHT_NAMES:
                w = getattr(self, name)
                w[k] = torch.randn(w.shape[1:], generator=g) / math.sqrt(fan_in[name])

    def weights(self) -> BilinearWeights:
        return BilinearWeights(self.E_a, self.E_b, self.L, self.R, self.U)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits [instances, N, p] of the pairs (a[i], b[i])."""
        return logits(self.weights(), a, b, self.layernorm)


def logits(w: BilinearWeights, a: Tensor, b: Tensor, layernorm: bool = False) -> Tensor:
    """The model's function on plain weights: logits [instances, N, p]."""
    x = torch.cat([w.E_a[:, a], w.E_b[:, b]], dim=-1)  # [I, N, 2d]
    if layernorm:
        x = F.layer_norm(x, x.shape[-1:])
    h = torch.bmm(x, w.L.transpose(1, 2)) * torch.bmm(x, w.R.transpose(1, 2))  # [I, N, m]
    return torch.bmm(h, w.U.transpose(1, 2))


def all_pairs(p: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b, (a + b) mod p) over all p² pairs, a-major."""
    a = torch.arange(p, device=device).repeat_interleave(p)
    b = torch.arange(p, device=device).repeat(p)
    return a, b, (a + b) % p


def per_instance_loss(out: Tensor, target: Tensor, kind: str = "ce") -> Tensor:
    """Loss per instance [instances]: mean over pairs of cross-entropy ("ce") or of the squared
    error to the one-hot target averaged over classes ("mse")."""
    n_inst, n, p = out.shape
    if kind == "ce":
        flat = F.cross_entropy(out.reshape(-1, p), target.repeat(n_inst), reduction="none")
        return flat.view(n_inst, n).mean(dim=1)
    onehot = F.one_hot(target, p).to(out.dtype)
    return (out - onehot).square().mean(dim=(1, 2))


def accuracy(out: Tensor, target: Tensor) -> Tensor:
    """Share of pairs whose largest logit is the right answer, per instance."""
    return (out.argmax(dim=-1) == target).float().mean(dim=1)
