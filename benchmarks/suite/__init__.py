"""What every benchmark case shares: the run's :class:`Context`, the :class:`Row` a case reports,
and :class:`Skip` for a case that cannot run here.

A case is a module with ``NAME`` and ``run(ctx: Context) -> list[Row]``, and optionally
``add_arguments(group)`` (its own command-line options, read back from ``ctx.options``),
``plot(rows, directory) -> list[Path]`` (PNGs of its own rows) and ``USES_LIMIT = True`` (it
divides achieved FLOP/s by ``ctx.peak_flops``, so the ``limit`` case runs first). The runner
(``benchmarks.runner``) times nothing itself: cases measure with :mod:`.harness`, and the runner
prints the table, writes the JSON and draws the plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PAPER_PRESETS = ("siglip-l16-256", "siglip-so400m14-384")
PRESETS = ("tiny", *PAPER_PRESETS)


class Skip(Exception):
    """Raised by a case that cannot run in this environment (the message says why)."""


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype  # fp32 on CPU, bf16 on CUDA
    quick: bool  # tiny sizes, few repeats: the CI smoke path
    repeats: int  # timed rounds per variant (median reported)
    presets: tuple[str, ...] | None = None  # --presets; None: each case's default
    batches: tuple[int, ...] | None = None  # --batches; None: each case's default
    options: dict[str, Any] = field(default_factory=dict)  # the cases' own options, by dest
    peak_flops: float = 0.0  # the "limit" case's measured matmul FLOP/s
    extra: dict[str, Any] = field(default_factory=dict)  # what one case leaves for a later one

    def presets_or(self, default: Sequence[str]) -> tuple[str, ...]:
        """``--presets`` if given, else ``tiny`` in quick mode, else ``default``."""
        if self.presets:
            return self.presets
        return ("tiny",) if self.quick else tuple(default)


@dataclass
class Row:
    """One measured variant. ``metrics`` hold numbers (images/s, ms, MiB, fraction of the
    limit, ratio vs a named reference row ...); ``params`` say what was measured."""

    case: str
    name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    reference: str | None = None  # the row name this one is compared with (ratios in metrics)


__all__ = ["PAPER_PRESETS", "PRESETS", "Context", "Row", "Skip"]
