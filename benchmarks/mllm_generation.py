"""Image-generation speed of the unified MLLM: tokens/s with and without the image-slice head,
with and without classifier-free guidance, side by side in one run.

``generate_image`` samples image ids only, so by default it multiplies the last hidden state by
the head's K·m image rows instead of the whole head (``image_slice_head``). Random-weight models
are built in memory and timed, alternately, per case:

* ``--lm tiny`` (default, CPU): a 2-layer × 64 LM, once with the tiny tokenizer and the ``tiny``
  SemHiTok (336 text + 256 image ids), once at the paper's vocabulary — Qwen2.5's 151,936-row
  text table and K = 16,384, m = 12 (196,608 image ids) — where the head dominates a small LM;
* ``--lm qwen2.5-0.5b`` / ``qwen2.5-7b`` (GPU): the Qwen2.5 shapes at the paper's vocabulary.

The image tokenizer is the ``tiny`` preset resized to the grid asked for (``--grid``; 8 × 8 by
default, 16 × 16 is the paper's 256 px), since only its codebooks matter here. Tokens/s counts
image tokens delivered; CFG runs two streams per image. Sampling is top-k 100, seed fixed, no
pixel decoding. CPU runs use float32, CUDA runs bfloat16.

    PYTHONPATH=tests python benchmarks/mllm_generation.py [--lm tiny] [--images 1] [--rounds 3] \
        [--device cpu]

(from the repository root: the tiny text tokenizer is a test fixture, ``semhitok_fixtures``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from quantizer import write_report  # sibling script: one machine record for all reports

from semhitok_fixtures.tiny_qwen import tiny_tokenizer
from semhitok_plugin import SemHiTok, get_preset
from semhitok_qwen import SemHiTokQwen2Config, SemHiTokQwen2ForCausalLM, generate_image
from semhitok_qwen.processor import SemHiTokQwenProcessor, add_image_markers

QWEN_TEXT_ROWS = 151_936
LM_SHAPES = {  # hidden, layers, heads, kv heads, MLP width (Qwen2.5 configs on the hub)
    "tiny": (64, 2, 4, 2, 128),
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864),
    "qwen2.5-7b": (3584, 28, 28, 4, 18944),
}
CASES = {  # name: (image_slice_head, cfg_scale)
    "full head": (False, 1.0),
    "image-slice head": (True, 1.0),
    "full head + CFG": (False, 4.0),
    "image-slice head + CFG": (True, 4.0),
}


def build(lm: str, paper_vocab: bool, grid: int, device: torch.device, dtype: torch.dtype):
    """A random unified model and its processor, built directly on ``device``."""
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


def timed(model, processor, prompts: list[str], slice_head: bool, cfg: float) -> float:
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    generate_image(
        model,
        processor,
        prompts,
        cfg_scale=cfg,
        top_k=100,
        seed=0,
        image_slice_head=slice_head,
        decode=False,
    )
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", choices=LM_SHAPES, default="tiny", help="LM shape (random)")
    parser.add_argument("--grid", type=int, default=8, help="image tokens per side")
    parser.add_argument("--images", type=int, default=1, help="prompts sampled together")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per case")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="JSON (default: results/mllm_generation_DEV)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = args.out or Path(__file__).parent / f"results/mllm_generation_{device.type}.json"
    torch.set_grad_enabled(False)
    prompts = ["a photo of a cat"] * args.images
    vocabs = (
        {"tiny vocab": False, "paper vocab": True} if args.lm == "tiny" else {"paper vocab": True}
    )
    report_models = {}
    for vocab_label, paper_vocab in vocabs.items():
        label = f"{args.lm}, {vocab_label}"
        model, processor = build(args.lm, paper_vocab, args.grid, device, dtype)
        tokens = args.images * processor.num_image_tokens
        for slice_head, cfg in CASES.values():  # warm-up
            timed(model, processor, prompts, slice_head, cfg)
        seconds = {name: [] for name in CASES}
        for _ in range(args.rounds):  # alternate the cases, so machine noise hits all alike
            for name, (slice_head, cfg) in CASES.items():
                seconds[name].append(timed(model, processor, prompts, slice_head, cfg))
        base = statistics.median(seconds["full head"])
        rows = {
            name: {
                "tokens_per_s": tokens / statistics.median(values),
                "speedup_vs_full_head": base / statistics.median(values),
                "seconds": values,
            }
            for name, values in seconds.items()
        }
        report_models[label] = {
            "text_ids": model.config.text_vocab_size,
            "image_ids": model.image_vocab.size,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "cases": rows,
        }
        print(
            f"\n{label}: {model.config.text_vocab_size:,} text + {model.image_vocab.size:,} "
            f"image ids, {tokens} image tokens per run"
        )
        print(f"{'case':<26}{'tokens/s':>10}{'vs full head':>14}")
        for name, r in rows.items():
            print(f"{name:<26}{r['tokens_per_s']:>10.1f}{r['speedup_vs_full_head']:>13.2f}x")
        del model, processor
    parameters = {**vars(args), "dtype": str(dtype), "out": str(out), "top_k": 100}
    write_report(out, device, parameters, models=report_models)


if __name__ == "__main__":
    main()
