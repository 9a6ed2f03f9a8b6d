"""The DDP process group across a command: one group serves every training stage of a command
(``sae run`` trains twice), and every rank ends it before exiting."""

from __future__ import annotations

import sys


def _initialized() -> bool:
    if "torch.distributed" not in sys.modules:  # a command that never trained: nothing to end
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def wait_for_all_ranks() -> None:
    """Under DDP, every rank waits here until all arrive (so files rank 0 writes before it are
    complete); a no-op in a single process or before the first training started the group."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def end_process_group() -> None:
    """End this rank's process group. Left to interpreter exit, gloo's threads can abort the
    rank that exits first ("terminate called without an active exception"), and Lightning then
    SIGKILLs every other rank, rank 0 included, part-way through writing its outputs."""
    if _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
