"""Our tokenizer building blocks against the libraries a user would otherwise call.

(a) **Our ViT vs timm's**: ``PixelEncoder`` (patchify + ``TokenTransformer``, whose blocks are
    timm ``Block`` s) against a timm ``VisionTransformer`` of the same width, depth, heads, MLP
    ratio and patch size (no class token) running ``forward_features`` on the same images, so
    both run the same number of tokens; inference and forward + backward.
(b) **Teacher wrapper vs timm**: ``FrozenTeacher`` of each preset against
    ``timm.create_model(model_name, pretrained=False, img_size=canvas, **model_kwargs)``
    ``.forward_features`` with the same weights on the same input (the presets' normalisation is
    the identity on [-1, 1], so the outputs must match: ``max_abs_diff``). The issue's target:
    overhead < 3 % (``overhead`` = wrapper time / timm time - 1).

Each pair is timed side by side (``harness.pair_rows``: alternating rounds, median);
``time_ratio`` = ours / peer (below 1: ours is faster), ``speedup`` = peer / ours. The quantisers
against ``vector-quantize-pytorch`` are the ``quantizer`` case.
"""

from __future__ import annotations

import torch

from . import PRESETS, Context, Row
from .harness import autocast, pair_rows

NAME = "peers"
OVERHEAD_TARGET = 0.03


# -- (a) TokenTransformer vs timm VisionTransformer ------------------------------------------------
def vit_rows(ctx: Context, repeats: int) -> list[Row]:
    from timm.models.vision_transformer import VisionTransformer

    from semhitok_plugin.config import VIT_B, ViTConfig
    from semhitok_plugin.vit import PixelEncoder

    if ctx.quick:
        config, size, patch, batch = ViTConfig(width=64, depth=2, heads=4), 64, 8, 4
    else:
        config, size, patch = VIT_B, 256, 16
        batch = 64 if ctx.device.type == "cuda" else 8
    grid = (size // patch, size // patch)
    torch.manual_seed(0)
    ours = PixelEncoder(config, patch, grid, 8).to(ctx.device)
    timm_vit = VisionTransformer(
        img_size=size,
        patch_size=patch,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
        class_token=False,
        global_pool="",
        num_classes=0,
    ).to(ctx.device)
    images = torch.rand(batch, 3, size, size, device=ctx.device) * 2 - 1
    params = {
        "width": config.width,
        "depth": config.depth,
        "heads": config.heads,
        "tokens": grid[0] * grid[1],
        "batch": batch,
        "image_size": size,
    }
    rows = []
    for mode in ("inference", "train"):
        for m in (ours, timm_vit):
            m.train(mode == "train")

        def run(fn, mode=mode):
            if mode == "inference":
                with torch.no_grad(), autocast(ctx):
                    fn(images)
            else:
                with autocast(ctx):
                    out = fn(images)
                out.float().square().mean().backward()

        rows += pair_rows(
            ctx,
            NAME,
            f"vit-{mode}",
            ("token_transformer", lambda run=run: run(ours)),
            ("timm_vit", lambda run=run: run(timm_vit.forward_features)),
            repeats,
            {**params, "mode": mode},
            per_call=("images", batch),
        )
        for m in (ours, timm_vit):
            m.zero_grad(set_to_none=True)
    return rows


# -- (b) FrozenTeacher vs timm directly -----------------------------------------------------------
def teacher_rows(ctx: Context, repeats: int) -> list[Row]:
    import timm

    from semhitok_plugin import get_preset
    from semhitok_plugin.teacher import FrozenTeacher

    rows = []
    for preset in ctx.presets_or(PRESETS):
        config = get_preset(preset)
        cfg = config.teacher
        if cfg.backend != "timm":
            continue
        torch.manual_seed(0)
        wrapper = FrozenTeacher(cfg, config.canvas_size, load_weights=False).to(ctx.device)
        direct = timm.create_model(
            cfg.model_name, pretrained=False, img_size=config.canvas_size, **cfg.model_kwargs
        )
        direct.load_state_dict(wrapper.backbone.module.state_dict())
        direct = direct.to(ctx.device).eval().requires_grad_(False)
        batch = 4 if ctx.quick or preset == "tiny" else (64 if ctx.device.type == "cuda" else 8)
        size = config.canvas_size
        images = torch.rand(batch, 3, size, size, device=ctx.device) * 2 - 1

        def call(fn, images=images):
            with torch.no_grad(), autocast(ctx):
                return fn(images)

        diff = (call(wrapper).float() - call(direct.forward_features).float()).abs().max().item()
        pair = pair_rows(
            ctx,
            NAME,
            f"teacher/{preset}",
            ("frozen_teacher", lambda call=call, fn=wrapper: call(fn)),
            ("timm_forward_features", lambda call=call, fn=direct.forward_features: call(fn)),
            repeats,
            {"preset": preset, "model": cfg.model_name, "batch": batch, "canvas": size},
            per_call=("images", batch),
            memory=False,
        )
        ours = pair[0]
        ours.metrics["overhead"] = ours.metrics["time_ratio"] - 1
        ours.metrics["max_abs_diff"] = diff
        ours.params["target_overhead"] = OVERHEAD_TARGET
        ours.params["target_met"] = ours.metrics["overhead"] < OVERHEAD_TARGET
        rows += pair
    return rows


def run(ctx: Context) -> list[Row]:
    short = max(ctx.repeats, 10) if ctx.quick else ctx.repeats  # ms-short calls in quick mode
    return vit_rows(ctx, short) + teacher_rows(ctx, short)


__all__ = ["NAME", "OVERHEAD_TARGET", "run"]
