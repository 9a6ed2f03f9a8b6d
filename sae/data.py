"""Where SAE training batches come from.

Both sources answer ``block(step, shard, size, device)``: block ``shard`` of global batch
``step``, a pure function of (seed, step, shard). Ranks therefore draw disjoint shares of one
global batch without talking to each other, and a resumed run sees the batches it would have.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from sae.activations import ActivationFile
from sae.run.prefetch import BlockPrefetcher, SeededBlocks
from sae.run.seeding import epoch_permutation_seed, sample_seed


class ActivationSource(Protocol):
    d: int

    def block(self, step: int, shard: int, size: int, device: torch.device) -> Tensor: ...

    def prepare(
        self,
        device: torch.device,
        shards: range,
        size: int,
        first_step: int,
        end_step: int,
        draw_ahead: bool = True,
    ) -> None:
        """Called once before training draws blocks ``shards`` of steps from ``first_step``;
        ``draw_ahead`` (``runtime.draw_ahead``) lets a source make blocks ahead on a spare CPU
        core where that pays."""
        ...

    def close(self) -> None:
        """Release what ``prepare`` set up."""
        ...

    def sample(self, n: int, seed: int, device: torch.device) -> Tensor:
        """n rows from a stream keyed by ``seed`` alone (identical on every rank)."""
        ...


def holdout_rows(n_rows: int, holdout_fraction: float) -> int:
    """Rows at the end of a file that training never sees (``data.holdout_fraction``); the
    run's record keeps the count, and scoring reads it there."""
    return int(round(n_rows * holdout_fraction))


class FileSource:
    """Rows of an activation file. The last ``holdout_fraction`` of the rows is held out;
    training walks seeded permutations of the rest, one epoch after another.

    ``prepare`` (called once training knows its device and first step) chooses how rows reach
    the device, without changing which rows a step gets:

    - resident: the training rows fit ``resident_budget_gb`` (None: half the device's free
      memory), so they are copied to the device once and each block is one ``index_select``
      there, with the epoch's permutation on the device too;
    - streamed: a background thread gathers upcoming blocks from the memory map (into pinned
      memory for a GPU) while the device trains (``sae.run.prefetch``).
    """

    def __init__(
        self,
        file: ActivationFile,
        holdout_fraction: float,
        seed: int,
        batch_size: int,
        resident_budget_gb: float | None = None,
    ) -> None:
        self.file = file
        self.d = file.d
        self.n_train = file.n_rows - holdout_rows(file.n_rows, holdout_fraction)
        if self.n_train < 1:
            from sae.run.errors import UsageError

            raise UsageError(f"{file.path}: no training rows left after the holdout split")
        self.holdout = slice(self.n_train, file.n_rows)
        self.seed, self.batch_size = seed, batch_size
        self.resident_budget_gb = resident_budget_gb
        # (epoch, permutation) in one attribute: the prefetch thread and the caller share it.
        self._cached: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))
        self._resident: Tensor | None = None
        self._device_perm: tuple[int, Tensor] | None = None
        self._stream: BlockPrefetcher | None = None
        self._stream_size = 0

    @property
    def mode(self) -> str:
        """'resident', 'streamed' (after ``prepare``) or 'mapped' (read on demand)."""
        return (
            "resident" if self._resident is not None else "streamed" if self._stream else "mapped"
        )

    def prepare(
        self,
        device: torch.device,
        shards: range,
        size: int,
        first_step: int,
        end_step: int,
        draw_ahead: bool = True,
    ) -> None:
        """Get ready to serve blocks ``shards`` (``size`` rows each) of steps ``first_step`` to
        ``end_step - 1`` on ``device``."""
        self.close()
        if self.n_train * self.d * 4 <= _budget_bytes(device, self.resident_budget_gb):
            # Selected in the step: ahead on a spare core it measured slower (1.76x SAELens's
            # samples/s against 1.83x, bench/bench_saelens.py): the gather is 0.1 ms.
            self._resident = self.file.rows(slice(0, self.n_train)).to(device)
            return
        pin = device.type == "cuda"
        self._stream_size = size
        self._stream = BlockPrefetcher(
            lambda step, shard: self.gather(step, shard, size, pin),
            shards,
            first_step,
            end_step,
            "sae-prefetch",
        )

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
        self._stream, self._resident, self._device_perm = None, None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        cached_epoch, perm = self._cached
        if cached_epoch != epoch:
            rng = np.random.default_rng(epoch_permutation_seed(self.seed, epoch))
            perm = rng.permutation(self.n_train)
            self._cached = (epoch, perm)
        return perm

    def _segments(self, step: int, shard: int, size: int) -> list[tuple[int, int, int]]:
        """(epoch, first offset, end offset) pieces of the block's positions in epoch order."""
        start = step * self.batch_size + shard * size
        pieces, position, end = [], start, start + size
        while position < end:
            epoch, offset = divmod(position, self.n_train)
            n = min(end - position, self.n_train - offset)
            pieces.append((epoch, offset, offset + n))
            position += n
        return pieces

    def block(self, step: int, shard: int, size: int, device: torch.device) -> Tensor:
        if self._stream is not None and size == self._stream_size:
            rows = self._stream.take(step, shard)
            if rows is not None:
                return rows.to(device, non_blocking=True)
        if self._resident is not None:
            return self._resident_block(step, shard, size)
        return self.gather(step, shard, size).to(device, non_blocking=True)

    def _resident_block(self, step: int, shard: int, size: int) -> Tensor:
        assert self._resident is not None
        parts = []
        for epoch, a, b in self._segments(step, shard, size):
            if self._device_perm is None or self._device_perm[0] != epoch:
                perm = torch.from_numpy(self._permutation(epoch))
                self._device_perm = (epoch, perm.to(self._resident.device))
            parts.append(self._device_perm[1][a:b])
        index = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._resident.index_select(0, index)

    def gather(self, step: int, shard: int, size: int, pin: bool = False) -> Tensor:
        """The block read from the memory map, on the CPU (in pinned memory with ``pin``)."""
        index = np.concatenate(
            [self._permutation(e)[a:b] for e, a, b in self._segments(step, shard, size)]
        )
        order = np.argsort(index)  # read the map in file order, then restore the batch order
        rows = self.file.rows(index[order])
        inverse = np.empty_like(order)  # argsort(order) in O(n); index_select beats rows[...]
        inverse[order] = np.arange(size)
        out = torch.empty((size, self.d), dtype=rows.dtype, pin_memory=pin)
        return torch.index_select(rows, 0, torch.from_numpy(inverse), out=out)

    def sample(self, n: int, seed: int, device: torch.device) -> Tensor:
        rng = np.random.default_rng(sample_seed(seed))
        index = np.sort(rng.choice(self.n_train, size=min(n, self.n_train), replace=False))
        return self.file.rows(index).to(device)


