"""Measurement helpers shared by the train, scaling, peers and data cases.

* :func:`alternate` times several variants side by side: one warm-up call each, then
  ``repeats`` rounds in which every variant runs once (the order reverses every round, so a
  drift in machine load hits all variants alike). Callers report the median.
* :func:`peak_mib` is the extra memory one call needs on top of what is resident before it:
  on CUDA the allocator's peak minus what was allocated before; on CPU the growth of the
  process's resident set (``VmHWM`` after resetting it through ``/proc/self/clear_refs``),
  after ``malloc_trim`` has handed freed heap back to the kernel (otherwise buffers freed by
  earlier calls are reused from resident memory and the growth reads as ~0). Linux only on
  CPU (NaN elsewhere).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Op = Callable[[], Any]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(op: Op, device: torch.device) -> float:
    """Wall seconds of one call (the device synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    op()
    sync(device)
    return time.perf_counter() - start


def alternate(
    ops: dict[str, Op], repeats: int, device: torch.device, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each op: ``warmup`` untimed calls each, then ``repeats`` alternating
    rounds. Returns every timing (take the median)."""
    for op in ops.values():
        for _ in range(warmup):
            op()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(timed(ops[name], device))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def peak_mib(op: Op, device: torch.device) -> float:
    """MiB one call of ``op`` needs beyond what is allocated (CUDA) or resident (CPU) before."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        op()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        _malloc_trim()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM <- current VmRSS
        base = _status_kib("VmRSS")
    except (OSError, RuntimeError):
        return float("nan")
    op()
    return (_status_kib("VmHWM") - base) / 1024


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def tensor_mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


__all__ = ["alternate", "median", "peak_mib", "save_figure", "sync", "tensor_mib", "timed"]
