"""``SemHiTokVQModel``'s overhead over the core SemHiTok API.

Two operations, each timed for both paths side by side (``harness.pair_rows``):

* **encode**: ``SemHiTokVQModel.encode(x)`` (LlamaGen's ``(quant, emb_loss, (_, _, indices))``,
  which also assembles ``quant`` from the semantic and pixel codes) against
  ``SemHiTok.encode(x).flat_ids``;
* **decode_code**: ``SemHiTokVQModel.decode_code(codes, qzshape)`` with int32 ``(B, h*w)`` codes
  and ``qzshape = [B, codebook_embed_dim, h, w]`` exactly as LlamaGen's samplers call it
  (``autoregressive/sample/sample_c2i.py``) against ``SemHiTok.decode(flat_ids)``.

Both paths get the same images / ids and must agree (checked before timing, else the case
fails). Per preset (default ``tiny``) and batch (default 8), under ``torch.no_grad()``, each
timed round is as many back-to-back calls as fill ~0.2 s. ``overhead`` = adapter time / core
time - 1; ``target_met`` says whether it stays under 5 %. Random weights (a preset, teacher
weights not loaded): only the wrapper's cost is measured, not a checkpoint's quality.
"""

from __future__ import annotations

import torch

from benchmarks.suite import Context, Row
from benchmarks.suite.harness import Op, autocast, inference, pair_rows, timed

NAME = "llamagen_adapter"
BUDGET = 0.05  # the adapter may cost at most 5 % over the core API
ROUND_S = 0.2  # wall time per timed round


def paths(model, vq, batch: int, x: torch.Tensor, ctx: Context) -> dict[str, tuple[Op, Op]]:
    """(core, adapter) ops of ``encode`` and ``decode_code``, checked to agree first."""
    h, w = model.grid_size
    with torch.no_grad(), autocast(ctx):
        flat = model.encode(x).flat_ids  # (B, h, w) int64
        codes = flat.reshape(batch, h * w).to(torch.int32)  # what LlamaGen's GPT returns
        qzshape = [batch, 8, h, w]  # [n, --codebook-embed-dim (ignored), latent, latent]
        quant, _, (_, _, indices) = vq.encode(x)
        assert indices.dtype == torch.int64 and torch.equal(indices, flat.flatten())
        assert quant.shape == (batch, vq.embed_dim, h, w)
        assert torch.equal(vq.decode_code(codes, qzshape), model.decode(flat))
    return {
        "encode": (
            inference(ctx, lambda: model.encode(x).flat_ids),
            inference(ctx, lambda: vq.encode(x)),
        ),
        "decode_code": (
            inference(ctx, lambda: model.decode(flat)),
            inference(ctx, lambda: vq.decode_code(codes, qzshape)),
        ),
    }


def run(ctx: Context) -> list[Row]:
    from semhitok_llamagen.vq_model import SemHiTokVQModel
    from semhitok_plugin import SemHiTok, get_preset

    rows = []
    for preset in ctx.presets_or(("tiny",)):
        cfg = get_preset(preset)
        cfg.teacher.weights = None  # random teacher: no download; the cost is the same
        torch.manual_seed(0)
        model = SemHiTok(cfg).eval().to(ctx.device)
        vq = SemHiTokVQModel(model, preset)
        size = model.config.image_size
        for batch in ctx.batches or (8,):
            x = torch.rand(batch, 3, size, size, device=ctx.device) * 2 - 1
            params = {"preset": preset, "batch": batch, "image_size": size}
            params |= {"grid": list(model.grid_size), "vocab_size": model.vocab_size}
            for op, (core, adapter) in paths(model, vq, batch, x, ctx).items():
                calls = max(1, min(50, round(ROUND_S / max(timed(core, ctx.device), 1e-4))))
                pair = pair_rows(
                    ctx,
                    NAME,
                    f"{preset} {op} b{batch}",
                    ("adapter", adapter),
                    ("core", core),
                    ctx.repeats,
                    params | {"op": op, "calls_per_round": calls, "budget": BUDGET},
                    per_call=("images", batch),
                    memory=False,
                    calls=calls,
                )
                pair[0].metrics["overhead"] = pair[0].metrics["time_ratio"] - 1
                pair[0].params["target_met"] = pair[0].metrics["overhead"] < BUDGET
                rows += pair
    return rows


__all__ = ["BUDGET", "NAME", "run"]
