"""Built-in presets, registered through the same plugin hook that other packages use.

* ``siglip-l16-256``: the paper's 256 px tokenizer. SigLIP-L/16-256 teacher, 16 x 16 tokens,
  K = 16384 semantic codes of dim 48, m = 12 pixel codes each (vocab 196,608), ViT-B pixel
  encoder and decoder.
* ``siglip-so400m14-384``: the 384 px tokenizer. SigLIP-so400m/14-384 teacher, 27 x 27 = 729
  tokens on a 378 px canvas (see ``SemHiTokConfig``), otherwise as above.
* ``*-enhance``: the same with the ViT-L "enhance decoder" of stage 3.
* ``tiny``: a random 2-block teacher at 64 px (8 x 8 tokens), for tests and CPU smoke runs.

Teacher weights default to timm's hub repos for these SigLIP checkpoints; pass a local file or
directory instead where the hub is unreachable.
"""

from __future__ import annotations

import dataclasses

from .config import (
    VIT_B,
    VIT_L,
    PixelConfig,
    SemanticConfig,
    SemHiTokConfig,
    TeacherConfig,
    ViTConfig,
)
from .plugins import hookimpl

L16, SO400M14 = "vit_large_patch16_siglip_256", "vit_so400m_patch14_siglip_384"


def siglip(image_size: int, teacher: str, patch: int, width: int, decoder: ViTConfig = VIT_B):
    """A paper preset: a timm SigLIP teacher (weights from timm's hub repo), K = 16384 x 48-d
    semantic codes with a 3-block decoder as wide as the teacher, m = 12 pixel codes each."""
    return SemHiTokConfig(
        image_size=image_size,
        teacher=TeacherConfig(
            model_name=teacher, weights=f"timm/{teacher}.webli", patch_size=patch
        ),
        semantic=SemanticConfig(decoder=ViTConfig(width=width, depth=3, heads=16)),
        pixel=PixelConfig(decoder=dataclasses.replace(decoder)),
    )


def tiny() -> SemHiTokConfig:
    small = ViTConfig(width=32, depth=1, heads=2, mlp_ratio=2.0)
    return SemHiTokConfig(
        image_size=64,
        teacher=TeacherConfig(
            model_name="vit_base_patch16_siglip_256",
            model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
            weights=None,
            patch_size=8,
        ),
        semantic=SemanticConfig(
            codebook_size=64,
            code_dim=8,
            kmeans_iters=2,
            dead_code_patience=20,
            decoder=ViTConfig(width=32, depth=3, heads=2, mlp_ratio=2.0),
        ),
        pixel=PixelConfig(
            sub_codebook_size=4, code_dim=4, encoder=small, decoder=dataclasses.replace(small)
        ),
    )


@hookimpl
def semhitok_presets() -> dict[str, SemHiTokConfig]:
    return {
        "siglip-l16-256": siglip(256, L16, 16, 1024),
        "siglip-l16-256-enhance": siglip(256, L16, 16, 1024, VIT_L),
        "siglip-so400m14-384": siglip(384, SO400M14, 14, 1152),
        "siglip-so400m14-384-enhance": siglip(384, SO400M14, 14, 1152, VIT_L),
        "tiny": tiny(),
    }
