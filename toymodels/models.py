"""The toy models as plain ``nn.Module``s with a leading instances dimension.

Many independent models share one weight tensor: ``W[k]`` belongs to instance k alone and the
loss is summed over instances, so gradients never mix and a whole sweep is one batched run.
Row i of ``W[k]`` ([n_features, n_hidden]) is feature i's direction in the hidden space, the
paper's column W_i (h = Wx in the paper is ``x @ W`` here).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from toymodels.config import ToyKind


class ToyOutput(NamedTuple):
    hidden: Tensor
    """[batch, instances, n_hidden]: what an SAE sees."""
    output: Tensor
    """[batch, instances, n_features]: the reconstruction x' (or y' for abs)."""


def xavier_normal(
    shape: tuple[int, ...], fan_in: int, fan_out: int, generator: torch.Generator
) -> Tensor:
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return torch.randn(shape, generator=generator) * std


class TiedToyModel(nn.Module):
    """linear, relu_output and relu_hidden: one tied W [instances, n_features, n_hidden].

    Every model answers for itself what the rest of the toolkit needs to know about it:
    ``signed_inputs`` (features drawn from [−1, 1] instead of [0, 1]), ``privileged_basis`` (a
    ReLU hidden layer, so neuron plots apply), ``ground_truth`` (the directions an SAE should
    find), ``true_codes`` and ``ground_truth_probability`` (each direction's codes and how
    often it is active)."""

    signed_inputs = False

    def __init__(
        self, kind: ToyKind, n_instances: int, n_features: int, n_hidden: int, seed: int = 0
    ) -> None:
        super().__init__()
        if kind not in ("linear", "relu_output", "relu_hidden"):
            raise ValueError(f"TiedToyModel cannot be {kind!r}")
        g = torch.Generator().manual_seed(seed)
        self.kind = kind
        self.privileged_basis = kind == "relu_hidden"
        self.W = nn.Parameter(
            xavier_normal((n_instances, n_features, n_hidden), n_features, n_hidden, g)
        )
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))

    def forward(self, x: Tensor) -> ToyOutput:
        # Products in [instances, dims, batch] layout: the batch is the long side of each
        # product, which BLAS runs ~4x faster than the einsum layout with n_hidden as the
        # output width. Inputs drawn by FeatureDistribution are stored so (instance_major):
        # the permute is then a view and .contiguous() does nothing.
        hT = torch.matmul(self.W.transpose(1, 2), x.permute(1, 2, 0).contiguous())
        if self.kind == "relu_hidden":
            hT = torch.relu(hT)
        out = torch.matmul(self.W, hT).permute(2, 0, 1) + self.b
        if self.kind != "linear":
            out = torch.relu(out)
        return ToyOutput(hT.permute(2, 0, 1), out)

    def target(self, x: Tensor) -> Tensor:
        return x

    @property
    def feature_weights(self) -> Tensor:
        """[instances, n_features, n_hidden]: the weights the diagnostics read."""
        return self.W

    def ground_truth(self) -> tuple[Tensor, list[str]]:
        """Feature directions in activation space, [instances, n_ground, n_hidden], and names.

        For the tied models h = Wx, so feature i lives along W_i. For relu_hidden the SAE sees
        h = ReLU(Wx); a lone feature x_i > 0 gives h = x_i · ReLU(W_i), so that is its direction.
        """
        W = self.W.detach()
        if self.kind == "relu_hidden":
            W = torch.relu(W)
        return W, [str(i) for i in range(W.shape[1])]

    def true_codes(self, x: Tensor) -> Tensor:
        """[batch, instances, n_ground]: how strongly each ground-truth direction is present."""
        return x

    def ground_truth_probability(self, p: Tensor) -> Tensor:
        """How often each ground-truth direction is active, from the features' probabilities."""
        return p

    @torch.no_grad()
    def lone_feature_response(self) -> Tensor:
        """[instances, n_features]: how far x_i = 1 alone moves output i from the output at
        x = 0 (the "represented" rule reads this)."""
        n = self.W.shape[1]
        eye = torch.eye(n, device=self.W.device, dtype=self.W.dtype)
        x = torch.cat([eye, eye.new_zeros(1, n)])[:, None].expand(-1, self.W.shape[0], -1)
        out = self(x.contiguous()).output  # [n + 1, instances, n]
        return torch.diagonal(out[:n], dim1=0, dim2=2) - out[n]


