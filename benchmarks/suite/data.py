"""Decode + augment images/s of one data-loading worker vs what a training step consumes.

The photos are real (scikit-image's bundled samples, ``semhitok_plugin.samples``), written once
as JPEG (quality 90) to a temporary folder, as a training folder would hold them. Per preset (its
image size), in batches of whole passes over the photos (every batch holds the same mix), three
ways of producing one batch are timed side by side in the main process, which is what one
DataLoader worker does per batch:

* ``decode``: ``semhitok_plugin.images.load_image`` of each file (JPEG decode, EXIF, RGB);
* ``train-stream``: the trainer's own ``ImageStream`` (``num_workers=0``) with the training crop
  (random resized crop, scale (0.5, 1), flip) -> one (B, 3, S, S) batch in [-1, 1];
* ``eval-stream``: the same stream with the evaluation crop (resize + centre crop).

``workers_needed`` (on the ``train-stream`` row) = images/s of the stage-2 step at the same
preset / images/s of one worker: the number of workers that keep the step fed. The step rate
comes from the train case's plain stage-2 row when it ran first in this run
(``ctx.extra["train"]``), else from one measurement here; the tokenizer-only step is the fastest
real step, so this is an upper bound -- with the perceptual loss (``+lpips``, when the train case
ran) the figure is ``workers_needed_lpips``.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from . import PRESETS, Context, Row
from .harness import alternate, median

NAME = "data"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


def write_jpegs(directory: Path, names: tuple[str, ...] = PHOTOS) -> list[Path]:
    from semhitok_plugin.samples import sample_photo

    paths = []
    for name in names:
        path = directory / f"{name}.jpg"
        sample_photo(name).save(path, quality=90)
        paths.append(path)
    return paths


def step_rate(ctx: Context, preset: str) -> dict[str, float]:
    """Images/s of the stage-2 step: from the train case if it ran, else measured once here."""
    known = ctx.extra.get("train", {}).get(preset, {}).get("pixel")
    if known:
        return dict(known, source="train case")
    from . import train

    with train.workspace(preset) as work:
        train.measure_stage(ctx, work, preset, "pixel", ["plain"], 2 if ctx.quick else ctx.repeats)
    return dict(ctx.extra["train"][preset]["pixel"], source="measured here")


def run(ctx: Context) -> list[Row]:
    from semhitok_plugin import get_preset
    from semhitok_plugin.data import DataConfig, ImageStream
    from semhitok_plugin.images import load_image

    batch = len(PHOTOS) * (1 if ctx.quick else 2)
    repeats = 3 if ctx.quick else max(ctx.repeats, 5)
    rows = []
    with tempfile.TemporaryDirectory(prefix="semhitok-bench-data-") as tmp:
        paths = write_jpegs(Path(tmp))
        sizes = [_image_size(p) for p in paths]
        megapixels = sum(w * h for w, h in sizes) / len(sizes) / 1e6
        for preset in ctx.presets_or(PRESETS):
            size = get_preset(preset).image_size
            files = itertools.cycle(paths)
            streams = {
                crop: iter(
                    ImageStream(
                        DataConfig(source=tmp, image_size=size, crop=crop, num_workers=0), batch
                    )
                )
                for crop in ("random", "center")
            }
            ops = {
                "decode": lambda files=files: [load_image(next(files)) for _ in range(batch)],
                "train-stream": lambda s=streams["random"]: next(s),
                "eval-stream": lambda s=streams["center"]: next(s),
            }
            times = {n: median(t) for n, t in alternate(ops, repeats, ctx.device).items()}
            rate = step_rate(ctx, preset)
            params = {
                "preset": preset,
                "image_size": size,
                "batch": batch,
                "photos": len(paths),
                "mean_source_megapixels": megapixels,
                "format": "JPEG q90",
            }
            for name, t in times.items():
                metrics = {"ms_per_batch": t * 1e3, "images_per_s_per_worker": batch / t}
                if name == "train-stream":
                    metrics["step_images_per_s"] = rate["images_per_s"]
                    metrics["workers_needed"] = rate["images_per_s"] * t / batch
                    if "images_per_s_lpips" in rate:
                        metrics["workers_needed_lpips"] = rate["images_per_s_lpips"] * t / batch
                rows.append(
                    Row(
                        case=NAME,
                        name=f"{preset}/{name}",
                        params={
                            **params,
                            **(
                                {"step_source": rate["source"], "step_batch": rate["batch"]}
                                if name == "train-stream"
                                else {}
                            ),
                        },
                        metrics=metrics,
                    )
                )
    return rows


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


__all__ = ["NAME", "PHOTOS", "run", "write_jpegs"]
