"""The benchmark suite behind ``python -m benchmarks`` (and ``semhitok bench``).

Every case module in this package exposes ``NAME`` and ``run(ctx: Context) -> list[Row]``, and
may expose ``plot(rows: list[Row], directory: Path) -> list[Path]`` (draws its own rows, returns the
PNGs written). A case measures its variants side by side in one run (alternating repeats, median)
and reports ratios where it compares; the runner prints one table, writes one JSON and draws the
plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype  # fp32 on CPU, bf16 on CUDA
    quick: bool  # tiny preset, few repeats: the CI smoke path
    presets: tuple[str, ...]  # tokenizer presets to measure (quick: ("tiny",))
    repeats: int  # timed repeats per variant (median reported)
    peak_flops: float = 0.0  # the "limit" case's measured matmul FLOP/s, filled in first
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """One measured variant. ``metrics`` hold numbers (images/s, ms, MiB, fraction of the
    limit, ratio vs a named reference row ...); ``params`` say what was measured."""

    case: str
    name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    reference: str | None = None  # the row name this one is compared with (ratios in metrics)


__all__ = ["Context", "Row"]
