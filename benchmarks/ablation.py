"""A small-scale replication of the paper's Tab. 7 row 1 and Tab. 9 on the sample photos.

One stage-1 semantic tokenizer is trained once (``configs/demo_cpu/stage1.yaml``); then every
variant trains stage 2 from it with the identical budget (``--steps``, batch, lr, seed, data
order), on the trainer's device (CUDA when present):

* decoder input: semantic codes only (the semantic-codebook baseline), SGHC ``channel`` concat
  (paper default), ``sequence`` concat, ``none`` (pixel codes only);
* sub-codebook size m in {4, 8, 12} for ``channel``.

Reported on held-out tiles (pixels never trained on): PSNR and SSIM. LPIPS and rFID need
pretrained VGG/Inception weights, which an offline machine does not have; ``--lpips-weights``
adds LPIPS. Sub-codebook usage is measured over random training crops: the share of the m
entries used inside the sub-codebooks that are visited at all (Tab. 9's "Usage"). Quick mode
trains 2 steps per stage, to check the plumbing only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.suite import Context, Row

NAME = "ablation"
VARIANTS = {  # name: (concat, m)
    "semantic only": ("semantic", 12),
    "none (pixel only)": ("none", 12),
    "sequence": ("sequence", 12),
    "channel, m=4": ("channel", 4),
    "channel, m=8": ("channel", 8),
    "channel, m=12": ("channel", 12),
}


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--steps", type=int, help="stage-2 steps per variant (600; quick 2)")
    group.add_argument("--work", type=Path, default=Path("outputs/ablation"), help="run folder")
    group.add_argument("--lpips-weights", help="VGG16 weights file, to report LPIPS too")


def run(ctx: Context) -> list[Row]:
    from semhitok_plugin.data import DataConfig, eval_batches
    from semhitok_plugin.demo import CONFIGS, write_demo_data
    from semhitok_plugin.evaluation import (
        evaluate_reconstruction,
        load_lpips,
        load_metric_backbones,
        random_crop_usage,
    )
    from semhitok_plugin.model import SemHiTok
    from semhitok_plugin.training import TrainConfig, train

    opts = ctx.options
    steps = opts["steps"] or (2 if ctx.quick else 600)
    work: Path = opts["work"]
    crops = 64 if ctx.quick else 1280
    train_dir, heldout = write_demo_data(work / "data")
    common = [f"data.source={train_dir}", "image_every=100000"]
    common += ["max_steps=2", "checkpoint_every=2"] if ctx.quick else []
    stage1 = train(
        TrainConfig.load(CONFIGS / "stage1.yaml", [*common, f"output_dir={work / 'stage1'}"])
    )
    # rFID is not reported (no Inception weights offline); LPIPS only with real VGG weights.
    backbones = load_metric_backbones(random_backbones=True, fid_dims=64)
    if opts["lpips_weights"]:
        backbones.lpips = load_lpips(opts["lpips_weights"])
    heldout_data = DataConfig(source=str(heldout), image_size=64, crop="center")
    rows = []
    for name, (concat, m) in VARIANTS.items():
        slug = f"{concat}_m{m}"
        overrides = [
            *common,
            f"output_dir={work / slug}",
            f"init={stage1}",
            f"max_steps={steps}",
            f"eval_data.source={heldout}",
            f"model_overrides.pixel.concat={concat}",
            f"model_overrides.pixel.sub_codebook_size={m}",
        ]
        model = SemHiTok.from_pretrained(
            train(TrainConfig.load(CONFIGS / "stage2.yaml", overrides))
        )
        metrics = evaluate_reconstruction(
            model, eval_batches(heldout_data, 32), backbones, progress=False
        )
        values = {
            "psnr": metrics["psnr"],
            "ssim": metrics["ssim"],
            "sub_codebook_usage": random_crop_usage(model, train_dir, crops=crops)["sub_codebook"],
        }
        if opts["lpips_weights"]:
            values["lpips"] = metrics["lpips"]
        params = {"concat": concat, "m": m, "stage2_steps": steps, "checkpoint": str(work / slug)}
        rows.append(Row(NAME, name, params, {k: float(v) for k, v in values.items()}))
    return rows


__all__ = ["NAME", "VARIANTS", "run"]
