"""``SemHiTokVQModel``: SemHiTok behind LlamaGen's ``VQModel`` interface.

LlamaGen's AR side touches its tokenizer only through a few calls (contract read from
FoundationVision/LlamaGen ``tokenizer/tokenizer_image/vq_model.py`` and the scripts that use it):

* ``VQ_models[name](codebook_size=..., codebook_embed_dim=...)`` builds it;
* ``load_state_dict(torch.load(ckpt)["model"])`` (strict; reconstruction prefers ``"ema"``);
* ``quant, emb_loss, (_, _, indices) = encode(x)`` with x in [-1, 1]; ``indices`` int64
  ``(B*h*w,)`` in raster order, ``quant`` ``(B, C, h, w)``;
* ``decode_code(codes, shape, channel_first=True)`` with int32 ``(B, h*w)`` or int64
  ``(B*h*w,)`` codes, where ``shape = [B, codebook_embed_dim, h, w]`` comes from CLI values;
* ``decode(quant)``.

A SemHiTok token's feature is the channel concatenation of its quantised semantic and pixel
codes (what the pixel decoder reads), so ``C = d_semantic + d_pixel`` (56 for the paper presets),
whatever ``--codebook-embed-dim`` says: ``decode_code`` takes only ``shape[0]``, ``shape[2]`` and
``shape[3]`` (batch and grid) from ``shape`` and checks them against the codes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from semhitok_plugin import SemHiTok
from semhitok_plugin.config import SemHiTokConfig
from semhitok_plugin.ids import TokenIdError, check_ids
from semhitok_plugin.model import CheckpointMismatchError, check_state_dict, resolve_config


class SemHiTokVQModel(nn.Module):
    """A SemHiTok model as a LlamaGen VQ model (inference: the tokenizer is frozen)."""

    def __init__(self, tokenizer: SemHiTok, spec: str = "") -> None:
        super().__init__()
        self.spec = spec or tokenizer.name_or_path  # what the factory built (for messages)
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        sem, pix = tokenizer.config.semantic, tokenizer.config.pixel
        self.semantic_dim, self.pixel_dim = sem.code_dim, pix.code_dim

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def embed_dim(self) -> int:
        """Channels of ``quant``: the semantic and the pixel code, concatenated."""
        return self.semantic_dim + self.pixel_dim

    def encode(self, x: torch.Tensor):
        """``(quant (B, C, h, w), emb_loss, (None, None, indices (B*h*w,) int64))``; emb_loss
        is LlamaGen's tuple ``(vq_loss, commit_loss, entropy_loss, codebook_usage)`` as its
        quantizer returns it outside training (the tokenizer here never trains)."""
        out = self.tokenizer.encode(x)
        h, w = self.tokenizer.grid_size
        features = torch.cat([out.sem_features, out.pix_features], dim=-1)  # (B, h*w, C)
        quant = features.transpose(1, 2).reshape(len(x), self.embed_dim, h, w)
        return quant, (None, None, None, 0), (None, None, out.flat_ids.flatten())

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from ``quant`` (B, C, h, w) as :meth:`encode` returns it."""
        if quant.ndim != 4 or quant.shape[1] != self.embed_dim:
            raise ValueError(
                f"quant must be (B, {self.embed_dim}, h, w) (semantic ⊕ pixel codes), got "
                f"{tuple(quant.shape)}"
            )
        features = quant.flatten(2).transpose(1, 2)
        sem, pix = features.split([self.semantic_dim, self.pixel_dim], dim=-1)
        with torch.no_grad():
            return self.tokenizer.decode_features(sem, pix).clamp(-1, 1)

    def decode_code(
        self, code_b: torch.Tensor, shape=None, channel_first: bool = True
    ) -> torch.Tensor:
        """Images from codes: int32 ``(B, h*w)``, int64 ``(B*h*w,)`` or ``(B, h, w)``.

        ``shape`` is LlamaGen's ``[B, C, h, w]`` (``[B, h, w, C]`` when not ``channel_first``);
        its C is LlamaGen's ``--codebook-embed-dim`` and is ignored. Codes are checked before
        any conversion: a float or too narrow code tensor is refused, never rounded or wrapped."""
        check_ids(code_b, self.codebook_size, "codes")
        h, w = self.tokenizer.grid_size
        if shape is not None:
            batch, rows, cols = (
                (shape[0], shape[2], shape[3]) if channel_first else (shape[0], shape[1], shape[2])
            )
            if (rows, cols) != (h, w):
                raise TokenIdError(
                    f"shape asks for a {rows}x{cols} grid, this tokenizer's is {h}x{w}: "
                    f"use --image-size {self.tokenizer.config.image_size} and "
                    f"--downsample-size {self.tokenizer.config.teacher.patch_size}"
                )
        else:
            batch = code_b.numel() // (h * w)
        if code_b.numel() != batch * h * w:
            raise TokenIdError(
                f"{code_b.numel()} codes do not make {batch} images of {h}x{w} tokens"
            )
        return self.tokenizer.decode(code_b.reshape(batch, h * w).long())

    def forward(self, x: torch.Tensor):
        """``(reconstruction, emb_loss)``, as LlamaGen's ``VQModel.forward``."""
        quant, emb_loss, _ = self.encode(x)
        return self.decode(quant), emb_loss

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, **kw):
        """As ``nn.Module``'s; a strict load that does not fit raises
        :class:`CheckpointMismatchError` naming the tensors (which preset/config to build)."""
        if strict:
            check_state_dict(
                self, dict(state_dict), "the --vq-ckpt", f"{type(self).__name__}({self.spec!r})"
            )
        return super().load_state_dict(state_dict, strict=strict, **kw)


def vq_model_factory(spec: str):
    """A LlamaGen ``VQ_models`` entry for a SemHiTok preset, directory or hub id.

    The architecture comes from ``spec``'s config alone; the weights come from LlamaGen's
    ``load_state_dict(checkpoint["model"])`` (a file written by ``semhitok_llamagen.export``).
    """

    def build(codebook_size: int | None = None, codebook_embed_dim: int | None = None, **_):
        config, _ = resolve_config(spec)
        check_codebook_size(config, codebook_size)
        return SemHiTokVQModel(SemHiTok(config, load_teacher_weights=False), spec)

    build.__name__ = f"SemHiTok({spec})"
    return build


def check_codebook_size(config: SemHiTokConfig, codebook_size: int | None) -> None:
    """LlamaGen's ``--codebook-size`` must be SemHiTok's flat vocabulary K·m."""
    k, m = config.semantic.codebook_size, config.pixel.sub_codebook_size
    if codebook_size is not None and codebook_size != k * m:
        raise CheckpointMismatchError(
            f"--codebook-size {codebook_size} does not match SemHiTok's flat vocabulary "
            f"K·m = {k} x {m} = {k * m}: pass --codebook-size {k * m} (and --vocab-size "
            f"{k * m} to the GPT)"
        )


# LlamaGen names: "<tokenizer>-<downsample>" like its VQ-16 / VQ-8
VQ_PRESETS = {
    "SemHiTok-16": "siglip-l16-256",
    "SemHiTok-16-enhance": "siglip-l16-256-enhance",
    "SemHiTok-14-384": "siglip-so400m14-384",
    "SemHiTok-14-384-enhance": "siglip-so400m14-384-enhance",
}

VQ_models = {name: vq_model_factory(preset) for name, preset in VQ_PRESETS.items()}

__all__ = [
    "VQ_PRESETS",
    "SemHiTokVQModel",
    "VQ_models",
    "check_codebook_size",
    "vq_model_factory",
]