class AbsValueModel(nn.Module):
    """Computes |x|: h = ReLU(W₁x), y' = ReLU(W₂h + b). W1 [inst, n_features, n_hidden],
    W2 [inst, n_hidden, n_features]."""

    kind = "abs"
    signed_inputs = True
    privileged_basis = True

    def __init__(self, n_instances: int, n_features: int, n_hidden: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W1 = nn.Parameter(
            xavier_normal((n_instances, n_features, n_hidden), n_features, n_hidden, g)
        )
        self.W2 = nn.Parameter(
            xavier_normal((n_instances, n_hidden, n_features), n_hidden, n_features, g)
        )
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))

    def forward(self, x: Tensor) -> ToyOutput:
        xT = x.permute(1, 2, 0).contiguous()  # see TiedToyModel.forward
        hT = torch.relu(torch.matmul(self.W1.transpose(1, 2), xT))
        out = torch.relu(torch.matmul(self.W2.transpose(1, 2), hT).permute(2, 0, 1) + self.b)
        return ToyOutput(hT.permute(2, 0, 1), out)

    def target(self, x: Tensor) -> Tensor:
        return x.abs()

    @property
    def feature_weights(self) -> Tensor:
        return self.W1

    def ground_truth(self) -> tuple[Tensor, list[str]]:
        """Each feature has two half-directions in the ReLU hidden layer: x_i > 0 gives
        x_i · ReLU(W₁_i) and x_i < 0 gives |x_i| · ReLU(−W₁_i); named 'i+' and 'i-'."""
        W = self.W1.detach()
        n = W.shape[1]
        directions = torch.cat([torch.relu(W), torch.relu(-W)], dim=1)
        names = [f"{i}+" for i in range(n)] + [f"{i}-" for i in range(n)]
        return directions, names

    def true_codes(self, x: Tensor) -> Tensor:
        """'i+' carries max(x_i, 0) and 'i-' carries max(−x_i, 0)."""
        return torch.cat([x.clamp_min(0), (-x).clamp_min(0)], dim=-1)

    def ground_truth_probability(self, p: Tensor) -> Tensor:
        """x_i is symmetric about 0: each half-direction is active half as often."""
        return torch.cat([p / 2, p / 2], dim=-1)

    @torch.no_grad()
    def lone_feature_response(self) -> Tensor:
        """[instances, 2 n_features]: for 'i+' how far x_i = +1 alone moves output i (the
        target |x_i| = 1) from the output at x = 0; for 'i-' the same with x_i = −1."""
        n = self.W1.shape[1]
        eye = torch.eye(n, device=self.W1.device, dtype=self.W1.dtype)
        x = torch.cat([eye, -eye, eye.new_zeros(1, n)])[:, None].expand(-1, self.W1.shape[0], -1)
        out = self(x.contiguous()).output  # [2n + 1, instances, n]
        plus = torch.diagonal(out[:n], dim1=0, dim2=2)
        minus = torch.diagonal(out[n : 2 * n], dim1=0, dim2=2)
        return torch.cat([plus, minus], dim=-1) - out[2 * n].repeat(1, 2)


ToyModel = TiedToyModel | AbsValueModel


def build_model(
    kind: ToyKind, n_instances: int, n_features: int, n_hidden: int, seed: int = 0
) -> ToyModel:
    if kind == "abs":
        return AbsValueModel(n_instances, n_features, n_hidden, seed)
    return TiedToyModel(kind, n_instances, n_features, n_hidden, seed)


def select_instances(model: ToyModel, index: Tensor | slice) -> ToyModel:
    """A new model holding only the chosen instances' weights."""
    state = {k: v[index] for k, v in model.state_dict().items()}
    n_instances, n_features, n_hidden = model.feature_weights[index].shape
    selected = build_model(model.kind, n_instances, n_features, n_hidden)
    selected.load_state_dict(state)
    return selected
