"""``DualMLPAdapter``: the paper's Dual-MLP (§3.3) from SemHiTok features to an LLM's width.

Semantic and pixel features live at different levels, so each group gets its own two-layer GELU
MLP (LLaVA's ``mlp2x_gelu`` shape); the two outputs are concatenated along the hidden dimension.
The split of the output width is ``semantic_fraction`` (default 0.5: equal halves, since the paper
does not state it).
"""

from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import nn


class DualMLPAdapter(nn.Module):
    def __init__(
        self, semantic_dim: int, pixel_dim: int, out_dim: int, semantic_fraction: float = 0.5
    ) -> None:
        super().__init__()
        semantic_out = round(out_dim * semantic_fraction)
        pixel_out = out_dim - semantic_out
        if min(semantic_out, pixel_out) < 1:
            raise ValueError(
                f"semantic_fraction={semantic_fraction} leaves no width for one group "
                f"(out_dim={out_dim})"
            )
        self.semantic_dim, self.pixel_dim, self.out_dim = semantic_dim, pixel_dim, out_dim
        self.semantic = Mlp(semantic_dim, hidden_features=semantic_out, out_features=semantic_out)
        self.pixel = Mlp(pixel_dim, hidden_features=pixel_out, out_features=pixel_out)

    def forward(self, semantic: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        """(..., semantic_dim), (..., pixel_dim) -> (..., out_dim)."""
        return torch.cat([self.semantic(semantic), self.pixel(pixel)], dim=-1)
