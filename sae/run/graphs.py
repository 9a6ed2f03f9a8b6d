"""CUDA graphs for the pure tensor function at the heart of a training step.

On a GPU, a small model's step is bound by kernel launches and the Python that issues them, not
by arithmetic: a CUDA graph records a function's kernels once and replays them all with one
launch. ``GraphedFunction`` does this for a function of tensors only (the model's forward and
backward, returning the outputs and the gradients), under ``runtime.cuda_graphs``:

- its ``varying`` arguments (the batch, the step's sparsity weight) are copied into the graph's
  own input tensors at each call; every other tensor argument (parameters, masks) is read where
  it lies, so in-place updates (the optimizer, resampling, loading a checkpoint) are seen;
- the outputs are the graph's own tensors, overwritten by the next call;
- it captures again when a shape or a fixed tensor's storage changes, and falls back to calling
  the function eagerly (with a warning, once) when capture fails.

What varies from step to step outside tensors (the step count, the learning rate, the batch's
rows) would be baked into a graph, so the data draw, the optimizer, the schedule and logging stay
eager around it: only the function is captured.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

WARMUP_CALLS = 3
"""Eager calls on the capture's side stream before capturing (torch's recipe: lazy library
initialisation and allocator state happen outside the graph)."""


class CudaGraph:
    """The capture backend: ``torch.cuda.CUDAGraph``."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], Any]) -> Any:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        # thread_local: a data thread's pinned-memory allocations (a streamed activation file)
        # during the capture do not invalidate it.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            return fn()

    def replay(self) -> None:
        self.graph.replay()


class GraphedFunction:
    """``fn(*args)`` replayed from a graph; ``varying``: the positions of the arguments copied in
    at each call (the rest are captured where they lie)."""

    backend: Callable[[], Any] = CudaGraph
    """Makes the graph (tests substitute a CPU stand-in with the same semantics)."""

    def __init__(self, fn: Callable[..., Any], varying: Sequence[int], name: str = "") -> None:
        self.fn, self.varying, self.name = fn, tuple(varying), name or fn.__name__
        self.failed: str | None = None
        """Why capture failed (then every call runs ``fn`` eagerly)."""
        self.captures = 0
        self._key: tuple | None = None

    def __call__(self, *args: Any) -> Any:
        if self.failed is not None:
            return self.fn(*args)
        key = self._key_of(args)
        if key != self._key:
            try:
                self._capture(args)
            except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager
                self.failed = f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"CUDA graph capture of {self.name} failed, running it eagerly: {self.failed}",
                    stacklevel=2,
                )
                return self.fn(*args)
            self._key = key
        for i, static in zip(self.varying, self._inputs):
            static.copy_(args[i])
        self._graph.replay()
        return self._outputs

    def _key_of(self, args: Sequence[Any]) -> tuple:
        """What a capture depends on: each tensor argument's shape, dtype, device and
        requires_grad, the storage of the fixed ones, the value of the other arguments."""
        key = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                where = None if i in self.varying else a.data_ptr()
                key.append((tuple(a.shape), a.dtype, a.device, a.requires_grad, where))
            else:
                key.append(a)
        return tuple(key)

    def _capture(self, args: Sequence[Any]) -> None:
        self._inputs = [args[i].clone() for i in self.varying]
        call_args = list(args)
        for i, static in zip(self.varying, self._inputs):
            call_args[i] = static
        self._graph = self.backend()
        self._outputs = self._graph.capture(lambda: self.fn(*call_args))
        self.captures += 1


def graphs_usable(device: torch.device, world_size: int, precision: str) -> bool:
    """Whether ``runtime.cuda_graphs`` applies: a CUDA device, one process (DDP's collectives
    stay eager) and no autocast (``bf16-mixed`` caches casts across calls)."""
    return device.type == "cuda" and world_size == 1 and precision in ("32-true", "64-true")
