"""SemHiTok: a unified discrete image tokenizer with a Semantic-Guided Hierarchical Codebook."""

from .adapter import DualMLPAdapter
from .config import (
    ConfigError,
    PixelConfig,
    SemanticConfig,
    SemHiTokConfig,
    TeacherConfig,
    ViTConfig,
)
from .hub import WeightsNotFoundError
from .ids import TokenIdError, merge_ids, split_ids
from .model import CheckpointMismatchError, SemHiTok, TokenizerOutput, load_model
from .plugins import available_presets, get_preset
from .semantic_codebook import SemanticCodebook
from .sghc import SubCodebookQuantizer

__version__ = "0.1.0"

__all__ = [
    "CheckpointMismatchError",
    "ConfigError",
    "DualMLPAdapter",
    "PixelConfig",
    "SemHiTok",
    "SemHiTokConfig",
    "SemanticCodebook",
    "SemanticConfig",
    "SubCodebookQuantizer",
    "TeacherConfig",
    "TokenIdError",
    "TokenizerOutput",
    "ViTConfig",
    "WeightsNotFoundError",
    "available_presets",
    "get_preset",
    "load_model",
    "merge_ids",
    "split_ids",
]
