"""Image-generation speed of the unified MLLM: tokens/s with and without the image-slice head,
with and without classifier-free guidance, side by side in one run.

``generate_image`` samples image ids only, so by default it multiplies the last hidden state by
the head's K·m image rows instead of the whole head (``image_slice_head``). Random-weight models
are built in memory and the four ways of sampling timed alternately (``harness.alternate``):

* ``--lm tiny`` (default, CPU): a 2-layer × 64 LM, once with the tiny tokenizer and the ``tiny``
  SemHiTok (336 text + 256 image ids), once at the paper's vocabulary — Qwen2.5's 151,936-row
  text table and K = 16,384, m = 12 (196,608 image ids) — where the head dominates a small LM;
* ``--lm qwen2.5-0.5b`` / ``qwen2.5-7b`` (GPU): the Qwen2.5 shapes at the paper's vocabulary.

The image tokenizer is the ``tiny`` preset resized to the grid asked for (``--grid``; 8 × 8 by
default, 4 × 4 in quick mode, 16 × 16 is the paper's 256 px), since only its codebooks matter
here. ``--batches`` (the largest; default 1) prompts are sampled together. Tokens/s counts image
tokens delivered; CFG runs two streams per image. Sampling is top-k 100, seed fixed, no pixel
decoding. The text tokenizer is the byte-level test fixture (``semhitok_fixtures``: run with
``PYTHONPATH=tests``).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks.suite import Context, Row, Skip
from benchmarks.suite.harness import Op, alternate, median

NAME = "mllm_generation"
QWEN_TEXT_ROWS = 151_936
LM_SHAPES = {  # hidden, layers, heads, kv heads, MLP width (Qwen2.5 configs on the hub)
    "tiny": (64, 2, 4, 2, 128),
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864),
    "qwen2.5-7b": (3584, 28, 28, 4, 18944),
}
WAYS = {  # name: (image_slice_head, cfg_scale)
    "full head": (False, 1.0),
    "image-slice head": (True, 1.0),
    "full head + CFG": (False, 4.0),
    "image-slice head + CFG": (True, 4.0),
}
TOP_K = 100


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--lm", choices=LM_SHAPES, default="tiny", help="LM shape (random weights)")
    group.add_argument("--grid", type=int, help="image tokens per side (default 8; quick 4)")


def build(lm: str, paper_vocab: bool, grid: int, device: torch.device, dtype: torch.dtype):
    """A random unified model and its processor, built directly on ``device``."""
    from semhitok_plugin import SemHiTok, get_preset
    from semhitok_qwen import SemHiTokQwen2Config, SemHiTokQwen2ForCausalLM
    from semhitok_qwen.processor import SemHiTokQwenProcessor, add_image_markers

    try:
        from semhitok_fixtures.tiny_qwen import tiny_tokenizer
    except ModuleNotFoundError as err:
        raise Skip("the tiny text tokenizer is a test fixture: run with PYTHONPATH=tests") from err

    tok_config = get_preset("tiny")
    semantic, pixel = tok_config.semantic, tok_config.pixel
    if paper_vocab:
        semantic = dataclasses.replace(semantic, codebook_size=16384)
        pixel = dataclasses.replace(pixel, sub_codebook_size=12)
    patch = tok_config.teacher.patch_size
    tok_config = dataclasses.replace(
        tok_config, image_size=grid * patch, semantic=semantic, pixel=pixel
    )
    torch.manual_seed(0)
    image_tokenizer = SemHiTok(tok_config).eval().to(device)
    tokenizer = tiny_tokenizer()
    start, end = add_image_markers(tokenizer)
    hidden, layers, heads, kv_heads, mlp = LM_SHAPES[lm]
    text_rows = QWEN_TEXT_ROWS if paper_vocab else len(tokenizer) + 8
    config = SemHiTokQwen2Config(
        semhitok=tok_config.to_dict(),
        text_vocab_size=text_rows,
        image_start_id=start,
        image_end_id=end,
        vocab_size=text_rows + tok_config.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=mlp,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
    )
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = SemHiTokQwen2ForCausalLM(config).eval()
    torch.set_default_dtype(default)
    model.image_embed.copy_codebooks(image_tokenizer)
    return model, SemHiTokQwenProcessor(tokenizer, image_tokenizer, config)


def sampling_ops(model, processor, prompts: list[str]) -> dict[str, Op]:
    """One ``generate_image`` call per way of sampling (ids only, no pixel decoding)."""
    from semhitok_qwen import generate_image

    def op(slice_head: bool, cfg: float) -> Op:
        @torch.no_grad()
        def sample():
            return generate_image(
                model,
                processor,
                prompts,
                cfg_scale=cfg,
                top_k=TOP_K,
                seed=0,
                image_slice_head=slice_head,
                decode=False,
            )

        return sample

    return {way: op(slice_head, cfg) for way, (slice_head, cfg) in WAYS.items()}


def run(ctx: Context) -> list[Row]:
    lm, grid = ctx.options["lm"], ctx.options["grid"] or (4 if ctx.quick else 8)
    prompts = ["a photo of a cat"] * max(ctx.batches or (1,))
    vocabs = {"tiny vocab": False, "paper vocab": True} if lm == "tiny" else {"paper vocab": True}
    rows = []
    for vocab, paper_vocab in vocabs.items():
        model, processor = build(lm, paper_vocab, grid, ctx.device, ctx.dtype)
        tokens = len(prompts) * processor.num_image_tokens
        ops = sampling_ops(model, processor, prompts)
        times = alternate(ops, ctx.repeats, ctx.device)
        params = {
            "lm": lm,
            "vocab": vocab,
            "text_ids": model.config.text_vocab_size,
            "image_ids": model.image_vocab.size,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "image_tokens": tokens,
            "prompts": len(prompts),
            "grid": grid,
            "top_k": TOP_K,
        }
        base = f"{lm}, {vocab}/full head"
        for way, seconds in times.items():
            metrics = {"tokens_per_s": tokens / median(seconds)}
            if way != "full head":
                metrics["speedup"] = median(times["full head"]) / median(seconds)
            name = f"{lm}, {vocab}/{way}"
            reference = None if name == base else base
            rows.append(
                Row(NAME, name, params | {"way": way, "seconds": seconds}, metrics, reference)
            )
        del model, processor
    return rows


__all__ = ["LM_SHAPES", "NAME", "WAYS", "add_arguments", "run"]
