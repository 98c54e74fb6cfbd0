"""The machine's ceiling: the measured FLOP/s of a large square matmul, in the run's dtype.

fp32 on CPU, bf16 on CUDA (``ctx.dtype``). Each size runs once as warm-up, then ``repeats`` times;
a size's rate is 2 n^3 / median time, and the limit (``ctx.peak_flops``) is the best size's rate.
Every model case divides its analytically counted FLOP/s by it ("fraction of limit"), so model and
limit are measured in the same process, with the same threads, minutes apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from . import Context, Row
from .harness import sync

NAME = "limit"


def matmul_flops(
    n: int, device: torch.device, dtype: torch.dtype, repeats: int, inner: int = 1
) -> list[float]:
    """FLOP/s of ``inner`` back-to-back (n x n) @ (n x n) products, ``repeats`` times."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up (allocation, library initialisation, clocks)
    sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        sync(device)
        rates.append(inner * 2 * n**3 / (time.perf_counter() - start))
    return rates


def probe(ctx: Context) -> tuple[Callable[[], torch.Tensor], int]:
    """A short matmul (n = 2048 on CPU, 8192 on CUDA) and its FLOPs, for a case to interleave
    with its own ops: the limit as it is *while* that case runs, not minutes earlier."""
    n = 8192 if ctx.device.type == "cuda" else 2048
    a = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    return (lambda: torch.mm(a, b)), 2 * n**3


def run(ctx: Context) -> list[Row]:
    if ctx.device.type == "cuda":
        sizes, repeats, inner = (4096, 8192), max(ctx.repeats, 10), 20
    else:
        sizes, repeats, inner = ((2048,) if ctx.quick else (2048, 4096)), max(ctx.repeats, 5), 1
    rows = []
    for n in sizes:
        rates = matmul_flops(n, ctx.device, ctx.dtype, repeats, inner)
        rows.append(
            Row(
                NAME,
                f"matmul {n}",
                {"n": n, "dtype": str(ctx.dtype).removeprefix("torch."), "repeats": repeats},
                {
                    "gflop_per_s": statistics.median(rates) / 1e9,
                    "gflop_per_s_max": max(rates) / 1e9,
                    "gflop_per_s_min": min(rates) / 1e9,
                },
            )
        )
    best = max(rows, key=lambda r: r.metrics["gflop_per_s"])
    ctx.peak_flops = best.metrics["gflop_per_s"] * 1e9
    for row in rows:
        row.metrics["is_limit"] = float(row is best)
    return rows
