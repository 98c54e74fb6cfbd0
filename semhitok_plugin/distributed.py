"""Collective helpers that are no-ops outside ``torch.distributed``.

Whether a process group exists is checked at *call* time, not at construction: a quantizer built
before ``init_process_group`` (as most training scripts do) still synchronises once training runs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s copy, in place."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor
