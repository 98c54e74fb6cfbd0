"""The unified MLLM (paper §3.3): Qwen2.5 reading and writing SemHiTok image tokens."""

from .build import build_unified, check_codebooks, load_unified, save_unified
from .model import (
    IMAGE_END,
    IMAGE_START,
    ImageVocabulary,
    SemHiTokQwen2Config,
    SemHiTokQwen2ForCausalLM,
)
from .processor import IGNORE_INDEX, IMAGE_PLACEHOLDER, Decoded, SemHiTokQwenProcessor

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_END",
    "IMAGE_PLACEHOLDER",
    "IMAGE_START",
    "Decoded",
    "ImageVocabulary",
    "SemHiTokQwen2Config",
    "SemHiTokQwen2ForCausalLM",
    "SemHiTokQwenProcessor",
    "build_unified",
    "check_codebooks",
    "load_unified",
    "save_unified",
]
