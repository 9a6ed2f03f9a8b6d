"""CUDA graphs for the pure tensor function at the heart of a training step.

On a GPU, a small model's step is bound by kernel launches and the Python that issues them, not
by arithmetic: a CUDA graph records a function's kernels once and replays them all with one
launch. ``GraphedFunction`` does this for a function of tensors only (the model's forward and
backward, returning the outputs and the gradients), under ``runtime.cuda_graphs``:

- its ``varying`` arguments (the batch, the step's sparsity weight) are copied into the graph's
  own input tensors at each call; every other tensor argument (parameters, masks) is read where
  it lies, so in-place updates (the optimizer, resampling, loading a checkpoint) are seen;
- the outputs are the graph's own tensors, overwritten by the next call (``owns`` tells a
  caller which tensors those are, e.g. a gradient it must copy before accumulating into it);
- it captures again when a shape, a layout or a fixed tensor's storage changes.

What varies from step to step outside tensors (the step count, the learning rate, the batch's
rows) would be baked into a graph, so the data draw, the optimizer, the schedule and logging stay
eager around it: only the function is captured. Where graphs cannot apply (the CPU, several
processes, autocast) training runs without them (``graphs_usable``); a capture that fails
anyway stops the run with a one-line error naming the switch, rather than continuing in
whatever state the failed capture left the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sae.run.errors import RunError

if TYPE_CHECKING:  # (Lightning is imported only when a command runs)
    import lightning as L

    from sae.run.runtime import RuntimeConfig

WARMUP_CALLS = 3
"""Eager calls on the capture's side stream before capturing (torch's recipe: lazy library
initialisation and allocator state happen outside the graph)."""
CAPTURES_BEFORE_WARNING = 3
"""More captures than this mean a fixed argument moves between calls (each costs a sync)."""


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
        self.captures = 0
        self._key: tuple | None = None
        self._owned: set[int] = set()

    def __call__(self, *args: Any) -> Any:
        key = self._key_of(args)
        if key != self._key:
            self._capture(args)
            self._key = key
        for i, static in zip(self.varying, self._inputs):
            static.copy_(args[i])
        self._graph.replay()
        return self._outputs

    def owns(self, t: Tensor) -> bool:
        """Whether ``t`` is one of the graph's output tensors (the next call overwrites it)."""
        return id(t) in self._owned

    def _key_of(self, args: Sequence[Any]) -> tuple:
        """What a capture depends on: each tensor argument's shape, strides, dtype, device and
        requires_grad, the storage of the fixed ones, the value of the other arguments."""
        key = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                where = None if i in self.varying else a.data_ptr()
                key.append((a.shape, a.stride(), a.dtype, a.device, a.requires_grad, where))
            else:
                key.append(a)
        return tuple(key)

    def _capture(self, args: Sequence[Any]) -> None:
        self._graph = self._outputs = None  # the previous graph's memory, before the new one
        self._owned = set()
        self._inputs = [args[i].clone() for i in self.varying]
        call_args = list(args)
        for i, static in zip(self.varying, self._inputs):
            call_args[i] = static
        graph = self.backend()
        try:
            outputs = graph.capture(lambda: self.fn(*call_args))
        except Exception as e:
            raise RunError(
                f"CUDA graph capture of {self.name} failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); run without it: "
                "--set runtime.cuda_graphs=false"
            ) from e
        self._graph, self._outputs = graph, outputs
        self._owned = {id(t) for t in _tensors(outputs)}
        self.captures += 1
        if self.captures == CAPTURES_BEFORE_WARNING + 1:
            warnings.warn(
                f"{self.name} was captured as a CUDA graph {self.captures} times: an argument "
                "changes shape or storage between calls, and every capture costs a sync",
                stacklevel=3,
            )


def add_gradients(run: Callable[..., Any], params: Sequence[Tensor | None], *args: Any) -> Any:
    """``outputs, grads = run(*args)`` (a plain function or a ``GraphedFunction``), ``grads``
    those of ``params`` (None: none), added to their ``.grad`` as ``backward`` adds them; returns
    ``outputs``. A ``.grad`` that is still one of a graph's output tensors is copied first, so
    gradients accumulated over calls without zeroing add up (the call would overwrite it);
    training zeroes gradients every step, so nothing is copied there."""
    owns = getattr(run, "owns", None)
    if owns is not None:
        for p in params:
            if p is not None and p.grad is not None and owns(p.grad):
                p.grad = p.grad.clone()
    outputs, grads = run(*args)
    for p, g in zip(params, grads, strict=True):
        if p is not None and g is not None:
            p.grad = g if p.grad is None else p.grad.add_(g)
    return outputs


def graphed_if_usable(
    fn: Callable[..., Any],
    varying: Sequence[int],
    name: str,
    runtime: RuntimeConfig,
    trainer: L.Trainer,
) -> GraphedFunction | None:
    """``fn`` as a ``GraphedFunction`` when ``runtime.cuda_graphs`` is on and applies to the
    trainer's run (``graphs_usable``), else None (call ``fn`` itself)."""
    device = trainer.strategy.root_device
    if runtime.cuda_graphs and graphs_usable(device, trainer.world_size, runtime.precision):
        return GraphedFunction(fn, varying, name)
    return None


def _tensors(tree: Any) -> Iterator[Tensor]:
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, (tuple, list)):
        for item in tree:
            yield from _tensors(item)


def graphs_usable(device: torch.device, world_size: int, precision: str) -> bool:
    """Whether ``runtime.cuda_graphs`` applies: a CUDA device, one process (DDP's collectives
    stay eager) and no autocast (``bf16-mixed`` caches casts across calls)."""
    return device.type == "cuda" and world_size == 1 and precision in ("32-true", "64-true")
