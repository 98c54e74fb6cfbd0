"""Exact per-code usage counts and perplexity, shared by both quantizers.

Counts are exact integers accumulated over every call since the last :meth:`CodeUsage.reset`
(no rolling window, no EMA), on this rank only; evaluation code sums them across ranks if needed.
"""

from __future__ import annotations

import torch
from torch import nn


class CodeUsage(nn.Module):
    def __init__(self, num_codes: int, *, group_size: int | None = None) -> None:
        super().__init__()
        self.num_codes = num_codes
        # Codes form consecutive groups of this size (SGHC: the m entries of a sub-codebook).
        self.group_size = group_size
        # Not persistent: usage is a measurement, not part of the model's weights.
        self.register_buffer("counts", torch.zeros(num_codes, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        ids = ids.reshape(-1)
        # index_add_, not bincount: bincount reads max(ids) back to the host on CUDA.
        self.counts.index_add_(0, ids, torch.ones_like(ids))

    def reset(self) -> None:
        self.counts.zero_()

    def fraction_used(self) -> float:
        """Share of codes selected at least once (an exact count over ``num_codes``)."""
        return int((self.counts > 0).sum()) / self.num_codes

    def fraction_used_in_visited_groups(self) -> float:
        """Mean over groups with any use of the share of their codes used (Tab. 9's "Usage"
        of the sub-codebooks: a semantic code never seen cannot use its pixel entries)."""
        used = (self.counts > 0).view(-1, self.group_size)
        visited = used.any(1)
        return float(used[visited].float().mean()) if visited.any() else 0.0

    def perplexity(self) -> float:
        """exp(entropy) of the empirical code distribution; equals num_codes when uniform."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        p = self.counts[self.counts > 0].double() / total
        return torch.exp(-(p * p.log()).sum()).item()

    def summary(self) -> dict[str, float | int]:
        """``used`` (:meth:`fraction_used`), ``perplexity``, the number of ``codes`` and of
        ``tokens`` counted, and with groups ``used_in_visited_groups``."""
        out = {
            "used": self.fraction_used(),
            "perplexity": self.perplexity(),
            "codes": self.num_codes,
            "tokens": int(self.counts.sum()),
        }
        if self.group_size:
            out["used_in_visited_groups"] = self.fraction_used_in_visited_groups()
        return out
