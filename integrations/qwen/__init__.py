"""The unified MLLM (paper §3.3): Qwen2.5 reading and writing SemHiTok image tokens.

Everything another package needs is importable from here (the lmms-eval model uses only these
names); the submodules hold the rest: :mod:`.train` (HF Trainer stages), :mod:`.data` (JSONL
samples), :mod:`.cli` (``semhitok-qwen``).
"""

from .build import build_unified, check_codebooks, load_unified, parse_dtype, save_unified
from .generation import GeneratedImages, TextOnly, chat, generate_image
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
    "GeneratedImages",
    "ImageVocabulary",
    "SemHiTokQwen2Config",
    "SemHiTokQwen2ForCausalLM",
    "SemHiTokQwenProcessor",
    "TextOnly",
    "build_unified",
    "chat",
    "check_codebooks",
    "generate_image",
    "load_unified",
    "parse_dtype",
    "save_unified",
]
