"""The paper's analytic adversarial attack ("Superposition and adversarial examples").

For a tied model the end-to-end map is WᵀW (``W Wᵀ`` in this package's layout, row i = feature
i's direction). The optimal L2 attack on feature i's output is along row i of that Gram matrix:
δ_i = λ (WᵀW)_i / ‖(WᵀW)_i‖. Of the n attacks, the one that raises the loss most is the attack
(the paper: "taking the one of these attacks which most harms model performance"), with λ =
0.1 × the mean input norm. The mean is over inputs with at least one active feature: at high
sparsity almost every input is all-zero, and counting those would shrink λ below the model's
(negative) biases, which then mask every attack. The target stays the clean input.

Two numbers per instance:

- ``vulnerability`` = attacked loss / clean loss − 1, the relative harm of the worst attack;
- ``amplification`` = max_i ‖(WᵀW)(WᵀW)_i‖ / ‖(WᵀW)_i‖: how far a unit attack along
  (WᵀW)_i moves the pre-activation outputs. Without superposition (WᵀW = a projection onto
  orthogonal features) it is 1; for a tight frame of n features in m dimensions it is n/m, the
  features per dimension 1/D* that the paper finds vulnerability tracking.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from toymodels.loss import weighted_loss

ATTACK_FRACTION = 0.1
"""λ as a fraction of the mean L2 norm of the inputs (the paper's setting)."""


class Vulnerability(NamedTuple):
    attack_norm: Tensor
    """[instances] λ."""
    clean_loss: Tensor
    """[instances] the loss on the clean inputs."""
    attacked_loss: Tensor
    """[instances] the loss under the worst of the n analytic attacks."""
    attacked_feature: Tensor
    """[instances] which feature's attack that was."""
    vulnerability: Tensor
    """[instances] attacked / clean − 1 (inf when the clean loss is 0; metrics.json: null)."""
    amplification: Tensor
    """[instances] max_i ‖(WᵀW)(WᵀW)_i‖ / ‖(WᵀW)_i‖."""


def analytic_attacks(W: Tensor, attack_norm: Tensor) -> Tensor:
    """[instances, n_attacks = n_features, n_features]: δ_i = λ (WᵀW)_i / ‖(WᵀW)_i‖ per
    instance (a zero row of WᵀW gives a zero attack)."""
    gram = W @ W.transpose(-1, -2)
    unit = gram / gram.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit * attack_norm[:, None, None]


@torch.no_grad()
def adversarial_vulnerability(
    model: Any,
    importance: Tensor,
    x: Tensor,
    attack_norm: Tensor | None = None,
) -> Vulnerability:
    """Attack every instance of a tied ``model`` on inputs ``x`` [batch, instances, n].
    ``attack_norm`` [instances]: λ (default ``ATTACK_FRACTION`` × the mean ‖x‖ over the inputs
    that are not all-zero)."""
    if model.kind == "abs":
        raise ValueError("the analytic attack is defined for tied models (WᵀW), not abs")
    if attack_norm is None:
        norms = x.norm(dim=-1)
        active = (norms > 0).sum(dim=0).clamp_min(1)
        attack_norm = ATTACK_FRACTION * norms.sum(dim=0) / active
    attack_norm = attack_norm.to(x.dtype)
    target = model.target(x)
    clean = weighted_loss(model(x).output, target, importance)
    attacks = analytic_attacks(model.feature_weights.detach(), attack_norm)
    attacked = torch.stack(
        [
            weighted_loss(model(x + attacks[:, i]).output, target, importance)
            for i in range(attacks.shape[1])
        ]
    )  # [n_attacks, instances]
    worst, feature = attacked.max(dim=0)
    W = model.feature_weights.detach()
    gram = W @ W.transpose(-1, -2)
    moved = (gram @ gram).norm(dim=-1) / gram.norm(dim=-1).clamp_min(1e-12)
    return Vulnerability(attack_norm, clean, worst, feature, worst / clean - 1, moved.amax(-1))
