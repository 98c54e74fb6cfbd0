"""Typed configuration for the whole tokenizer, serialisable to ``config.json``.

One dataclass per part (teacher, semantic branch, pixel branch) nested in :class:`SemHiTokConfig`.
Every paper choice that the text leaves open is a field here, with the choice we made as its
default and the reason in the field's comment.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONCAT_MODES = ("channel", "sequence", "none", "semantic")
RECON_LOSSES = ("l1", "l2")


class ConfigError(ValueError):
    """A configuration value is invalid or a ``config.json`` does not describe a SemHiTok."""


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be > 0, got {getattr(obj, name)}")


@dataclass
class ViTConfig:
    """Width/depth of a stack of pre-norm transformer blocks (timm ``Block``)."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        _check_positive(self, "width", "depth", "heads")
        if self.width % self.heads:
            raise ConfigError(f"ViT width {self.width} is not divisible by heads {self.heads}")


VIT_B = ViTConfig(width=768, depth=12, heads=12)
VIT_L = ViTConfig(width=1024, depth=24, heads=16)


@dataclass
class TeacherConfig:
    """The frozen text-aligned encoder whose patch features the semantic codebook distils."""

    # Registered teacher backend: "timm" (default) or "open_clip"; plugins may add more.
    backend: str = "timm"
    # Architecture name in the backend's registry (built with random init, never downloaded).
    model_name: str = "vit_large_patch16_siglip_256"
    # Keyword overrides for the architecture (tiny test teachers use these).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Where pretrained weights come from: a hub repo id, a local file or a local directory.
    # None builds the architecture with random weights (tests, ``tiny``).
    weights: str | None = None
    # Patch size of the teacher; the token grid is image_size // patch_size on each side.
    patch_size: int = 16
    # Which block's output is distilled. Default -1: the last block, followed by the model's
    # final norm, i.e. exactly timm's ``forward_features`` patch tokens. VQ-KD distils the last
    # layer; the paper does not name a layer, so this is a choice, kept configurable.
    feature_layer: int = -1
    # Apply the backbone's final norm to the chosen layer (True matches forward_features).
    feature_norm: bool = True
    # Normalisation the teacher expects. Public images are in [-1, 1] (mean = std = 0.5), which is
    # SigLIP's own normalisation, so the defaults make the conversion an identity.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        _check_positive(self, "patch_size")
        self.mean, self.std = tuple(self.mean), tuple(self.std)


@dataclass
class SemanticConfig:
    """Stage 1: projection to a low-dim space, EMA codebook, and the semantic decoder."""

    codebook_size: int = 16384
    code_dim: int = 48
    # EMA momentum of Eq. (4).
    ema_decay: float = 0.99
    commitment_weight: float = 0.25
    # Spherical k-means on the first training batch (VQ-KD does the same).
    kmeans_init: bool = True
    kmeans_iters: int = 10
    # A code unused for this many consecutive training updates is restarted on a random input
    # vector of the current batch. 0 disables restarts.
    dead_code_patience: int = 100
    # Tokens per chunk of the token x codebook similarity matmul (bounds peak memory).
    chunk_size: int = 4096
    # Semantic decoder: 3 self-attention blocks (paper §4.1), as wide as the teacher.
    decoder: ViTConfig = field(default_factory=lambda: ViTConfig(width=1024, depth=3, heads=16))

    def __post_init__(self) -> None:
        _check_positive(self, "codebook_size", "code_dim", "chunk_size", "kmeans_iters")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.dead_code_patience < 0:
            raise ConfigError("dead_code_patience must be >= 0 (0 disables restarts)")


@dataclass
class PixelConfig:
    """Stage 2: ViT pixel encoder, SGHC sub-codebooks and ViT pixel decoder."""

    # m: entries per semantic code. 12 matches the headline table (vocab 196,608); 8 the ablation.
    sub_codebook_size: int = 12
    # Pixel code dimension. The paper does not state it; 8 follows LlamaGen's normalised VQ,
    # whose low-dimensional l2-normalised codes it credits for high codebook usage.
    code_dim: int = 8
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    # Decoder input: "channel" concatenation of semantic and pixel codes (paper default),
    # "sequence" (semantic then pixel tokens), "none" (pixel codes only) -- Tab. 9 ablation --
    # or "semantic" (semantic codes only: the semantic-codebook baseline of Tab. 7, Fig. 5).
    concat: str = "channel"
    # Reconstruction loss of Eq. (7). L2 follows LlamaGen's VQGAN recipe.
    recon_loss: str = "l2"
    # Patch size of the pixel branch; None = the teacher's, so both grids coincide.
    patch_size: int | None = None
    encoder: ViTConfig = field(default_factory=lambda: dataclasses.replace(VIT_B))
    decoder: ViTConfig = field(default_factory=lambda: dataclasses.replace(VIT_B))

    def __post_init__(self) -> None:
        _check_positive(self, "sub_codebook_size", "code_dim")
        if self.concat not in CONCAT_MODES:
            raise ConfigError(f"concat must be one of {CONCAT_MODES}, got {self.concat!r}")
        if self.recon_loss not in RECON_LOSSES:
            raise ConfigError(f"recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")


@dataclass
class SemHiTokConfig:
    """The whole tokenizer.

    The token grid is ``image_size // teacher.patch_size`` per side. When ``image_size`` is not a
    multiple of the patch (384 px with a /14 teacher: 27 x 14 = 378), both branches work on a
    *canvas* of ``grid * patch`` pixels: inputs are resized to it once, so teacher tokens and pixel
    tokens cover exactly the same pixels, and decoded images are resized back to ``image_size``.
    """

    image_size: int = 256
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    pixel: PixelConfig = field(default_factory=PixelConfig)

    def __post_init__(self) -> None:
        _check_positive(self, "image_size")
        if self.image_size < self.teacher.patch_size:
            raise ConfigError("image_size is smaller than one teacher patch")
        if self.pixel.patch_size not in (None, self.teacher.patch_size):
            raise ConfigError(
                f"pixel.patch_size={self.pixel.patch_size} must equal teacher.patch_size="
                f"{self.teacher.patch_size}: SGHC needs one pixel token per semantic token"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.teacher.patch_size
        return side, side

    @property
    def canvas_size(self) -> int:
        return self.grid_size[0] * self.teacher.patch_size

    @property
    def vocab_size(self) -> int:
        return self.semantic.codebook_size * self.pixel.sub_codebook_size

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemHiTokConfig:
        return from_plain(cls, data, "config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SemHiTokConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)


def from_plain(cls: type, data: Any, where: str) -> Any:
    """Rebuild (nested) dataclass ``cls`` from JSON/YAML data, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown} (known: {sorted(known)})")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_in(hints[name])
        if sub:
            value = from_plain(sub, value, f"{where}.{name}")
        elif isinstance(value, list) and _is_tuple(hints[name]):
            value = tuple(value)  # JSON and YAML have no tuples
        kwargs[name] = value
    return cls(**kwargs)


def _is_tuple(hint: Any) -> bool:
    return (
        hint is tuple
        or typing.get_origin(hint) is tuple
        or any(_is_tuple(a) for a in typing.get_args(hint) if typing.get_origin(hint) is not tuple)
    )


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


__all__ = [
    "CONCAT_MODES",
    "VIT_B",
    "VIT_L",
    "ConfigError",
    "PixelConfig",
    "SemHiTokConfig",
    "SemanticConfig",
    "TeacherConfig",
    "ViTConfig",
]
