"""InstanceAdam, the optimizer both trainings step: against torch's Adam and AdamW (per instance,
with clipping, with decoupled weight decay, bit for bit where they share the fused kernel), its
checkpoint state, and the costs torch would add around it."""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES

from sae.run.errors import UsageError
from sae.run.optim import InstanceAdam
from sae.run.schedules import lr_lambda


@pytest.mark.parametrize("device", DEVICES)
def test_instance_adam_equals_torch_adam_per_instance_over_many_steps(device) -> None:
    """InstanceAdam (fused kernel, per-rate groups, per-instance clip) against torch's Adam and
    clip_grad_norm_ on each instance alone, 30 steps in float64; the op-by-op path (taken for a
    parameter the fused kernel does not take as it is) gives the same numbers."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 5), (3, 5), (3, 4)]
    start = [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in shapes]
    grads = [
        [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in shapes]
        for _ in range(30)
    ]
    rates = torch.tensor([1e-2, 1e-3, 1e-2])
    fused = [torch.nn.Parameter(w.clone()) for w in start]
    # A transposed (non-contiguous) copy of the first parameter forces the op-by-op path.
    plain = [torch.nn.Parameter(start[0].transpose(1, 2).contiguous().transpose(1, 2))]
    plain += [torch.nn.Parameter(w.clone()) for w in start[1:]]
    assert not plain[0].is_contiguous()
    opt_fused = InstanceAdam(fused, rates, max_grad_norm=1.0)
    opt_plain = InstanceAdam(plain, rates, max_grad_norm=1.0)
    alone = [[torch.nn.Parameter(w[k].clone()) for w in start] for k in range(3)]
    torch_opts = [torch.optim.Adam(ps, lr=float(rates[k])) for k, ps in enumerate(alone)]
    for step_grads in grads:
        for params, opt in ((fused, opt_fused), (plain, opt_plain)):
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
            opt.zero_grad()
        for k, (ps, opt) in enumerate(zip(alone, torch_opts)):
            for p, grad in zip(ps, step_grads):
                p.grad = grad[k].clone()
            torch.nn.utils.clip_grad_norm_(ps, 1.0)
            opt.step()
    for i in range(len(shapes)):
        assert not torch.equal(fused[i], start[i])
        torch.testing.assert_close(fused[i].detach(), plain[i].detach(), rtol=1e-12, atol=1e-14)
        for k in range(3):
            torch.testing.assert_close(fused[i][k], alone[k][i], rtol=1e-12, atol=1e-14)


def test_torch_does_not_wrap_instance_adam_step() -> None:
    """InstanceAdam marks its step as hooked so torch does not wrap it in a profiler record
    (sae/run/optim.py); if torch stops reading the mark, this fails and the cost is back."""

    class Plain(torch.optim.Adam):  # what torch does to an optimizer class that is not marked
        pass

    for cls, args in ((InstanceAdam, (torch.tensor([0.1]),)), (Plain, ())):
        cls([torch.nn.Parameter(torch.zeros(1, 2))], *args)
    assert "profile_hook_step" not in InstanceAdam.step.__code__.co_qualname
    assert "profile_hook_step" in Plain.step.__code__.co_qualname


def test_the_fused_step_count_is_float32_under_a_float64_default(monkeypatch) -> None:
    """runtime.precision 64-true makes float64 the default dtype during the step; torch's CUDA
    fused-Adam kernel reads the step count as float32, so a float64 one would read as 0."""
    seen: list[torch.dtype] = []
    fused = torch._fused_adam_

    def spy(*args, **kwargs):
        seen.extend(step.dtype for step in args[5])
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", spy)
    weights = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
    optimizer = InstanceAdam([weights], torch.tensor([1e-2, 1e-3]))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        weights.grad = torch.ones_like(weights)
        optimizer.step()
    finally:
        torch.set_default_dtype(previous)
    assert seen and set(seen) == {torch.float32}
    assert torch.isfinite(weights).all() and not torch.equal(weights, torch.ones_like(weights))


@pytest.mark.parametrize("device", DEVICES)
def test_instance_adam_with_weight_decay_is_torch_adamw_bit_for_bit(device) -> None:
    """One rate (float64: the exact Python number) under a warm-up-then-decay schedule: the
    fused path's weights equal torch.optim.AdamW(fused=True)'s bit for bit; the op-by-op path's
    equal them to float rounding."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 5), (3, 4)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(40)]
    lr, decay = 1e-3, 0.01
    ours = [torch.nn.Parameter(w.clone().to(device)) for w in start]
    plain = [torch.nn.Parameter(start[0].to(device).transpose(1, 2).contiguous().transpose(1, 2))]
    plain += [torch.nn.Parameter(w.clone().to(device)) for w in start[1:]]
    theirs = [torch.nn.Parameter(w.clone().to(device)) for w in start]
    rates = torch.full((3,), lr, dtype=torch.float64)
    optimizers = [
        InstanceAdam(ours, rates, weight_decay=decay),
        InstanceAdam(plain, rates, weight_decay=decay),
        torch.optim.AdamW(theirs, lr=lr, weight_decay=decay, fused=True),
    ]
    schedules = [
        torch.optim.lr_scheduler.LambdaLR(o, lr_lambda("linear", 5, 40)) for o in optimizers
    ]
    for step_grads in grads:
        for params, opt, schedule in zip((ours, plain, theirs), optimizers, schedules):
            for p, grad in zip(params, step_grads):
                p.grad = grad.to(device).clone()
            opt.step()
            opt.zero_grad()
            schedule.step()
    for a, b, c, w in zip(ours, theirs, plain, start):
        assert not torch.equal(a.cpu(), w)
        assert torch.equal(a, b)
        torch.testing.assert_close(c.detach(), b.detach(), rtol=1e-6, atol=1e-8)


