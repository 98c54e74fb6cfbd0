"""Image-generation speed of the unified MLLM: tokens/s with and without the image-slice head,
with and without classifier-free guidance, side by side in one run.

``generate_image`` samples image ids only, so by default it multiplies the last hidden state by
the head's K·m image rows instead of the whole head (``image_slice_head``). Two tiny random
models (CPU-sized LMs, 2 layers × 64 wide) are timed, alternately, per case:

* ``tiny``: the tiny Qwen tokenizer (336 text ids) + the ``tiny`` SemHiTok (256 image ids);
* ``tiny-lm, paper vocab``: the same LM with Qwen2.5's 151,936-row text table and a SemHiTok of
  the paper's K = 16,384, m = 12 (196,608 image ids) — where the head dominates a small LM.

Tokens/s counts image tokens delivered (64 per image: the tiny preset's 8 × 8 grid); CFG runs
two streams per image. Sampling is top-k 100, seed fixed, no pixel decoding.

    python benchmarks/mllm_generation.py [--images 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from quantizer import machine_info  # sibling script: one machine record for all reports

from semhitok_plugin import SemHiTok, get_preset
from semhitok_plugin.mllm import build_unified
from semhitok_plugin.mllm.generation import generate_image
from semhitok_plugin.mllm.tiny import save_tiny_qwen

CASES = {  # name: (image_slice_head, cfg_scale)
    "full head": (False, 1.0),
    "image-slice head": (True, 1.0),
    "full head + CFG": (False, 4.0),
    "image-slice head + CFG": (True, 4.0),
}


def build(folder: Path, paper_vocab: bool):
    config = get_preset("tiny")
    if paper_vocab:
        config = dataclasses.replace(
            config,
            semantic=dataclasses.replace(config.semantic, codebook_size=16384),
            pixel=dataclasses.replace(config.pixel, sub_codebook_size=12),
        )
    qwen = save_tiny_qwen(folder, table_rows=151_936 if paper_vocab else None)
    torch.manual_seed(0)
    return build_unified(qwen, SemHiTok(config).eval())


def timed(model, processor, prompts: list[str], slice_head: bool, cfg: float) -> float:
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
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1, help="prompts sampled together")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per case")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results/mllm_generation.json"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    prompts = ["a photo of a cat"] * args.images
    report_models = {}
    for label, paper_vocab in (("tiny", False), ("tiny-lm, paper vocab", True)):
        with tempfile.TemporaryDirectory() as folder:
            model, processor = build(Path(folder), paper_vocab)
        model.eval()
        tokens = args.images * processor.num_image_tokens
        for slice_head, cfg in CASES.values():  # warm-up
            timed(model, processor, prompts, slice_head, cfg)
        seconds = {name: [] for name in CASES}
        for _ in range(args.rounds):  # alternate the cases, so machine noise hits all alike
            for name, (slice_head, cfg) in CASES.items():
                seconds[name].append(timed(model, processor, prompts, slice_head, cfg))
        base = statistics.median(seconds["full head"])
        rows = {}
        for name, values in seconds.items():
            median = statistics.median(values)
            rows[name] = {
                "tokens_per_s": tokens / median,
                "speedup_vs_full_head": base / median,
                "seconds": values,
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
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {**vars(args), "out": str(args.out), "top_k": 100, "cfg_scale": 4.0},
        "models": report_models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
