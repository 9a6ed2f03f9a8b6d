"""Data blocks of the coming steps, made on a background thread while the current step trains.

Every block of a run is a pure function of (step, shard) (its seed or its rows come from
``sae.run.seeding``), so a producer thread can make them ahead of time in step order and the
batches stay exactly the ones the training step would have made itself. Two users:

- a streamed activation file (``sae.data.FileSource``): rows gathered from the memory map;
- data drawn from a seed (``SeededBlocks``: toy-model features, a toy model run live for an
  SAE): on the CPU the draw runs on a second core (torch releases the GIL inside its kernels).
  For toy features the thread makes only the random numbers, the costly part: every torch call
  on that thread costs the training thread a GIL handoff, which on a virtual machine's idle core
  costs more than the cheap elementwise passes that turn them into features.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sae.run.seeding import shard_seed

DEPTH = 4
"""Handovers the producer may run ahead of training."""
HANDOVER_BYTES = 4 << 20
"""A handover carries the blocks of as many steps as fit in this many bytes (at least one step,
at most ``MAX_STEPS_PER_HANDOVER``)."""
MAX_STEPS_PER_HANDOVER = 8


def spare_cpu_core(device: torch.device, wanted: bool = True) -> bool:
    """Whether drawing CPU data on a background thread can run beside training: the device is
    the CPU and the compute threads of every training process (all on this machine, as CPU
    DDP runs are) leave a core free; ``wanted`` is ``runtime.draw_ahead``."""
    dist = torch.distributed
    processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    # The cores this process may run on (a container or taskset may allow fewer than the host's).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return wanted and device.type == "cpu" and cores > torch.get_num_threads() * processes


class BlockPrefetcher:
    """Calls ``produce(step, shard)`` for steps ``first_step`` to ``end_step - 1`` (each of
    ``shards`` per step) on a background thread, up to ``DEPTH`` handovers ahead, and hands the
    blocks out in that order with ``take``.

    Small blocks cross between the threads several steps at a time: each handover wakes the
    other thread, and on the CPU that costs the training thread a GIL handoff. A handover holds
    the steps that fit in ``HANDOVER_BYTES`` (1 to ``MAX_STEPS_PER_HANDOVER``), so the memory
    ahead of training stays about ``DEPTH`` x max(4 MB, one step's blocks). For toy features
    (0.57 MB a step, ~0.6 ms steps) 7 steps a handover gave 1.06-1.12x more steps/s on a 2-core
    Xeon than one."""

    def __init__(
        self,
        produce: Callable[[int, int], Any],
        shards: range,
        first_step: int,
        end_step: int,
        name: str = "data-prefetch",
    ) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._stop = threading.Event()
        self._next: tuple[tuple[int, int], Any] | None = None
        self._handed: list[tuple[tuple[int, int], Any]] = []  # the current handover, reversed
        keys = ((step, shard) for step in range(first_step, end_step) for shard in shards)

        def hand_over(items: list) -> bool:
            """Queue ``items``; False once stopped."""
            while not self._stop.is_set():
                try:
                    self.queue.put(items, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            items: list = []
            per_handover = 0  # blocks, set from the first one's size
            for key in keys:
                try:
                    items.append((key, produce(*key)))
                except Exception:  # noqa: BLE001 - the caller remakes the block and reports it
                    if items:
                        hand_over(items)
                    return
                if not per_handover:
                    steps = HANDOVER_BYTES // max(1, _nbytes(items[0][1]) * len(shards))
                    per_handover = min(max(1, steps), MAX_STEPS_PER_HANDOVER) * len(shards)
                if len(items) == per_handover:
                    if not hand_over(items):
                        return
                    items = []
            if items:
                hand_over(items)

        self._thread = threading.Thread(target=work, name=name, daemon=True)
        self._thread.start()

    def take(self, step: int, shard: int) -> Any:
        """The block of (step, shard), or None when the producer is not at it (it stopped, or
        the caller asks for a block it already passed): then the caller makes the block
        itself, and a producer that failed fails there again, with its error, in the caller's
        thread."""
        while True:
            if self._next is not None:
                key, block = self._next
            else:
                if not self._handed:
                    try:
                        self._handed = self.queue.get(timeout=1.0)[::-1]
                    except queue.Empty:
                        if not self._thread.is_alive() and self.queue.empty():
                            return None
                        continue
                key, block = self._handed.pop()  # (handovers are never empty)
            self._next = None
            if key == (step, shard):
                return block
            if key > (step, shard):  # kept for the call that asks for it
                self._next = (key, block)
                return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _nbytes(block: Any) -> int:
    """Bytes of the tensors in ``block`` (a tensor, or lists and tuples of them)."""
    if isinstance(block, Tensor):
        return block.nbytes
    if isinstance(block, (list, tuple)):
        return sum(_nbytes(b) for b in block)
    return 0


class SeededBlocks:
    """Blocks ``finish(draw(rows, generator))`` of a seeded stream: block (step, shard) is drawn
    from ``shard_seed(seed, step, shard)``, so it is the same block whoever draws it and
    whenever. After ``start``, a spare CPU core runs ``draw`` for the coming steps ahead;
    ``finish`` (optional) runs when the step asks for its block: cheap work that would cost
    the training thread more in GIL handoffs than it takes to do."""

    def __init__(
        self,
        draw: Callable[[int, torch.Generator], Any],
        seed: int,
        finish: Callable[[Any], Tensor] | None = None,
    ) -> None:
        self.draw, self.seed, self.finish = draw, seed, finish
        self._generator: torch.Generator | None = None
        self._ahead: BlockPrefetcher | None = None
        self._ahead_shape: tuple[int, torch.device] | None = None

    def block(self, step: int, shard: int, rows: int, device: torch.device) -> Tensor:
        drawn = None
        if self._ahead is not None and self._ahead_shape == (rows, device):
            drawn = self._ahead.take(step, shard)
        if drawn is None:
            if self._generator is None or self._generator.device != device:
                self._generator = torch.Generator(device=device)
            drawn = self._draw(step, shard, rows, self._generator)
        return drawn if self.finish is None else self.finish(drawn)

    def _draw(self, step: int, shard: int, rows: int, generator: torch.Generator) -> Any:
        return self.draw(rows, generator.manual_seed(shard_seed(self.seed, step, shard)))

    def start(
        self,
        device: torch.device,
        shards: range,
        rows: int,
        first_step: int,
        end_step: int,
        wanted: bool = True,
        name: str = "data-draw",
    ) -> None:
        """Draw blocks ``shards`` of steps ``first_step`` to ``end_step - 1`` ahead on a spare
        CPU core, when there is one (``wanted``: ``runtime.draw_ahead``)."""
        self.stop()
        if spare_cpu_core(device, wanted):
            generator = torch.Generator(device=device)  # the thread's own: blocks reseed it
            self._ahead_shape = (rows, device)
            self._ahead = BlockPrefetcher(
                lambda step, shard: self._draw(step, shard, rows, generator),
                shards,
                first_step,
                end_step,
                name,
            )

    def stop(self) -> None:
        """Stop drawing ahead (blocks are then drawn when asked for)."""
        if self._ahead is not None:
            self._ahead.stop()
        self._ahead, self._ahead_shape = None, None
