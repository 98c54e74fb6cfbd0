"""Typed configuration for the whole tokenizer, serialisable to ``config.json``.

One dataclass per part (teacher, semantic branch, pixel branch) nested in :class:`SemHiTokConfig`.
Every paper choice that the text leaves open is a field here, with the choice we made as its
default and the reason in the field's comment.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

CONCAT_MODES = ("channel", "sequence", "none", "semantic")
RECON_LOSSES = ("l1", "l2")
QUANTIZERS = ("ema", "vanilla", "norm")  # semantic codebook update rules (Tab. 9 "VQ type")


class ConfigError(ValueError):
    """A configuration value is invalid or a ``config.json`` does not describe a SemHiTok.

    The message is one line that names the field, the value and what the field accepts: the
    ``semhitok`` CLI prints it as its whole answer.
    """


# -- what a field accepts --------------------------------------------------------------------------
# A field's annotation is its whole contract: the type, and in ``Annotated`` metadata a range or
# a set of choices. One checker (:func:`check_value`) reads it for ``from_plain`` (YAML, JSON,
# ``--set``) and for ``__post_init__`` (Python callers): declaring a field is validating it.
@dataclass(frozen=True)
class Bounds:
    """A numeric range: ``Annotated[int, Bounds(gt=0)]``; None leaves that side open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        sides = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {bound:g}" for op, bound in sides if bound is not None)


@dataclass(frozen=True)
class OneOf:
    """A closed set of choices: ``Annotated[str, OneOf(("l1", "l2"))]``."""

    choices: tuple[Any, ...]

    def admits(self, value: Any) -> bool:
        return value in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.choices))


PositiveInt = Annotated[int, Bounds(gt=0)]
NonNegativeInt = Annotated[int, Bounds(ge=0)]
PositiveFloat = Annotated[float, Bounds(gt=0)]
NonNegativeFloat = Annotated[float, Bounds(ge=0)]


class _Mismatch(Exception):
    """The value has the wrong type; the caller words the message for the whole annotation."""


def check_value(hint: Any, value: Any, label: str) -> Any:
    """``value`` as a field annotated ``hint`` holds it, or a :class:`ConfigError` naming ``label``.

    Normalises what YAML and JSON cannot say: lists become tuples, integers become floats, and
    strings that spell a float do too (YAML 1.1 reads ``1e-4`` as a string). Booleans are never
    numbers, and floats must be finite.
    """
    try:
        return _coerce(hint, value, label)
    except _Mismatch:
        raise ConfigError(f"{label} must be {_describe(hint)}, got {_show(value)}") from None


def check_fields(config: Any) -> None:
    """Check every field of dataclass ``config`` against its annotation, storing the normalised
    value; for ``__post_init__``, where errors name ``Class.field``."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not dataclasses.is_dataclass(value):  # a nested config checked itself
            label = f"{type(config).__name__}.{f.name}"
            setattr(config, f.name, check_value(hints[f.name], value, label))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _coerce(hint: Any, value: Any, label: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        value = _coerce(args[0], value, label)
        for rule in args[1:]:
            if isinstance(rule, Bounds | OneOf) and not rule.admits(value):
                raise ConfigError(f"{label} must be {rule}, got {_show(value)}")
        return value
    if origin is typing.Union or origin is types.UnionType:
        for option in args:
            try:
                return _coerce(option, value, label)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _Mismatch
    if hint is float:
        return _as_float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple:
        return _as_tuple(args, value, label)
    if hint is dict or origin is dict:
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            return value
        raise _Mismatch
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # Any, and annotations with no contract here


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise _Mismatch
    try:
        number = float(value)
    except ValueError:
        raise _Mismatch from None
    if not math.isfinite(number):
        raise _Mismatch
    return number


def _as_tuple(args: tuple[Any, ...], value: Any, label: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple) or len(value) != len(args):
        raise _Mismatch
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(_coerce(arg, item, f"{label}[{i}]") for i, (arg, item) in pairs)


def _describe(hint: Any) -> str:
    """What an annotation accepts, in words: ``a list of 2 numbers``, ``a string or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _describe(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} values, each {_describe(args[0])}"
    words = {type(None): "null", bool: "true or false", int: "an integer", str: "a string"}
    if hint in words:
        return words[hint]
    if hint is float:
        return "a finite number"
    if hint is dict or origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping (key: value)"
    return str(hint)


