"""Analytic forward FLOP counts of the tokenizer's parts, per image.

Convention: a multiply-add is 2 FLOPs, and only matrix products are counted (linear layers, the
patch-embedding convolution, attention's QK^T and AV, the codebook searches). Softmax, layer norms,
GELU, bias adds, l2-normalisation, argmax, gathers and resizes are not: they are a few FLOPs per
element next to hundreds or thousands per element in the products, and they are not what a matmul
peak measures. ``torch.utils.flop_counter.FlopCounterMode`` follows the same convention, which is
how ``tests/test_benchmarks.py`` checks these formulas against the real modules.

Every count is per image; multiply by the batch. Nothing here runs a model: the teacher's shape
(which the config names only by its registry name) is read from the model when one is given, or
from the architecture built on the ``meta`` device (no memory, no weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semhitok_plugin.config import SemHiTokConfig, ViTConfig

#: Parts of ``SemHiTok.encode``, in pipeline order.
ENCODE_PARTS = ("teacher", "semantic_proj", "semantic_search", "pixel_encoder", "sghc")
#: Parts of ``SemHiTok.decode`` (codebook lookups are gathers: 0 FLOPs).
DECODE_PARTS = ("pixel_decoder",)


def linear(tokens: int, d_in: int, d_out: int) -> int:
    """A dense layer applied to ``tokens`` rows (bias adds not counted)."""
    return 2 * tokens * d_in * d_out


def block(tokens: int, width: int, mlp_hidden: int) -> int:
    """One pre-norm transformer block (timm ``Block``): fused QKV, QK^T, AV, output projection,
    two-layer MLP. Attention over all ``tokens`` (no masking)."""
    qkv = linear(tokens, width, 3 * width)
    scores = 2 * tokens * tokens * width  # QK^T summed over heads: heads * L * L * head_dim * 2
    mix = 2 * tokens * tokens * width  # AV, the same
    proj = linear(tokens, width, width)
    mlp = linear(tokens, width, mlp_hidden) + linear(tokens, mlp_hidden, width)
    return qkv + scores + mix + proj + mlp


def mlp_hidden(config: ViTConfig) -> int:
    return int(config.width * config.mlp_ratio)  # as timm's Block rounds it


def token_transformer(tokens: int, d_in: int, config: ViTConfig, d_out: int) -> int:
    """``semhitok_plugin.vit.TokenTransformer``: proj_in, ``depth`` blocks, (norm), proj_out."""
    blocks = config.depth * block(tokens, config.width, mlp_hidden(config))
    return linear(tokens, d_in, config.width) + blocks + linear(tokens, config.width, d_out)


@dataclass(frozen=True)
class TeacherShape:
    """What the teacher's cost depends on, read off a built timm ViT."""

    width: int
    blocks_run: int  # blocks up to and including the distilled layer (timm stops early)
    mlp_hidden: int
    prefix_tokens: int  # class / register tokens (0 for SigLIP)
    patch: int
    in_chans: int


def _timm_vit(teacher: nn.Module) -> nn.Module:
    """The timm VisionTransformer inside a ``FrozenTeacher`` (timm or open_clip SigLIP backend)."""
    module = teacher.backbone.module
    module = getattr(module, "trunk", module)  # open_clip wraps timm ViTs as ``trunk``
    if not (hasattr(module, "blocks") and hasattr(module, "patch_embed")):
        raise NotImplementedError(f"no FLOP formula for teacher {type(module).__name__}")
    return module


def teacher_shape(config: SemHiTokConfig, model: nn.Module | None = None) -> TeacherShape:
    """The teacher's shape, from ``model`` (a ``SemHiTok``) or from ``config`` built on meta."""
    if model is not None:
        teacher = model.teacher
    else:
        from semhitok_plugin.teacher import FrozenTeacher

        with torch.device("meta"):
            teacher = FrozenTeacher(config.teacher, config.canvas_size, load_weights=False)
    vit = _timm_vit(teacher)
    depth = len(vit.blocks)
    first = vit.blocks[0]
    fc1 = first.mlp.fc1
    if fc1.out_features != first.mlp.fc2.in_features:  # a gated (SwiGLU) MLP: not modelled
        raise NotImplementedError(f"no FLOP formula for the MLP {type(first.mlp).__name__}")
    proj = vit.patch_embed.proj
    return TeacherShape(
        width=vit.embed_dim,
        blocks_run=config.teacher.feature_layer % depth + 1,
        mlp_hidden=fc1.out_features,
        prefix_tokens=vit.num_prefix_tokens,
        patch=proj.kernel_size[0],
        in_chans=proj.in_channels,
    )


