"""A tiny random-weight Qwen2 with a real byte-level BPE tokenizer and a ChatML template.

For tests, the CPU smoke runs and benchmarks: no hub is needed. The tokenizer is byte-level (it
can never emit an unknown token) and its chat template renders conversations like Qwen2.5's.
From the repository root, a tiny random unified MLLM for ``semhitok-qwen`` smoke runs::

    PYTHONPATH=tests python -m semhitok_fixtures.tiny_qwen [-o outputs/qwen-tiny] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "a photo of a cat sitting on a red sofa",
    "an astronaut in a white suit next to a flag",
    "a cup of coffee on a wooden table",
    "a rocket on the launch pad under a blue sky",
    "Is there a cat in the image? Yes. Is there a dog in the image? No.",
    "What is in the picture? Describe the image in one sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. user assistant system",
]


def tiny_tokenizer(vocab_size: int = 320) -> Qwen2TokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
    )


def save_tiny_qwen(
    directory: str | Path, *, hidden_size: int = 64, table_rows: int | None = None, seed: int = 0
) -> Path:
    """Write a tiny random Qwen2 causal LM and its tokenizer to ``directory``. The embedding
    table is padded beyond the tokenizer, as real Qwen checkpoints are (``table_rows``: e.g.
    Qwen2.5's 151,936, for benchmarks at the real vocabulary size)."""
    tokenizer = tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=table_rows or len(tokenizer) + 8,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def save_tiny_unified(directory: str | Path, *, seed: int = 0) -> Path:
    """A tiny unified MLLM (tiny Qwen2 + the ``tiny`` SemHiTok preset) saved to ``directory``;
    the random Qwen2 it extends is kept under ``directory/qwen``."""
    from semhitok_plugin import SemHiTok, get_preset
    from semhitok_qwen import build_unified, save_unified

    directory = Path(directory)
    qwen = save_tiny_qwen(directory / "qwen", seed=seed)
    torch.manual_seed(seed)  # (by config, not by name: a folder called "tiny" may exist here)
    model, processor = build_unified(qwen, SemHiTok(get_preset("tiny")).eval())
    return save_unified(model, processor, directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semhitok_fixtures.tiny_qwen",
        description="write a tiny random unified MLLM (smoke runs, tests)",
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("tiny-mllm"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote a tiny random unified MLLM to {save_tiny_unified(args.output, seed=args.seed)}")
    return 0


__all__ = ["main", "save_tiny_qwen", "save_tiny_unified", "tiny_tokenizer"]


if __name__ == "__main__":
    sys.exit(main())