def _show(value: Any, width: int = 60) -> str:
    """``repr(value)`` on one line, clipped: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class ViTConfig:
    """Width/depth of a stack of pre-norm transformer blocks (timm ``Block``)."""

    width: PositiveInt = 768
    depth: PositiveInt = 12
    heads: PositiveInt = 12
    mlp_ratio: PositiveFloat = 4.0

    def __post_init__(self) -> None:
        check_fields(self)
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
    patch_size: PositiveInt = 16
    # Which block's output is distilled. Default -1: the last block, followed by the model's
    # final norm, i.e. exactly timm's ``forward_features`` patch tokens. VQ-KD distils the last
    # layer; the paper does not name a layer, so this is a choice, kept configurable.
    feature_layer: int = -1
    # Apply the backbone's final norm to the chosen layer (True matches forward_features).
    feature_norm: bool = True
    # Normalisation the teacher expects. Public images are in [-1, 1] (mean = std = 0.5), which is
    # SigLIP's own normalisation, so the defaults make the conversion an identity.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SemanticConfig:
    """Stage 1: projection to a low-dim space, EMA codebook, and the semantic decoder."""

    codebook_size: PositiveInt = 16384
    code_dim: PositiveInt = 48
    # Update rule of the codebook, Tab. 9 "VQ type": "ema" (Eq. 4), "vanilla" (gradient,
    # Euclidean) or "norm" (gradient, l2-normalised, LlamaGen's VQ). The paper finds EMA best and
    # Norm worst ("Norm VQ is not suitable for semantic discretization"). That sentence is about
    # the gradient-trained normalised VQ, not about normalisation under EMA: the paper's EMA
    # codebook "follows VQKD", whose EMA codebook is l2-normalised with cosine search. So the
    # default is EMA with l2_norm on, VQ-KD's codebook; l2_norm off (EMA in Euclidean space) is
    # the other reading of "normalization hurts", measured in docs/ablation.md.
    quantizer: Annotated[str, OneOf(QUANTIZERS)] = "ema"
    l2_norm: bool = True  # "ema" only; "norm" always normalises, "vanilla" never
    # EMA momentum of Eq. (4).
    ema_decay: Annotated[float, Bounds(ge=0, lt=1)] = 0.99
    commitment_weight: NonNegativeFloat = 0.25
    # Spherical k-means on the first training batch (VQ-KD does the same).
    kmeans_init: bool = True
    kmeans_iters: PositiveInt = 10
    # A code unused for this many consecutive training updates is restarted on a random input
    # vector of the current batch. 0 disables restarts.
    dead_code_patience: NonNegativeInt = 100
    # Tokens per chunk of the token x codebook similarity matmul (bounds peak memory).
    chunk_size: PositiveInt = 4096
    # Semantic decoder: 3 self-attention blocks (paper §4.1), as wide as the teacher.
    decoder: ViTConfig = field(default_factory=lambda: ViTConfig(width=1024, depth=3, heads=16))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PixelConfig:
    """Stage 2: ViT pixel encoder, SGHC sub-codebooks and ViT pixel decoder."""

    # m: entries per semantic code. The paper contradicts itself: its text assigns "8 pixel
    # sub-codes to each semantic code", its Tab. 2 vocabulary is 196,608 = 16,384 x 12. The
    # default follows Tab. 2, because the headline rFID (1.16) and the MLLM's vocabulary are
    # that model's; Tab. 9 has both (m = 8: rFID 1.42, usage 96.4 %; m = 12: 1.26, 93.7 %) and
    # Tab. 7's rFID 1.42 is the m = 8 row; the CPU demo uses 8 (configs/demo_cpu/stage1.yaml).
    sub_codebook_size: PositiveInt = 12
    # Pixel code dimension. The paper does not state it; 8 follows LlamaGen's normalised VQ,
    # whose low-dimensional l2-normalised codes it credits for high codebook usage.
    code_dim: PositiveInt = 8
    commitment_weight: NonNegativeFloat = 0.25
    codebook_weight: NonNegativeFloat = 1.0
    # Stage 2 sets each sub-codebook's m entries from the first features routed to it, and
    # moves an entry unused for this many visits of its sub-codebook onto a routed feature
    # (0: never). With random init, 40 % of the entries of a visited sub-codebook were used at
    # m = 12 at demo scale (docs/ablation.md); LlamaGen has neither and reports usage over a window.
    data_init: bool = True
    dead_code_patience: NonNegativeInt = 100
    # Decoder input: "channel" concatenation of semantic and pixel codes (paper default),
    # "sequence" (semantic then pixel tokens), "none" (pixel codes only) -- Tab. 9 ablation --
    # or "semantic" (semantic codes only: the semantic-codebook baseline of Tab. 7, Fig. 5).
    concat: Annotated[str, OneOf(CONCAT_MODES)] = "channel"
    # Reconstruction loss of Eq. (7). L2 follows LlamaGen's VQGAN recipe.
    recon_loss: Annotated[str, OneOf(RECON_LOSSES)] = "l2"
    # Patch size of the pixel branch; None = the teacher's, so both grids coincide.
    patch_size: PositiveInt | None = None
    encoder: ViTConfig = field(default_factory=lambda: dataclasses.replace(VIT_B))
    decoder: ViTConfig = field(default_factory=lambda: dataclasses.replace(VIT_B))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SemHiTokConfig:
    """The whole tokenizer.

    The token grid is ``image_size // teacher.patch_size`` per side. When ``image_size`` is not a
    multiple of the patch (384 px with a /14 teacher: 27 x 14 = 378), both branches work on a
    *canvas* of ``grid * patch`` pixels: inputs are resized to it once, so teacher tokens and pixel
    tokens cover exactly the same pixels, and decoded images are resized back to ``image_size``.

    What the 378 px canvas costs at 384, measured on the six bundled photos (ADM crop to 384):
    the bicubic round trip 384 -> 378 -> 384 alone reconstructs them at 43.4 dB PSNR (256 -> 252
    -> 256: 41.5 dB), a ceiling ~18 dB above any tokenizer's reconstruction (an extra MSE of
    ~1 % of a 25 dB tokenizer's, ~0.05 dB). A pixel branch that keeps 384 natively but follows the
    teacher's tokens has to drop the last 6 px as SigLIP-so400m/14's stride-14 patches do; filling
    that border (edge-replicated) caps it at 37.0 dB. The canvas is kept.
    """

    image_size: PositiveInt = 256
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    pixel: PixelConfig = field(default_factory=PixelConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.image_size < self.teacher.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} is smaller than one teacher patch "
                f"(teacher.patch_size={self.teacher.patch_size})"
            )
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
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"no SemHiTok config file {str(path)!r} (a model is a preset name, see "
                "`semhitok presets`, or a config.json)"
            )
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)


def from_plain(cls: type, data: Any, where: str) -> Any:
    """Rebuild (nested) dataclass ``cls`` from JSON/YAML data.

    Unknown keys, missing required keys and values their annotation does not accept (see
    :func:`check_value`) raise a one-line :class:`ConfigError` naming the field by its dotted path.
    ``where`` names the object (an identifier such as ``config``: ``config.pixel.concat``) or the
    source (a file: ``stage1.yaml: data.crop``).
    """
    return _build(cls, data, where, "")


def _build(cls: type, data: Any, where: str, path: str) -> Any:
    label = _label(where, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be {_describe(cls)}, got {_show(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{label} has unknown keys {unknown} (known: {sorted(fields)})")
    kwargs = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        sub = _dataclass_in(hints[name])
        if sub and isinstance(value, dict):
            kwargs[name] = _build(sub, value, where, key)
        else:
            kwargs[name] = check_value(hints[name], value, _label(where, key))
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise ConfigError(f"{_label(where, f'{path}.{name}' if path else name)} is required")
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a rule across fields: say where the object is
        raise ConfigError(f"{label}: {err}") from None


def _label(where: str, path: str) -> str:
    if not path:
        return where
    return f"{where}.{path}" if where.isidentifier() else f"{where}: {path}"


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
    "Bounds",
    "ConfigError",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OneOf",
    "PixelConfig",
    "PositiveFloat",
    "PositiveInt",
    "SemHiTokConfig",
    "SemanticConfig",
    "TeacherConfig",
    "ViTConfig",
    "check_fields",
    "check_value",
    "from_plain",
]
