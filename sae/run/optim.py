"""Adam(W) for parameters with a leading instances dimension: a learning rate and a
gradient-norm clip per instance, and a way to reset the state of chosen rows (resampled
latents). Both trainings step it: the SAEs with per-instance rates and clips, the toy models as
plain AdamW (one rate), where it costs half of torch's AdamW per step (no profiler record, step
counters or per-call grouping around the same fused kernel)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from sae.run.errors import UsageError


class InstanceAdam(torch.optim.Optimizer):
    """Adam where ``instance_lr[k]`` scales every update of instance k. ``group['lr']`` is the
    schedule's multiplier (a LambdaLR drives it), so the effective rate is lr · instance_lr[k].

    With ``max_grad_norm``, each instance's gradient (over all its parameters) is clipped to
    that norm before the update, as if the instance were trained alone. ``weight_decay`` is
    AdamW's decoupled decay (each weight shrinks by its instance's effective rate times it);
    with one rate the updates equal ``torch.optim.AdamW(fused=True)``'s bit for bit.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        instance_lr: Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": 1.0, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        # Kept on the CPU in the dtype given (float64: the exact Python rates; the fused kernel
        # takes each rate as a Python float, so nothing is copied to the device per step).
        self.instance_lr = _rates_tensor(instance_lr.detach().cpu().clone())
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        params = [p for live in groups for p in live]
        if not params:
            return loss
        if self.max_grad_norm is not None:
            self._clip(params)
        for group, live in zip(self.param_groups, groups):
            fused, steps = [], set()
            for p in live:
                state = self.state[p]
                if not state:
                    state["step"] = 0  # a Python int: no device sync for bias correction
                    # normal tensors even when training steps in inference mode: resampling
                    # and checkpoint loading update them outside it
                    with torch.inference_mode(False):
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                if _fusable(p):
                    fused.append(p)
                    steps.add(state["step"])
                else:
                    self._update(group, p)
            for t in steps:  # one step count in practice (parameters start together)
                same = (
                    fused if len(steps) == 1 else [p for p in fused if self.state[p]["step"] == t]
                )
                self._fused_update(group, same, t)
        return loss

    # torch wraps an optimizer class's step, once, in a profiler record plus step-hook calls
    # unless it is marked hooked; the record alone costs ~1% of a small SAE step. InstanceAdam
    # runs no optimizer step hooks (nothing registers any: the engine steps the raw optimizer).
    step.hooked = True  # type: ignore[attr-defined]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's, without its per-call profiler record (a cost the size of a small step's
        elementwise pass)."""
        if not set_to_none:
            super().zero_grad(set_to_none)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _clip(self, params: list[Tensor]) -> None:
        """Scale each instance's gradient (over all its parameters) to at most
        ``max_grad_norm``, as ``torch.nn.utils.clip_grad_norm_`` would for that instance alone."""
        grads = [p.grad for p in params]
        if self.instance_lr.shape[0] == 1:  # one instance: torch's foreach norm and multiply
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            scale = (self.max_grad_norm / (total + 1e-6)).clamp_(max=1.0)
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
            return
        sq = sum(torch.linalg.vector_norm(g.flatten(1), dim=1).square_() for g in grads)
        scale = (self.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))

    def _fused_update(self, group: dict, params: list[Tensor], t: int) -> None:
        """torch's fused Adam(W) kernel (one pass over all parameters, what
        ``torch.optim.Adam(fused=True)`` and ``AdamW(fused=True)`` call), once per distinct
        instance rate: on whole tensors when every instance has the same rate (the usual case),
        else on the rows of the instances that share one. Per element the same arithmetic
        either way."""
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        rates = self._rates()
        # float32 whatever the default dtype (64-true makes it float64): the CUDA kernel reads
        # the step as a float32 and, given a float64, would see 0 (as torch's own Adam does).
        step = torch.full((), float(t), dtype=torch.float32, device=params[0].device)
        for rate, ks in rates.items():
            if len(rates) == 1:
                rows = [params, [p.grad for p in params]]
                moments = [[s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]]
            else:
                rows = [[p[k] for p in params for k in ks], [p.grad[k] for p in params for k in ks]]
                moments = [
                    [s[key][k] for s in states for k in ks] for key in ("exp_avg", "exp_avg_sq")
                ]
            kernel = torch._fused_adamw_ if group["weight_decay"] else torch._fused_adam_
            kernel(
                *rows,
                *moments,
                [],
                [step] * len(rows[0]),
                lr=group["lr"] * rate,
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                amsgrad=False,
                maximize=False,
            )

    def _rates(self) -> dict[float, list[int]]:
        """The instances of each distinct rate in ``instance_lr``, read from the tensor once
        (it changes only when replaced, by ``load_state_dict``)."""
        cached = getattr(self, "_rates_of", None)
        if cached is None or cached[0] is not self.instance_lr:
            rates: dict[float, list[int]] = {}
            for k, rate in enumerate(self.instance_lr.tolist()):
                rates.setdefault(rate, []).append(k)
            self._rates_of = (self.instance_lr, rates)
        return self._rates_of[1]

    def _rates_on(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``instance_lr`` on ``device`` in ``dtype``, copied once (until it is replaced). The
        dtype is converted on the CPU first: a float64 tensor cannot go to every device (MPS)."""
        cached = getattr(self, "_rates_on_of", None)
        if cached is None or cached[0] is not self.instance_lr:
            cached = self._rates_on_of = (self.instance_lr, {})
        key = (device, dtype)
        if key not in cached[1]:
            cached[1][key] = self.instance_lr.to(dtype).to(device)
        return cached[1][key]

    def _update(self, group: dict, p: Tensor) -> None:
        """Adam for one parameter, op by op (dtypes or devices the fused kernel lacks)."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        rates = self._rates_on(p.device, p.dtype).view(-1, *([1] * (p.dim() - 1)))
        if group["weight_decay"]:  # decoupled, before the moments (as torch's AdamW)
            p.mul_(1 - rates * group["lr"] * group["weight_decay"])
        m.lerp_(p.grad, 1 - beta1)
        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        step_size = group["lr"] / (1 - beta1**t)
        denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(m * (rates * step_size), denom, value=-1.0)

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

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # checkpoints from before weight_decay existed
            group.setdefault("weight_decay", 0.0)

    def load_state_dict(self, state_dict):  # type: ignore[override]
        state_dict = dict(state_dict)
        if "instance_lr" not in state_dict:
            # torch's own optimizers keep the whole rate in group["lr"], this one the
            # schedule's multiplier only: loading theirs would square the rate, silently.
            raise UsageError(
                "the checkpoint's optimizer state was not written by InstanceAdam (toy runs of "
                "earlier versions of the toolkit trained with torch's AdamW); it cannot resume "
                "here: train again with --overwrite, or into a new --out"
            )
        self.instance_lr = _rates_tensor(state_dict.pop("instance_lr").cpu())
        super().load_state_dict(state_dict)


def _rates_tensor(rates: Tensor) -> Tensor:
    return rates if rates.is_floating_point() else rates.float()


def _fusable(p: Tensor) -> bool:
    """Whether torch's fused Adam kernel takes this parameter (and its gradient) as it is."""
    return (
        p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and p.grad is not None
        and p.grad.dtype == p.dtype
        and p.is_contiguous()
        and p.grad.is_contiguous()
    )