def _budget_bytes(device: torch.device, budget_gb: float | None) -> float:
    if budget_gb is not None:
        return budget_gb * 2**30
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0.0
    return pages / 2


class GeneratedSource:
    """Fresh activations from a generator function ``draw(n, torch.Generator) -> [n, d]`` on the
    training device (e.g. a toy model run live): infinite data, never repeated. On a CPU with a
    core to spare, the blocks of the coming steps are drawn on a background thread (the same
    blocks: each comes from its own seed; ``SeededBlocks``)."""

    def __init__(
        self,
        draw: Callable[[int, torch.Generator], Tensor],
        d: int,
        seed: int,
        to_device: Callable[[torch.device], None] | None = None,
    ) -> None:
        self.draw, self.d, self.seed = draw, d, seed
        self._to_device = to_device
        self._device: torch.device | None = None
        self._blocks = SeededBlocks(draw, seed)

    def _on(self, device: torch.device) -> None:
        """Move what ``draw`` runs (a toy model) to ``device``, once."""
        if self._device != device:
            if self._to_device is not None:
                self._to_device(device)
            self._device = device

    def prepare(
        self,
        device: torch.device,
        shards: range,
        size: int,
        first_step: int,
        end_step: int,
        draw_ahead: bool = True,
    ) -> None:
        """Blocks are drawn on the device when asked for, or ahead on a spare CPU core."""
        self._on(device)
        self._blocks.start(device, shards, size, first_step, end_step, draw_ahead, "sae-draw")

    def close(self) -> None:
        self._blocks.stop()

    def block(self, step: int, shard: int, size: int, device: torch.device) -> Tensor:
        self._on(device)
        return self._blocks.block(step, shard, size, device)

    def sample(self, n: int, seed: int, device: torch.device) -> Tensor:
        self._on(device)
        return self.draw(n, torch.Generator(device=device).manual_seed(sample_seed(seed)))
