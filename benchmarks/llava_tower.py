"""The SemHiTok vision tower's forward cost per image, next to LLaVA's CLIP-L/336.

Both towers are built by the real classes with random weights (the cost does not depend on the
weights) and timed in one process, alternately (``harness.alternate``), on the same device and
dtype (fp32 on CPU; bf16 on CUDA, the dtype LLaVA casts the tower to when training with --bf16):

* LLaVA's ``CLIPVisionTower`` (llava/model/multimodal_encoder/clip_encoder.py), loaded from a
  local folder holding a random model shaped like ``openai/clip-vit-large-patch14-336`` (24 x
  1024, 577 tokens, features of layer -2 as LLaVA-v1.5 selects them); in quick mode a 2 x 64
  CLIP at 56 px, to check the plumbing only;
* ``SemHiTokVisionTower`` around a random tokenizer of each preset (default: both paper presets;
  teacher, semantic codebook and decoder, pixel encoder and SGHC: everything the tower runs).

Per tower: milliseconds per image (median round), images/s, ``time_vs_clip``, the visual tokens
it hands the LLM per image, and the memory one forward needs beyond the resident weights
(``harness.peak_mib``). Batch: ``--batches`` (the largest; default 2).
"""

from __future__ import annotations

import tempfile
import types
from pathlib import Path

import torch

from benchmarks.suite import PAPER_PRESETS, Context, Row
from benchmarks.suite.harness import alternate, median, peak_mib

NAME = "llava_tower"
CLIP_SHAPES = {  # hidden, MLP width, layers, heads, image size (patch 14)
    "clip-l14-336": (1024, 4096, 24, 16, 336),
    "clip-tiny": (64, 128, 2, 4, 56),
}


def clip_tower(folder: Path, shape: str):
    """LLaVA's CLIP tower, loaded by LLaVA's code from a folder with a random CLIP of ``shape``."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    hidden, mlp, layers, heads, size = CLIP_SHAPES[shape]
    config = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=size,
        patch_size=14,
        projection_dim=768,
    )
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size).save_pretrained(folder)
    args = types.SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    return CLIPVisionTower(str(folder), args=args)


def semhitok_tower(preset: str):
    from semhitok_llava.tower import SemHiTokVisionTower
    from semhitok_plugin import SemHiTok, get_preset

    config = get_preset(preset)
    config.teacher.weights = None  # random teacher: same cost, no download
    return SemHiTokVisionTower(f"semhitok:{preset}", tokenizer=SemHiTok(config))


def run(ctx: Context) -> list[Row]:
    batch = max(ctx.batches or (2,))
    clip = "clip-tiny" if ctx.quick else "clip-l14-336"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        towers = {f"{clip} (LLaVA)": clip_tower(Path(folder), clip)}
    towers |= {f"semhitok {p}": semhitok_tower(p) for p in ctx.presets_or(PAPER_PRESETS)}
    ops = {}
    for name, tower in towers.items():
        tower.to(device=ctx.device, dtype=ctx.dtype)
        size = tower.config.image_size
        images = torch.rand(batch, 3, size, size, device=ctx.device) * 2 - 1
        ops[name] = torch.no_grad()(lambda tower=tower, images=images: tower(images))
        features = ops[name]()
        assert features.shape[:2] == (batch, tower.num_patches), (name, features.shape)
    times = alternate(ops, ctx.repeats, ctx.device)
    peaks = {name: peak_mib(op, ctx.device) for name, op in ops.items()}
    clip_s = median(times[f"{clip} (LLaVA)"])
    rows = []
    for name, tower in towers.items():
        seconds = median(times[name])
        metrics = {
            "ms_per_image": 1000 * seconds / batch,
            "images_per_s": batch / seconds,
            "time_vs_clip": seconds / clip_s,
            "peak_mib": peaks[name],
            "visual_tokens": float(tower.num_patches),
            "feature_width": float(tower.hidden_size),
            "params_m": sum(p.numel() for p in tower.parameters()) / 1e6,
        }
        params = {"batch": batch, "image_size": tower.config.image_size, "seconds": times[name]}
        params["dtype"] = str(ctx.dtype).removeprefix("torch.")
        reference = None if name.startswith(clip) else f"{clip} (LLaVA)"
        rows.append(Row(NAME, name, params, metrics, reference))
    return rows


__all__ = ["CLIP_SHAPES", "NAME", "run"]
