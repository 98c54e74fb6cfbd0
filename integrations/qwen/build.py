"""Building the unified MLLM from a Qwen2 checkpoint and a SemHiTok model, and loading it back.

A build adds the two image markers to the Qwen tokenizer, extends the LM by the K·m image ids
(:meth:`SemHiTokQwen2ForCausalLM.from_qwen`) and pairs it with a processor; ``save`` writes both
into one directory that :func:`load_unified` (and ``from_pretrained``) read back.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2ForCausalLM
from transformers.integrations import is_deepspeed_zero3_enabled

from semhitok_plugin.config import ConfigError
from semhitok_plugin.model import CheckpointMismatchError, SemHiTok, load_model

from .model import SemHiTokQwen2Config, SemHiTokQwen2ForCausalLM
from .processor import SemHiTokQwenProcessor, add_image_markers


def build_unified(
    qwen: str | Path,
    image_tokenizer: str | SemHiTok,
    *,
    semantic_fraction: float = 0.5,
    unconditional_prompt: str = "",
    torch_dtype: torch.dtype | str | None = None,
    image_head: str = "flat",
) -> tuple[SemHiTokQwen2ForCausalLM, SemHiTokQwenProcessor]:
    """Extend a Qwen2/Qwen2.5 checkpoint (hub id or directory) by SemHiTok's image vocabulary
    (``image_head``: ``"flat"`` K·m head rows, or ``"factorised"`` semantic -> pixel)."""
    # Never code from the checkpoint (no prompt either), and weights from safetensors only.
    tokenizer = AutoTokenizer.from_pretrained(qwen, trust_remote_code=False)
    lm = AutoModelForCausalLM.from_pretrained(
        qwen, torch_dtype=parse_dtype(torch_dtype), trust_remote_code=False, use_safetensors=True
    )
    if not isinstance(lm, Qwen2ForCausalLM):
        raise ValueError(f"{qwen} is a {type(lm).__name__}, not a Qwen2/Qwen2.5 causal LM")
    if isinstance(image_tokenizer, str):
        image_tokenizer = load_model(image_tokenizer)
    markers = add_image_markers(tokenizer)
    # Qwen pads its embedding table beyond the tokenizer (151,936 rows for 151,665 tokens):
    # the image ids start after whichever is larger, so no text id ever moves.
    text_vocab_size = max(len(tokenizer), lm.get_input_embeddings().num_embeddings)
    model = SemHiTokQwen2ForCausalLM.from_qwen(
        lm,
        text_vocab_size,
        markers,
        image_tokenizer,
        semantic_fraction=semantic_fraction,
        unconditional_prompt=unconditional_prompt,
        image_head=image_head,
    )
    model.generation_config = _generation_config(lm, tokenizer)
    return model, SemHiTokQwenProcessor(tokenizer, image_tokenizer, model.config)


def _generation_config(lm: Qwen2ForCausalLM, tokenizer) -> GenerationConfig:
    """Qwen's own generation defaults, ending at the chat template's end of turn as well: a base
    Qwen2.5's eos is ``<|endoftext|>`` while every assistant turn ends with ``<|im_end|>``."""
    config = copy.deepcopy(lm.generation_config)
    eos = config.eos_token_id
    eos = {*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None}
    if "<|im_end|>" in tokenizer.get_vocab():
        eos.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    config.eos_token_id = sorted(eos)
    return config


def save_unified(
    model: SemHiTokQwen2ForCausalLM, processor: SemHiTokQwenProcessor, directory: str | Path
) -> Path:
    """Model, text tokenizer and SemHiTok (under ``semhitok/``) in one directory."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


def load_unified(
    directory: str | Path,
    *,
    image_tokenizer: str | SemHiTok | None = None,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | str | None = None,
) -> tuple[SemHiTokQwen2ForCausalLM, SemHiTokQwenProcessor]:
    """Model and processor from a directory written by :func:`save_unified` (or a training
    checkpoint). The image tokenizer must be the one the model was built with: its codebooks are
    compared with the copies inside the model."""
    check_unified_checkpoint(directory)
    model = SemHiTokQwen2ForCausalLM.from_pretrained(
        directory, torch_dtype=parse_dtype(torch_dtype), use_safetensors=True
    )
    if is_deepspeed_zero3_enabled():
        _load_codebook_buffers(model, Path(directory))
    processor = SemHiTokQwenProcessor.from_pretrained(directory, image_tokenizer)
    check_codebooks(model, processor.image_tokenizer)
    processor.image_tokenizer.to(device)
    if not is_deepspeed_zero3_enabled():  # (DeepSpeed places the partitioned weights itself)
        model.to(device)
    return model.eval(), processor


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | str | None:
    """``torch.bfloat16`` for "bfloat16" (also "bf16", "fp16", "fp32"); None and "auto" (the
    checkpoint's own dtype, as transformers reads it) pass through."""
    if name is None or name == "auto" or isinstance(name, torch.dtype):
        return name
    aliases = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def _load_codebook_buffers(model: SemHiTokQwen2ForCausalLM, directory: Path) -> None:
    """transformers' ZeRO-3 loader (4.46) skips the buffers of modules without parameters of
    their own (``ImageInputEmbedding``): read the frozen codebooks from the checkpoint files."""
    names = {f"image_embed.{n}" for n, _ in model.image_embed.named_buffers(recurse=False)}
    index = directory / "model.safetensors.index.json"
    files = (
        {json.loads(index.read_text())["weight_map"][n] for n in names}
        if index.is_file()
        else {"model.safetensors"}
    )
    with torch.no_grad():
        for file in files:
            with safe_open(directory / file, "pt") as f:
                for name in names & set(f.keys()):
                    model.get_buffer(name).copy_(f.get_tensor(name))


def check_unified_checkpoint(directory: str | Path) -> None:
    """Fail with a clear message unless ``directory`` holds a unified MLLM checkpoint."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{directory} is not a model folder: no config.json")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != SemHiTokQwen2Config.model_type:
        raise ConfigError(
            f"{directory} holds a {model_type!r} model, not a unified MLLM "
            f"({SemHiTokQwen2Config.model_type!r}); build one with build_unified/save_unified"
        )


def check_codebooks(model: SemHiTokQwen2ForCausalLM, image_tokenizer: SemHiTok) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``image_tokenizer``'s codebooks are the ones
    the model's image inputs were built from (same ids, same meaning)."""
    embed = model.image_embed
    semantic, pixel = embed.codebooks_of(image_tokenizer)
    for name, mine, theirs in (
        ("semantic", embed.semantic_codes, semantic),
        ("pixel", embed.pixel_codes, pixel),
    ):
        theirs = theirs.to(mine)
        # unit-norm codes: a bf16 round trip moves them by up to 2e-3, another tokenizer by ~1
        if mine.shape != theirs.shape or not torch.allclose(mine, theirs, atol=4e-3):
            raise CheckpointMismatchError(
                f"the SemHiTok model's {name} codebook differs from the one this MLLM was built "
                "with: its image ids would mean other images"
            )


__all__ = ["build_unified", "check_codebooks", "load_unified", "parse_dtype", "save_unified"]
