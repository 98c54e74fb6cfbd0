"""Measurement helpers every case shares.

* :func:`alternate` times several variants side by side: one warm-up call each, then
  ``repeats`` rounds in which every variant runs once (the order reverses every round, so a
  drift in machine load hits all variants alike). Callers report the median.
* :func:`peak_mib` is the extra memory one call needs on top of what is resident before it:
  on CUDA the allocator's peak minus what was allocated before; on CPU the growth of the
  process's resident set (``VmHWM`` after resetting it through ``/proc/self/clear_refs``),
  after ``malloc_trim`` has handed freed heap back to the kernel (otherwise buffers freed by
  earlier calls are reused from resident memory and the growth reads as ~0). Linux only on
  CPU (NaN elsewhere).
* :func:`pair_rows` turns one "ours against the alternative" comparison into two rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import Context, Row

Op = Callable[[], Any]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(ctx: Context) -> contextlib.AbstractContextManager:
    """bf16 autocast where the run's dtype asks for it (CUDA); fp32 runs as is."""
    if ctx.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=ctx.dtype)


def inference(ctx: Context, fn: Op) -> Op:
    """``fn`` under ``torch.no_grad()`` and the run's autocast."""

    def op() -> Any:
        with torch.no_grad(), autocast(ctx):
            return fn()

    return op


def timed(op: Op, device: torch.device, calls: int = 1) -> float:
    """Wall seconds per call of ``calls`` back-to-back calls (the device synchronised before
    and after): several calls per sample for ops too short to time one by one."""
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        op()
    sync(device)
    return (time.perf_counter() - start) / calls


def alternate(
    ops: dict[str, Op], repeats: int, device: torch.device, *, warmup: int = 1, calls: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each op: ``warmup`` untimed calls each, then ``repeats`` alternating
    rounds of ``calls`` calls. Returns every round's timing (take the median)."""
    for op in ops.values():
        for _ in range(warmup):
            op()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(timed(ops[name], device, calls))
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


def host_syncs(op: Op, device: torch.device) -> int:
    """Host<->device synchronisations one call of ``op`` makes (CUDA only; -1 elsewhere)."""
    if device.type != "cuda":
        return -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            op()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def tensor_mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def pair_rows(
    ctx: Context,
    case: str,
    group: str,
    ours: tuple[str, Op],
    peer: tuple[str, Op],
    repeats: int,
    params: dict[str, Any],
    per_call: tuple[str, int] | None = None,
    memory: bool = True,
    calls: int = 1,
) -> list[Row]:
    """Time ``ours`` and ``peer`` alternately (``calls`` calls a round); one row each, ours
    referencing the peer, with ``time_ratio`` = ours / peer, ``speedup`` = peer / ours and (with
    ``memory``) ``memory_ratio`` = the peer's peak / ours. ``per_call`` = (unit, count) adds
    unit/s."""
    ops = {ours[0]: ours[1], peer[0]: peer[1]}
    rounds = alternate(ops, repeats, ctx.device, calls=calls)
    times = {name: median(t) for name, t in rounds.items()}
    peaks = {name: peak_mib(op, ctx.device) for name, op in ops.items()} if memory else {}
    rows = []
    for name in ops:
        t = times[name]
        metrics = {"ms": t * 1e3}
        if per_call:
            metrics[f"{per_call[0]}_per_s"] = per_call[1] / t
        if memory:
            metrics["peak_mib"] = peaks[name]
        if name == ours[0]:
            metrics["time_ratio"] = t / times[peer[0]]
            metrics["speedup"] = times[peer[0]] / t
            if memory and peaks[peer[0]] > 0:
                metrics["memory_ratio"] = peaks[peer[0]] / max(peaks[name], 1 / 1024)
        rows.append(
            Row(
                case=case,
                name=f"{group}/{name}",
                params={**params, "side": "ours" if name == ours[0] else "peer"},
                metrics=metrics,
                reference=f"{group}/{peer[0]}" if name == ours[0] else None,
            )
        )
    return rows


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = [
    "alternate",
    "autocast",
    "host_syncs",
    "inference",
    "median",
    "pair_rows",
    "peak_mib",
    "save_figure",
    "sync",
    "tensor_mib",
    "timed",
]
