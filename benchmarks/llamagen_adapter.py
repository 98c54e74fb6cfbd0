"""Overhead of the LlamaGen adapter: ``SemHiTokVQModel`` against the core SemHiTok API.

Two operations, each timed for both paths side by side in one run:

* **encode**: ``SemHiTokVQModel.encode(x)`` (LlamaGen's ``(quant, emb_loss, (_, _, indices))``,
  which also assembles ``quant`` from the semantic and pixel codes) against
  ``SemHiTok.encode(x).flat_ids``;
* **decode_code**: ``SemHiTokVQModel.decode_code(codes, qzshape)`` with int32 ``(B, h*w)`` codes
  and ``qzshape = [B, codebook_embed_dim, h, w]`` exactly as LlamaGen's samplers call it
  (``autoregressive/sample/sample_c2i.py``) against ``SemHiTok.decode(flat_ids)``.

Both paths get the same images / ids and must agree (checked). Every timed call is a batch of
``--batch`` images under ``torch.no_grad()``; after a warm-up the two paths alternate for
``--rounds`` rounds (so machine noise hits both alike), each round timing ``--repeats`` calls.
Images/s come from the median round; overhead = adapter time / core time - 1, expected < 5 %.
The tokenizer has random weights (a preset, teacher weights not loaded): only the wrapper's cost
is measured, not a checkpoint's quality.

    python benchmarks/llamagen_adapter.py [--preset tiny|siglip-l16-256] [--batch 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from quantizer import write_report  # sibling script: one machine record for all reports

from semhitok_llamagen.vq_model import SemHiTokVQModel
from semhitok_plugin import SemHiTok, get_preset

BUDGET = 0.05  # the adapter may cost at most 5 % over the core API


def build(preset: str, device: torch.device) -> SemHiTok:
    cfg = get_preset(preset)
    cfg.teacher.weights = None  # random teacher: no download; the cost is the same
    torch.manual_seed(0)
    return SemHiTok(cfg).eval().to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="tiny (CPU) or e.g. siglip-l16-256")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed rounds")
    parser.add_argument("--repeats", type=int, default=0, help="calls per round (0: auto)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="JSON (default: results/llamagen_adapter_DEV)")
    args = parser.parse_args()
    device = torch.device(args.device)
    out = args.out or Path(__file__).parent / f"results/llamagen_adapter_{device.type}.json"
    torch.set_grad_enabled(False)

    model = build(args.preset, device)
    vq = SemHiTokVQModel(model, args.preset)
    size, (h, w) = model.config.image_size, model.grid_size
    x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    flat = model.encode(x).flat_ids  # (B, h, w) int64
    codes = flat.reshape(args.batch, h * w).to(torch.int32)  # what LlamaGen's generate returns
    qzshape = [args.batch, 8, h, w]  # [n, --codebook-embed-dim (ignored), latent, latent]

    # the two paths must agree before their speed means anything
    quant, _, (_, _, indices) = vq.encode(x)
    assert indices.dtype == torch.int64 and torch.equal(indices, flat.flatten())
    assert quant.shape == (args.batch, vq.embed_dim, h, w)
    assert torch.equal(vq.decode_code(codes, qzshape), model.decode(flat))

    ops = {
        "encode": {
            "core": lambda: model.encode(x).flat_ids,
            "adapter": lambda: vq.encode(x),
        },
        "decode_code": {
            "core": lambda: model.decode(flat),
            "adapter": lambda: vq.decode_code(codes, qzshape),
        },
    }
    repeats = args.repeats
    if repeats <= 0:  # aim for ~0.2 s per timed round
        single = max(timed(ops["encode"]["core"], 1, device), 1e-4)
        repeats = max(1, min(50, round(0.2 / single)))
    for paths in ops.values():  # warm-up
        for fn in paths.values():
            timed(fn, 2, device)
    seconds = {op: {path: [] for path in paths} for op, paths in ops.items()}
    for _ in range(args.rounds):
        for op, paths in ops.items():
            for path, fn in paths.items():
                seconds[op][path].append(timed(fn, repeats, device))

    results, within = {}, True
    print(
        f"\n{args.preset}: {size} px, {h}x{w} tokens, vocab {model.vocab_size:,}, "
        f"batch {args.batch}, {device.type}, {args.rounds} rounds x {repeats} calls"
    )
    print(f"{'op':<13}{'core img/s':>12}{'adapter img/s':>15}{'overhead':>10}")
    for op, paths in seconds.items():
        core, adapter = (statistics.median(paths[p]) for p in ("core", "adapter"))
        overhead = adapter / core - 1
        within &= overhead < BUDGET
        results[op] = {
            "core_images_per_s": args.batch / core,
            "adapter_images_per_s": args.batch / adapter,
            "overhead": overhead,
            "within_budget": overhead < BUDGET,
            "seconds": paths,
        }
        print(f"{op:<13}{args.batch / core:>12.1f}{args.batch / adapter:>15.1f}{overhead:>+9.1%}")
    print(f"adapter overhead {'within' if within else 'OVER'} the {BUDGET:.0%} budget")
    parameters = {
        **vars(args),
        "repeats": repeats,
        "out": str(out),
        "image_size": size,
        "grid": [h, w],
        "vocab_size": model.vocab_size,
        "budget": BUDGET,
    }
    write_report(out, device, parameters, ops=results, within_budget=within)
    if not within:
        sys.exit(1)


if __name__ == "__main__":
    main()
