"""Token transformers for the pixel encoder, the pixel decoder and the semantic decoder.

One module does all three: linear input projection -> learned positions -> timm pre-norm blocks
(``scaled_dot_product_attention``) -> final norm -> linear output projection. The pixel encoder
feeds it flattened patches (a linear patch embedding, equivalent to timm's strided conv), the pixel
decoder reads patches out of it.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ViTConfig


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), raster order, channels last within a patch."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify` for 3-channel images."""
    b, (gh, gw) = tokens.shape[0], grid
    x = tokens.reshape(b, gh, gw, patch, patch, 3)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, 3, gh * patch, gw * patch)


class TokenTransformer(nn.Module):
    def __init__(self, in_dim: int, config: ViTConfig, num_tokens: int, out_dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(in_dim, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, config.width))
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, mlp_ratio=config.mlp_ratio, qkv_bias=True)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.proj_out = nn.Linear(config.width, out_dim)
        self.gradient_checkpointing = False
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x) + self.pos_embed
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.proj_out(self.norm(x))


class PixelEncoder(nn.Module):
    """Images on the canvas -> one pixel feature per grid cell (B, L, code_dim)."""

    def __init__(self, config: ViTConfig, patch: int, grid: tuple[int, int], code_dim: int):
        super().__init__()
        self.patch = patch
        self.transformer = TokenTransformer(3 * patch * patch, config, grid[0] * grid[1], code_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.transformer(patchify(images, self.patch))


class PixelDecoder(nn.Module):
    """Quantised semantic + pixel tokens -> image patches, by the paper's concat mode (Tab. 9).

    * ``channel``: each token is [semantic code ; pixel code] (the paper's default).
    * ``sequence``: 2L tokens, the L semantic codes then the L pixel codes, each zero-padded into
      the same [semantic ; pixel] layout (so one projection serves both; positions tell them
      apart); patches are read from the pixel half.
    * ``none``: pixel codes only.
    * ``semantic``: semantic codes only (ablation baseline: what the semantic codebook alone
      can reconstruct).
    """

    def __init__(
        self, config: ViTConfig, mode: str, sem_dim: int, pix_dim: int, patch: int, grid: tuple
    ) -> None:
        super().__init__()
        self.mode, self.patch, self.grid = mode, patch, grid
        self.sem_dim, self.pix_dim = sem_dim, pix_dim
        num_tokens = grid[0] * grid[1] * (2 if mode == "sequence" else 1)
        in_dim = {"none": pix_dim, "semantic": sem_dim}.get(mode, sem_dim + pix_dim)
        self.transformer = TokenTransformer(in_dim, config, num_tokens, 3 * patch * patch)

    def forward(self, sem: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
        if self.mode == "channel":
            x = torch.cat([sem, pix], dim=-1)
        elif self.mode in ("none", "semantic"):
            x = pix if self.mode == "none" else sem
        else:
            x = torch.cat(
                [
                    nn.functional.pad(sem, (0, self.pix_dim)),
                    nn.functional.pad(pix, (self.sem_dim, 0)),
                ],
                dim=1,
            )
        patches = self.transformer(x)[:, -pix.shape[1] :]
        return unpatchify(patches, self.patch, self.grid)
