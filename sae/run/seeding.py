"""Deterministic seeds for a data stream: every (step, shard) block has its own seed.

Seeding by step instead of carrying generator state means a resumed run draws exactly the
batches an uninterrupted one would, and every rank can find its block of the global batch
without talking to the others.
"""

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
