"""The main job: train a small SemHiTok on real photos on a CPU, evaluate it, show the results.

Data: the colour photos bundled with scikit-image. Each photo is split into a training region
(its left three quarters) and a held-out region (the right quarter, cut into square tiles), so
evaluation measures reconstruction of pixels the tokenizer never saw. Stage 1 then stage 2 run
through the same trainer and configs as a cluster run (``configs/demo_cpu``), then the held-out
tiles are evaluated with ``semhitok eval-recon``'s code, next to the equal-bit baselines
(:mod:`semhitok_plugin.baselines`: a thumbnail, and k-means over the training crops' patches), and
so are tiles of photos from another source (scikit-learn's sample images) that it never saw.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .samples import SAMPLE_PHOTOS, UNSEEN_PHOTOS, sample_photo, unseen_photo

if TYPE_CHECKING:
    from .data import DataConfig

CONFIGS = Path(__file__).resolve().parent / "configs" / "demo_cpu"
BASELINE_CROPS = 2048  # training crops k-means is fitted on (x 64 patches each)


def write_demo_data(root: Path, tile: int = 128) -> tuple[Path, Path]:
    """Training regions and held-out tiles of the sample photos, as image folders."""
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
        side = min(tile, w - split)  # one column of tiles at the split
        save_tiles(photo.crop((split, 0, split + side, h)), tile, heldout / name)
    return train, heldout


def write_unseen_tiles(root: Path, tile: int = 128) -> Path:
    """Tiles of photos from another source than the training photos (``UNSEEN_PHOTOS``)."""
    unseen = root / "unseen"
    unseen.mkdir(parents=True, exist_ok=True)
    for name in UNSEEN_PHOTOS:
        save_tiles(unseen_photo(name), tile, unseen / name)
    return unseen


def save_tiles(photo: Image.Image, tile: int, stem: Path) -> None:
    """Non-overlapping ``tile`` px squares (narrower photos: their width), row by row, as PNG."""
    side = min(tile, photo.width, photo.height)
    tops, lefts = range(0, photo.height - side + 1, side), range(0, photo.width - side + 1, side)
    for i, (top, left) in enumerate((t, x) for t in tops for x in lefts):
        photo.crop((left, top, left + side, top + side)).save(f"{stem}_{i}.png")


def run_demo(out: Path, *, steps_scale: float = 1.0) -> dict:
    """Stage 1, stage 2, then the held-out and unseen tiles evaluated for the tokenizer and its
    equal-bit baselines; returns the summary written to ``summary.json``."""
    from .training import TrainConfig, train

    start = time.perf_counter()
    train_dir, heldout_dir = write_demo_data(out / "data")
    paths = {"data.source": train_dir}
    finals, configs = {}, {}
    for stage in ("stage1", "stage2"):
        overrides = [f"{k}={v}" for k, v in paths.items()] + [f"output_dir={out / stage}"]
        cfg = configs[stage] = TrainConfig.load(CONFIGS / f"{stage}.yaml", overrides)
        cfg.max_steps = max(1, round(cfg.max_steps * steps_scale))
        if cfg.eval_data:
            cfg.eval_data.source = str(heldout_dir)
        if stage == "stage2":
            cfg.init = str(finals["stage1"])
        finals[stage] = train(cfg)
    summary = {"tokenizer": str(finals["stage2"])}
    baseline_crops = max(64, round(BASELINE_CROPS * steps_scale))
    summary |= evaluate_demo(
        finals["stage2"], configs["stage2"].data, heldout_dir, out / "data", baseline_crops
    )
    summary["minutes"] = (time.perf_counter() - start) / 60
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate_demo(
    tokenizer: Path, train_data: DataConfig, heldout: Path, data_root: Path, baseline_crops: int
) -> dict:
    """Held-out metrics, codebook usage over training crops, and the baselines on the held-out
    and the unseen tiles (k-means fitted on ``baseline_crops`` crops drawn as ``train_data``
    draws them)."""
    from .data import DataConfig, eval_batches
    from .evaluation import (
        evaluate_baselines,
        evaluate_reconstruction,
        fit_patch_kmeans,
        load_metric_backbones,
        random_crop_usage,
        semantic_fidelity,
    )
    from .model import SemHiTok

    model = SemHiTok.from_pretrained(tokenizer)
    size = model.config.image_size
    # Offline: random backbones (flagged in the output); 64-d FID keeps the smoke test fast.
    backbones = load_metric_backbones(random_backbones=True, fid_dims=64)
    kmeans = fit_patch_kmeans(model, train_data, crops=baseline_crops)

    def tiles(folder: Path) -> dict:
        data = DataConfig(source=str(folder), image_size=size, crop="center")
        batches = functools.partial(eval_batches, data, 32)
        return {
            "metrics": evaluate_reconstruction(model, batches(), backbones),
            "baselines": evaluate_baselines(model, batches(), backbones, kmeans=kmeans),
            "semantic": semantic_fidelity(model, batches()),
        }

    held, unseen = tiles(heldout), tiles(write_unseen_tiles(data_root))
    held["metrics"]["semantic"] = held.pop("semantic")
    return {
        "heldout_metrics": held["metrics"],
        "baselines": held["baselines"],
        "unseen": unseen,
        "codebook_usage": random_crop_usage(model, train_data.source),
    }


def latest_picture(folder: Path, suffix: str) -> Path | None:
    pictures = sorted(folder.glob(f"step_*_{suffix}.png"))
    return pictures[-1] if pictures else None
