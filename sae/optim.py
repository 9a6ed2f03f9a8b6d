"""Adam for parameters with a leading instances dimension: a learning rate and a gradient-norm
clip per instance, and a way to reset the state of chosen rows (resampled latents)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class InstanceAdam(torch.optim.Optimizer):
    """Adam where ``instance_lr[k]`` scales every update of instance k. ``group['lr']`` is the
    schedule's multiplier (a LambdaLR drives it), so the effective rate is lr · instance_lr[k].

    With ``max_grad_norm``, each instance's gradient (over all its parameters) is clipped to
    that norm before the update, as if the instance were trained alone.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        instance_lr: Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(params, {"lr": 1.0, "betas": tuple(betas), "eps": eps})
        self.instance_lr = instance_lr.detach().clone().float()
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        if self.instance_lr.device != params[0].device:  # once: no host-to-device copy a step
            self.instance_lr = self.instance_lr.to(params[0].device)
        lr_vec = self.instance_lr
        if self.max_grad_norm is not None:
            sq = sum(p.grad.square().flatten(1).sum(1) for p in params)
            scale = (self.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for p in params:
                p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0  # a Python int: no device sync for bias correction
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                step_size = group["lr"] / (1 - beta1**t)
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                rate = lr_vec.view(-1, *([1] * (p.dim() - 1))) * step_size
                p.addcdiv_(m * rate, denom, value=-1.0)
        return loss

    @torch.no_grad()
    def reset_state(self, param: Tensor, mask: Tensor) -> None:
        """Zero Adam's moments where ``mask`` (broadcastable to ``param``) is True."""
        state = self.state.get(param)
        if not state:
            return
        for key in ("exp_avg", "exp_avg_sq"):
            state[key].masked_fill_(mask, 0.0)

    def state_dict(self):  # type: ignore[override]
        sd = super().state_dict()
        sd["instance_lr"] = self.instance_lr.cpu().clone()
        return sd

    def load_state_dict(self, state_dict):  # type: ignore[override]
        state_dict = dict(state_dict)
        self.instance_lr = state_dict.pop("instance_lr", self.instance_lr).float()
        super().load_state_dict(state_dict)
