"""Where SAE training batches come from.

Both sources answer ``block(step, shard, size, device)``: block ``shard`` of global batch
``step``, a pure function of (seed, step, shard). Ranks therefore draw disjoint shares of one
global batch without talking to each other, and a resumed run sees the batches it would have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from sae.activations import ActivationFile
from sae.run.seeding import shard_seed


class ActivationSource(Protocol):
    d: int

    def block(self, step: int, shard: int, size: int, device: torch.device) -> Tensor: ...

    def sample(self, n: int, seed: int, device: torch.device) -> Tensor:
        """n rows from a stream keyed by ``seed`` alone (identical on every rank)."""
        ...


class FileSource:
    """Rows of an activation file, memory-mapped. The last ``holdout_fraction`` of the rows is
    held out; training walks seeded permutations of the rest, one epoch after another."""

    def __init__(
        self, file: ActivationFile, holdout_fraction: float, seed: int, batch_size: int
    ) -> None:
        self.file = file
        self.d = file.d
        self.n_train = file.n_rows - int(round(file.n_rows * holdout_fraction))
        if self.n_train < 1:
            from sae.run.errors import UsageError

            raise UsageError(f"{file.path}: no training rows left after the holdout split")
        self.holdout = slice(self.n_train, file.n_rows)
        self.seed, self.batch_size = seed, batch_size
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng(shard_seed(self.seed, epoch, 0x5EED))
            self._perm, self._epoch = rng.permutation(self.n_train), epoch
        return self._perm

    def block(self, step: int, shard: int, size: int, device: torch.device) -> Tensor:
        start = step * self.batch_size + shard * size
        positions = np.arange(start, start + size)
        epochs, offsets = np.divmod(positions, self.n_train)
        index = np.empty(size, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            index[sel] = self._permutation(int(epoch))[offsets[sel]]
        order = np.argsort(index)  # read the map in file order, then restore the batch order
        rows = self.file.rows(index[order])
        inverse = np.empty_like(order)  # argsort(order) in O(n); index_select beats rows[...]
        inverse[order] = np.arange(size)
        rows = torch.index_select(rows, 0, torch.from_numpy(inverse))
        return rows.to(device, non_blocking=True)

    def sample(self, n: int, seed: int, device: torch.device) -> Tensor:
        rng = np.random.default_rng(shard_seed(seed, 0, 0xC0FFEE))
        index = np.sort(rng.choice(self.n_train, size=min(n, self.n_train), replace=False))
        return self.file.rows(index).to(device)


class GeneratedSource:
    """Fresh activations from a generator function ``draw(n, torch.Generator) -> [n, d]`` on the
    training device (e.g. a toy model run live): infinite data, never repeated."""

    def __init__(
        self,
        draw: Callable[[int, torch.Generator], Tensor],
        d: int,
        seed: int,
        to_device: Callable[[torch.device], None] | None = None,
    ) -> None:
        self.draw, self.d, self.seed = draw, d, seed
        self._to_device = to_device
        self._generator: torch.Generator | None = None
        self._device: torch.device | None = None

    def _gen(self, device: torch.device, seed: int) -> torch.Generator:
        if self._device != device:
            if self._to_device is not None:
                self._to_device(device)
            self._generator, self._device = torch.Generator(device=device), device
        assert self._generator is not None
        return self._generator.manual_seed(seed)

    def block(self, step: int, shard: int, size: int, device: torch.device) -> Tensor:
        return self.draw(size, self._gen(device, shard_seed(self.seed, step, shard)))

    def sample(self, n: int, seed: int, device: torch.device) -> Tensor:
        return self.draw(n, self._gen(device, shard_seed(seed, 0, 0xC0FFEE)))
