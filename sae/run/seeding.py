"""Deterministic seeds for a data stream: every (step, shard) block has its own seed.

Seeding by step instead of carrying generator state means a resumed run draws exactly the
batches an uninterrupted one would, and every rank can find its block of the global batch
without talking to the others. The named streams below are every seed the project draws.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_MASK = (1 << 63) - 1


def shard_seed(seed: int, step: int, shard: int) -> int:
    """A well-mixed 63-bit seed for block ``shard`` of step ``step`` (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + shard * 0x94D049BB133111EB) & (
        (1 << 64) - 1
    )
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


def rank_blocks(
    data_shards: int | None, batch_size: int, world: int, rank: int
) -> tuple[range, int]:
    """The blocks of the global batch that ``rank`` draws (``data_shards`` blocks in all, one per
    rank when None), and the rows per block. ``check_data_shards`` validates the split."""
    shards = data_shards or world
    per_rank = shards // world
    return range(rank * per_rank, (rank + 1) * per_rank), batch_size // shards


def draw_rank_batch(
    draw: Callable[[int, int], Tensor],
    data_shards: int | None,
    batch_size: int,
    world: int,
    rank: int,
) -> Tensor:
    """This rank's share of one global batch: ``draw(shard, rows)`` for each of its blocks (see
    ``rank_blocks``), stacked in block order. Both trainings draw their batches through this."""
    shards, rows = rank_blocks(data_shards, batch_size, world, rank)
    parts = [draw(shard, rows) for shard in shards]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# -- named streams ------------------------------------------------------------------------------
# Every seeded stream of the project, named. The salts are part of the results (changing one
# changes every number a run produces), so they are fixed here and nowhere else.

EPOCH_PERMUTATION = 0x5EED
"""Block slot of an activation file's per-epoch row permutation (seeded by ``train.data_seed``)."""
SAMPLE = 0xC0FFEE
"""Block slot of a source's seed-keyed sample stream (b_dec init, resampling candidates)."""
RESAMPLE_INPUTS = 77
"""Block slot of the seed of the candidate inputs scored at a resample step."""
RESAMPLE_DIRECTIONS = 99
"""Block slot of an SAE instance's generator at a resample step (from the instance's seed)."""
DATA_INIT = 0xD1C7
"""Block slot of the training rows an SAE instance's decoder starts from (``sae.init: data``)."""
TOY_EVAL_OFFSET = 1_000_003
"""Added to ``train.seed`` for the toy model's final-evaluation stream (never used in training)."""
TOY_DYNAMICS_OFFSET = 2_000_003
"""Added to ``train.seed`` for the fixed batch that learning-dynamics snapshots score."""
TOY_SCORING_SEED = 2**31 - 1
"""Seed of the fresh toy inputs that score an SAE trained live on a toy model (training draws
through ``shard_seed``, never from a generator seeded with this)."""
PIPELINE_EXPORT_SEED = 12345
"""Default seed of the input stream ``sae run`` exports activations from."""
MODULAR_INIT = 0xADD
"""Block slot of a modular-addition instance's initialisation (from its seed in train.seeds)."""
MODULAR_SPLIT = 0x5917
"""Block slot of the modular-addition train/test split of the pairs (from train.split_seed)."""


def epoch_permutation_seed(data_seed: int, epoch: int) -> int:
    return shard_seed(data_seed, epoch, EPOCH_PERMUTATION)


def sample_seed(seed: int) -> int:
    return shard_seed(seed, 0, SAMPLE)


def resample_inputs_seed(data_seed: int, step: int) -> int:
    return shard_seed(data_seed, step, RESAMPLE_INPUTS)


def resample_directions_seed(instance_seed: int, step: int) -> int:
    return shard_seed(instance_seed, step, RESAMPLE_DIRECTIONS)


def data_init_seed(instance_seed: int) -> int:
    return shard_seed(instance_seed, 0, DATA_INIT)


def modular_init_seed(seed: int) -> int:
    return shard_seed(seed, 0, MODULAR_INIT)


def modular_split_seed(split_seed: int) -> int:
    return shard_seed(split_seed, 0, MODULAR_SPLIT)


def toy_eval_seed(train_seed: int, chunk: int) -> int:
    return shard_seed(train_seed + TOY_EVAL_OFFSET, chunk, 0)


def toy_dynamics_seed(train_seed: int) -> int:
    return shard_seed(train_seed + TOY_DYNAMICS_OFFSET, 0, 0)