def _tokens(config: SemHiTokConfig) -> int:
    h, w = config.grid_size
    return h * w


def teacher(config: SemHiTokConfig, shape: TeacherShape) -> int:
    """Patch embedding (a strided conv = a linear layer on flattened patches) and the blocks run
    up to the distilled layer; class/register tokens take part in attention and the MLPs."""
    patches = _tokens(config)
    seq = patches + shape.prefix_tokens
    embed = linear(patches, shape.in_chans * shape.patch**2, shape.width)
    return embed + shape.blocks_run * block(seq, shape.width, shape.mlp_hidden)


def semantic_proj(config: SemHiTokConfig, teacher_width: int) -> int:
    """The timm ``Mlp`` from teacher features to the semantic code dim (hidden = teacher width)."""
    n, d = _tokens(config), config.semantic.code_dim
    return linear(n, teacher_width, teacher_width) + linear(n, teacher_width, d)


def semantic_search(config: SemHiTokConfig) -> int:
    """Cosine nearest-code search: every token against all K codes of dim d."""
    return linear(_tokens(config), config.semantic.code_dim, config.semantic.codebook_size)


def semantic_decoder(config: SemHiTokConfig, teacher_width: int) -> int:
    """Semantic codes -> teacher-width features (``semantic_features``; not part of encode)."""
    sem = config.semantic
    return token_transformer(_tokens(config), sem.code_dim, sem.decoder, teacher_width)


def pixel_encoder(config: SemHiTokConfig) -> int:
    """Flattened patches -> pixel features of ``pixel.code_dim``."""
    p, pix = config.teacher.patch_size, config.pixel
    return token_transformer(_tokens(config), 3 * p * p, pix.encoder, pix.code_dim)


def sghc(config: SemHiTokConfig) -> int:
    """SGHC search: every token against the m codes of its own sub-codebook (not K * m)."""
    return linear(_tokens(config), config.pixel.code_dim, config.pixel.sub_codebook_size)


def pixel_decoder(config: SemHiTokConfig) -> int:
    """Quantised features -> patches, by concat mode; ``sequence`` runs 2L tokens and projects
    all of them out before keeping the pixel half."""
    p, pix, sem_dim = config.teacher.patch_size, config.pixel, config.semantic.code_dim
    tokens = _tokens(config) * (2 if pix.concat == "sequence" else 1)
    d_in = {"none": pix.code_dim, "semantic": sem_dim}.get(pix.concat, sem_dim + pix.code_dim)
    return token_transformer(tokens, d_in, pix.decoder, 3 * p * p)


def tokenizer_flops(config: SemHiTokConfig, model: nn.Module | None = None) -> dict[str, int]:
    """Per-image forward FLOPs of every part, plus the ``encode`` and ``decode`` totals.

    ``semantic_decoder`` is listed for completeness (understanding features, stage-1 training);
    ``encode`` does not run it.
    """
    shape = teacher_shape(config, model)
    parts = {
        "teacher": teacher(config, shape),
        "semantic_proj": semantic_proj(config, shape.width),
        "semantic_search": semantic_search(config),
        "pixel_encoder": pixel_encoder(config),
        "sghc": sghc(config),
        "pixel_decoder": pixel_decoder(config),
        "semantic_decoder": semantic_decoder(config, shape.width),
    }
    parts["encode"] = sum(parts[k] for k in ENCODE_PARTS)
    parts["decode"] = sum(parts[k] for k in DECODE_PARTS)
    return parts


__all__ = [
    "DECODE_PARTS",
    "ENCODE_PARTS",
    "TeacherShape",
    "block",
    "linear",
    "pixel_decoder",
    "pixel_encoder",
    "semantic_decoder",
    "semantic_proj",
    "semantic_search",
    "sghc",
    "teacher",
    "teacher_shape",
    "token_transformer",
    "tokenizer_flops",
]
