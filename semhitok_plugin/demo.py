"""The main job: train a small SemHiTok on real photos on a CPU, evaluate it, show the results.

Data: the colour photos bundled with scikit-image. Each photo is split into a training region
(its left three quarters) and a held-out region (the right quarter, cut into square tiles), so
evaluation measures reconstruction of pixels the tokenizer never saw. Stage 1 then stage 2 run
through the same trainer and configs as a cluster run (``configs/demo_cpu``), then the held-out
tiles are evaluated with ``semhitok eval-recon``'s code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .samples import SAMPLE_PHOTOS, sample_photo

CONFIGS = Path(__file__).resolve().parent / "configs" / "demo_cpu"


def write_demo_data(root: Path, tile: int = 128) -> tuple[Path, Path]:
    """Training regions and held-out tiles of the sample photos, as PNG folders."""
    train, heldout = root / "train", root / "heldout"
    train.mkdir(parents=True, exist_ok=True)
    heldout.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        photo = sample_photo(name)
        w, h = photo.size
        split = w * 3 // 4
        # BMP: lossless and ~10x faster to decode than PNG, which would otherwise bound the
        # training step on two cores (every step decodes 32 crops' source photos).
        photo.crop((0, 0, split, h)).save(train / f"{name}.bmp")
        right = photo.crop((split, 0, w, h))
        side = min(tile, right.width)
        for i, top in enumerate(range(0, h - side + 1, side)):
            right.crop((0, top, side, top + side)).save(heldout / f"{name}_{i}.png")
    return train, heldout


def run_demo(out: Path, *, steps_scale: float = 1.0) -> dict:
    """Stage 1, stage 2, held-out evaluation; returns the summary written to ``summary.json``."""
    from .data import DataConfig, eval_batches
    from .evaluation import (
        evaluate_reconstruction,
        load_metric_backbones,
        random_crop_usage,
        semantic_fidelity,
    )
    from .model import SemHiTok
    from .training import TrainConfig, train

    start = time.perf_counter()
    train_dir, heldout_dir = write_demo_data(out / "data")
    paths = {"data.source": train_dir}
    finals = {}
    for stage in ("stage1", "stage2"):
        overrides = [f"{k}={v}" for k, v in paths.items()] + [f"output_dir={out / stage}"]
        cfg = TrainConfig.load(CONFIGS / f"{stage}.yaml", overrides)
        cfg.max_steps = max(1, round(cfg.max_steps * steps_scale))
        if cfg.eval_data:
            cfg.eval_data.source = str(heldout_dir)
        if stage == "stage2":
            cfg.init = str(finals["stage1"])
        finals[stage] = train(cfg)
    model = SemHiTok.from_pretrained(finals["stage2"])
    data = DataConfig(source=str(heldout_dir), image_size=model.config.image_size, crop="center")
    # Offline: random backbones (flagged in the output); 64-d FID keeps the smoke test fast.
    backbones = load_metric_backbones(random_backbones=True, fid_dims=64)
    metrics = evaluate_reconstruction(model, eval_batches(data, 32), backbones)
    metrics["semantic"] = semantic_fidelity(model, eval_batches(data, 32))
    summary = {
        "tokenizer": str(finals["stage2"]),
        "heldout_metrics": metrics,
        "codebook_usage": random_crop_usage(model, train_dir),
        "minutes": (time.perf_counter() - start) / 60,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def latest_picture(folder: Path, suffix: str) -> Path | None:
    pictures = sorted(folder.glob(f"step_*_{suffix}.png"))
    return pictures[-1] if pictures else None
