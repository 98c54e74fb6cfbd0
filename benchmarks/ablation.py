"""Small-scale replication of the paper's ablations (Tab. 7 row 1 and Tab. 9) on the sample photos.

One stage-1 semantic tokenizer is trained once (``configs/demo_cpu/stage1.yaml``); then every
variant trains stage 2 from it with the identical budget (steps, batch, lr, seed, data order):

* decoder input: semantic codes only (the semantic-codebook baseline), SGHC ``channel`` concat
  (paper default), ``sequence`` concat, ``none`` (pixel codes only);
* sub-codebook size m in {4, 8, 12} for ``channel``.

Reported on held-out tiles (pixels never trained on): PSNR and SSIM. LPIPS and rFID need
pretrained VGG/Inception weights, which this offline machine does not have; pass
``--lpips-weights`` to add LPIPS. Sub-codebook usage is measured over random training crops:
the share of the m entries used inside the sub-codebooks that are visited at all (Tab. 9's
"Usage").

    python benchmarks/ablation.py [--steps 600] [--out benchmarks/results/ablation.json]
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice
from pathlib import Path

import torch
from quantizer import machine_info  # sibling script: one machine record for all reports

from semhitok_plugin.data import DataConfig, ImageStream, eval_batches
from semhitok_plugin.demo import CONFIGS, write_demo_data
from semhitok_plugin.evaluation import evaluate_reconstruction, load_lpips, load_metric_backbones
from semhitok_plugin.model import SemHiTok
from semhitok_plugin.training import TrainConfig, train

VARIANTS = {  # name: (concat, m)
    "semantic only": ("semantic", 12),
    "none (pixel only)": ("none", 12),
    "sequence": ("sequence", 12),
    "channel, m=4": ("channel", 4),
    "channel, m=8": ("channel", 8),
    "channel, m=12": ("channel", 12),
}


@torch.no_grad()
def sub_codebook_usage(model: SemHiTok, source: Path, batches: int = 40) -> float:
    """Used flat codes / (m x visited semantic codes), over random training crops."""
    stream = ImageStream(DataConfig(source=str(source), image_size=64), 32, seed=123)
    flat = torch.cat(
        [model.encode(b["images"]).flat_ids.flatten() for b in islice(stream, batches)]
    )
    visited = flat.div(model.sub_codebook_size, rounding_mode="floor").unique().numel()
    return flat.unique().numel() / (visited * model.sub_codebook_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="stage-2 steps per variant")
    parser.add_argument("--work", type=Path, default=Path("outputs/ablation"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation.json"))
    parser.add_argument("--lpips-weights", help="VGG16 weights file, to report LPIPS too")
    args = parser.parse_args()

    start = time.perf_counter()
    train_dir, heldout = write_demo_data(args.work / "data")
    data_override = [f"data.source={train_dir}"]
    stage1 = train(
        TrainConfig.load(
            CONFIGS / "stage1.yaml", [*data_override, f"output_dir={args.work / 'stage1'}"]
        )
    )
    # rFID is not reported (no Inception weights offline); LPIPS only with real VGG weights.
    backbones = load_metric_backbones(random_backbones=True, fid_dims=64)
    if args.lpips_weights:
        backbones.lpips = load_lpips(args.lpips_weights)
    heldout_data = DataConfig(source=str(heldout), image_size=64, crop="center")
    rows = {}
    for name, (concat, m) in VARIANTS.items():
        slug = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        cfg = TrainConfig.load(
            CONFIGS / "stage2.yaml",
            [
                *data_override,
                f"output_dir={args.work / slug}",
                f"init={stage1}",
                f"max_steps={args.steps}",
                "image_every=100000",
                f"eval_data.source={heldout}",
                f"model_overrides.pixel.concat={concat}",
                f"model_overrides.pixel.sub_codebook_size={m}",
            ],
        )
        model = SemHiTok.from_pretrained(train(cfg))
        metrics = evaluate_reconstruction(
            model, eval_batches(heldout_data, 32), backbones, progress=False
        )
        rows[name] = {
            "concat": concat,
            "m": m,
            "psnr": metrics["psnr"],
            "ssim": metrics["ssim"],
            "lpips": metrics["lpips"] if args.lpips_weights else None,
            "sub_codebook_usage": sub_codebook_usage(model, train_dir),
        }
        print(
            f"{name:20} PSNR {rows[name]['psnr']:6.2f}  SSIM {rows[name]['ssim']:.3f}  "
            f"usage {rows[name]['sub_codebook_usage']:.1%}",
            flush=True,
        )
    report = {
        "machine": machine_info(),
        "stage2_steps": args.steps,
        "rows": rows,
        "minutes": (time.perf_counter() - start) / 60,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['minutes']:.1f} min)")


if __name__ == "__main__":
    main()
