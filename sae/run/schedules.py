"""Learning-rate (and λ) schedules as step -> multiplier functions."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(
    schedule: str, warmup_steps: int, total_steps: int, decay_steps: int | None = None
) -> Callable[[int], float]:
    """Linear warm-up from 0, then constant, or a linear / cosine decay to 0 at the end.

    ``decay_steps`` limits the decay to the last steps (None: everything after warm-up).
    """
    decay_start = (
        warmup_steps if decay_steps is None else max(warmup_steps, total_steps - decay_steps)
    )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or step < decay_start:
            return 1.0
        frac = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        if schedule == "linear":
            return 1.0 - frac
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        raise ValueError(f"unknown schedule {schedule!r}")

    return factor


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear ramp from 0 to 1 over ``warmup_steps`` (used for the L1 coefficient)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
