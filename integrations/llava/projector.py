"""``--mm_projector_type dual_mlp2x_gelu``: the paper's Dual-MLP as a LLaVA projector.

LLaVA calls its projector on one tensor, the tower's features; this one splits them back into
the semantic and pixel groups and runs the core :class:`~semhitok_plugin.DualMLPAdapter`. Every
size it needs is written into the model config (``mm_semantic_hidden_size``,
``mm_pixel_hidden_size``, ``mm_dual_semantic_fraction``), so a reload rebuilds it from the config
alone, and it lives under ``mm_projector`` like LLaVA's own projectors, so
``--tune_mm_mlp_adapter`` / ``--pretrain_mm_mlp_adapter`` save and load it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from semhitok_plugin import DualMLPAdapter
from semhitok_plugin.model import resolve_config

from .tower import feature_dims, is_semhitok_tower, tokenizer_spec

DUAL_MLP = "dual_mlp2x_gelu"


class DualMLPProjector(DualMLPAdapter):
    def forward(self, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(..., semantic_dim + pixel_dim) -> (..., out_dim)."""
        semantic, pixel = features.split([self.semantic_dim, self.pixel_dim], dim=-1)
        return super().forward(semantic, pixel)

    @classmethod
    def from_config(cls, config: Any) -> DualMLPProjector:
        """Build from a LLaVA model config, recording the sizes in it on first use."""
        if getattr(config, "mm_pixel_hidden_size", None) is None:
            config.mm_semantic_hidden_size, config.mm_pixel_hidden_size = _split(config)
        if not config.mm_pixel_hidden_size:
            raise ValueError(
                f"{DUAL_MLP} needs semantic and pixel features, but mm_vision_select_feature="
                f"{config.mm_vision_select_feature!r} gives semantic features only; use "
                "mlp2x_gelu for that ablation"
            )
        config.mm_dual_semantic_fraction = getattr(config, "mm_dual_semantic_fraction", 0.5)
        return cls(
            config.mm_semantic_hidden_size,
            config.mm_pixel_hidden_size,
            config.hidden_size,
            semantic_fraction=config.mm_dual_semantic_fraction,
        )


def _split(config: Any) -> tuple[int, int]:
    tower = getattr(config, "mm_vision_tower", None)
    if not is_semhitok_tower(tower):
        raise ValueError(
            f"{DUAL_MLP} splits SemHiTok features into semantic and pixel groups; it needs "
            f"--vision_tower semhitok[:spec], not {tower!r}"
        )
    select = getattr(config, "mm_vision_select_feature", None) or "patch"
    return feature_dims(resolve_config(tokenizer_spec(tower))[0], select)