def test_weight_decay_follows_each_instance_rate() -> None:
    """Per-instance rates with decay: each instance moves as torch's AdamW at its rate alone."""
    g = torch.Generator().manual_seed(1)
    start = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    grads = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(20)]
    rates = torch.tensor([1e-2, 1e-3], dtype=torch.float64)
    ours = torch.nn.Parameter(start.clone())
    opt = InstanceAdam([ours], rates, weight_decay=0.1)
    alone = [torch.nn.Parameter(start[k].clone()) for k in range(2)]
    theirs = [torch.optim.AdamW([alone[k]], lr=float(rates[k]), weight_decay=0.1) for k in (0, 1)]
    for grad in grads:
        ours.grad = grad.clone()
        opt.step()
        for k in (0, 1):
            alone[k].grad = grad[k].clone()
            theirs[k].step()
    for k in (0, 1):
        torch.testing.assert_close(ours[k], alone[k], rtol=1e-12, atol=1e-14)


def test_a_torch_optimizer_state_is_refused_and_old_states_still_load() -> None:
    """A checkpoint holding torch's AdamW state (toy runs of earlier versions) would square the
    rate if loaded (torch keeps the whole rate in the group, InstanceAdam the schedule's
    multiplier): refused with a clear error. InstanceAdam states from before weight decay
    existed load and step without it."""
    w = torch.nn.Parameter(torch.ones(2, 3))
    theirs = torch.optim.AdamW([w], lr=1e-3)
    w.grad = torch.ones_like(w)
    theirs.step()
    ours = InstanceAdam([torch.nn.Parameter(torch.ones(2, 3))], torch.full((2,), 1e-3))
    with pytest.raises(UsageError, match="not written by InstanceAdam"):
        ours.load_state_dict(theirs.state_dict())
    old = InstanceAdam([w], torch.full((2,), 1e-3, dtype=torch.float64)).state_dict()
    for group in old["param_groups"]:
        del group["weight_decay"]
    v = torch.nn.Parameter(torch.ones(2, 3))
    restored = InstanceAdam([v], torch.full((2,), 1.0))
    restored.load_state_dict(old)
    assert restored.instance_lr.tolist() == [1e-3, 1e-3]
    v.grad = torch.ones_like(v)
    restored.step()
    assert torch.all(v < 1)


def test_toy_training_steps_adamw_as_torch_does() -> None:
    """The toy module's optimizer (the paper's AdamW, through InstanceAdam) trains the
    basic-results sweep to the weights torch.optim.AdamW(fused=True) gives, bit for bit."""
    from pathlib import Path

    from sae.run.config_io import load_config
    from toymodels.config import ToyConfig
    from toymodels.lightning_module import ToyModelModule

    config = load_config(
        ToyConfig, Path(__file__).resolve().parents[1] / "configs/toy/basic_results.yaml"
    )
    weights = []
    for optimizer_of in (
        lambda m: m.configure_optimizers()["optimizer"],
        lambda m: torch.optim.AdamW(
            m.model.parameters(),
            lr=config.optim.lr,
            weight_decay=config.optim.weight_decay,
            fused=True,
        ),
    ):
        module = ToyModelModule(config)
        optimizer = optimizer_of(module)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("linear", 5, 60))
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            module.per_instance_loss(module.distribution.sample(256, g)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
        weights.append([p.detach().clone() for p in module.model.parameters()])
    assert config.optim.weight_decay > 0
    assert all(torch.equal(a, b) for a, b in zip(*weights))
