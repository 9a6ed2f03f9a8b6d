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
