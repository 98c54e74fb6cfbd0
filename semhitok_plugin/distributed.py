"""Collective helpers that are no-ops outside ``torch.distributed``, and joining a torchrun launch.

Whether a process group exists is checked at *call* time, not at construction: a quantizer built
before ``init_process_group`` (as most training scripts do) still synchronises once training runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

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


# -- launches by torchrun (env://) -----------------------------------------------------------------
# How long a collective waits for the slowest rank. Ranks of a tokenization pass finish their
# shares minutes apart at worst; torchrun tears the group down at once when a rank dies, so a
# long wait never hides a crash. (NCCL's own default is 10 minutes.)
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: global rank, number of ranks, rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launched() -> bool:
    """Whether an env:// launcher (torchrun, or a scheduler exporting its variables) started this
    process: ``RANK`` and ``WORLD_SIZE`` are set, even for a single rank."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_device(name: str | None, local_rank: int) -> torch.device:
    """The device a rank works on: ``name`` where it names one exactly, a bare ``cuda`` (or no
    name, when CUDA is present) meaning this rank's GPU ``cuda:LOCAL_RANK``, else the CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


@contextmanager
def process_group(device: str | None = None) -> Iterator[tuple[Launch, torch.device]]:
    """Join the process group the launcher describes for the duration of the block (NCCL on
    CUDA, gloo on the CPU) and leave it afterwards; the launch and the rank's device. Outside a
    launch, or with one rank, no group is created and collectives here are no-ops."""
    if not launched():
        yield Launch(), rank_device(device, 0)
        return
    env = os.environ
    launch = Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    where = rank_device(device, launch.local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    created = launch.world_size > 1 and not dist.is_initialized()
    if created:
        backend = "nccl" if where.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=where if where.type == "cuda" else None,
        )
    try:
        yield launch, where
    finally:
        if created:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if is_distributed():
        dist.barrier()
