"""A small-scale replication of the paper's Tab. 7 row 1 and Tab. 9 on the sample photos.

Parts (``--part``), each on the trainer's device (CUDA when present), every variant with
the identical budget (``--steps``, batch, lr, seed, data order):

* ``concat`` (Tab. 9 "Concat" and "Subc Size", Tab. 7 row 1): one stage-1 tokenizer
  (``configs/demo_cpu/stage1.yaml``), then stage 2 per variant: semantic codes only, SGHC
  ``channel`` (paper default), ``sequence``, ``none`` (pixel codes only); m in {4, 8, 12}.
* ``vq-type`` (Tab. 9 "VQ type"): stage 1 per semantic update rule (EMA l2-normalised, EMA
  Euclidean, vanilla, norm), then stage 2 on each. Reported: semantic cosine to the teacher and
  semantic usage (what understanding sees), and PSNR after stage 2.
* ``stage3-start``: from one stage-2 tokenizer (``--init``, else trained here), the decoder stage
  grows the decoder (depth 4 -> 8) for ``--steps`` steps per start: the paper's (random decoder,
  lr 2e-5 scaled like the demo's other lrs, GAN from step 0), without the GAN, with 5x the lr,
  and from the trained decoder's tensors.
* ``main-job``: the main job (``semhitok demo``'s configs at their own step counts) per recipe
  change in ``MAIN_JOB``, each on its held-out tiles and on the unseen photos' tiles, next to
  the equal-bit thumbnail and k-means rows (k-means fitted once per training-data config).
* ``unseen``: the same for what might carry the main job to photos of other sources
  (``UNSEEN``): more training photos (every other photo scikit-image and matplotlib bundle),
  those with hue rotation, another split of the 2,048 ids (K = 64, m = 32), and a control
  trained on the unseen photos' left halves, also evaluated on their right halves' tiles.

Reported on held-out tiles (pixels never trained on): PSNR and SSIM. LPIPS and rFID need
pretrained VGG/Inception weights, which an offline machine does not have; ``--lpips-weights``
adds LPIPS. Usage is counted over 1,280 random training crops: the share of the m entries used
inside the visited sub-codebooks (Tab. 9's "Usage") and of the K semantic codes. Quick mode
trains 2 steps per stage, to check the plumbing only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.suite import Context, Row

NAME = "ablation"
PARTS = ("concat", "vq-type", "stage3-start", "main-job", "unseen")
VARIANTS = {  # name: (concat, m)
    "semantic only": ("semantic", 12),
    "none (pixel only)": ("none", 12),
    "sequence": ("sequence", 12),
    "channel, m=4": ("channel", 4),
    "channel, m=8": ("channel", 8),
    "channel, m=12": ("channel", 12),
}
VQ_TYPES = {  # name: stage-1 semantic overrides
    "EMA, l2-normalised (VQ-KD, default)": {"quantizer": "ema", "l2_norm": True},
    "EMA, Euclidean": {"quantizer": "ema", "l2_norm": False},
    "Vanilla": {"quantizer": "vanilla"},
    "Norm": {"quantizer": "norm"},
}
# The demo trains at 10x the paper's lrs (1e-3 for stage 2's 1e-4), so Tab. 3's decoder lr
# 2e-5 is 2e-4 here. "No GAN" is the warm-up: within --steps the GAN never starts.
GAN, NO_GAN = {"adversarial_weight": 0.5, "disc_start": 0}, {"adversarial_weight": 0.0}
STAGE3_STARTS = {  # name: decoder-stage overrides
    "random, lr 2e-4, GAN from step 0 (Tab. 3 as written)": {
        "decoder_init": "random",
        "optim": {"lr": 2e-4},
        "losses": GAN,
    },
    "random, lr 2e-4, no GAN": {"decoder_init": "random", "optim": {"lr": 2e-4}, "losses": NO_GAN},
    "random, lr 1e-3, no GAN": {"decoder_init": "random", "optim": {"lr": 1e-3}, "losses": NO_GAN},
    "inherit trained decoder, lr 2e-4, no GAN": {
        "decoder_init": "inherit",
        "optim": {"lr": 2e-4},
        "losses": NO_GAN,
    },
}
# name: (overrides of both stages, of stage 2 only); each row states its whole recipe.
MAIN_JOB: dict[str, tuple[list[str], list[str]]] = {
    "stage 2: lr 1e-3, 1,200 steps": ([], ["optim.lr=1e-3", "max_steps=1200"]),
    "stage 2: lr 2e-3, 1,200 steps": ([], ["max_steps=1200"]),
    "stage 2: lr 1e-3, 1,800 steps": ([], ["optim.lr=1e-3"]),
    "stage 2: lr 2e-3, 1,800 steps (shipped)": ([], []),
    "shipped + hue rotation in both stages (data.hue=0.5)": (["data.hue=0.5"], []),
}
# Photos a recipe can train on (see _photo_set): the demo's training regions; those and every
# other photo scikit-image and matplotlib bundle, whole (none is evaluated); the left halves of
# the unseen photos (a control: their right halves' tiles are then held-out tiles of its kind).
PHOTO_SETS = ("demo", "more photos", "unseen left halves")
MORE_PHOTOS = (  # skimage.data names: two colour photos, then grey ones
    "stereo_motorcycle",
    *("immunohistochemistry", "camera", "brick", "grass", "gravel", "coins", "moon", "clock"),
)
UNSEEN: dict[str, tuple[str, list[str]]] = {  # name: (photo set, both stages' overrides)
    "shipped + more photos": ("more photos", []),
    "shipped + more photos + hue rotation (data.hue=0.5)": ("more photos", ["data.hue=0.5"]),
    "shipped, ids split as K = 64 x m = 32": (
        "demo",
        ["model_overrides.semantic.codebook_size=64", "model_overrides.pixel.sub_codebook_size=32"],
    ),
    "shipped, trained on the unseen photos' left halves": ("unseen left halves", []),
}
BIGGER_DECODER = "model_overrides.pixel.decoder={width: 128, depth: 8, heads: 4}"


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--part", choices=PARTS, default="concat", help="which table (concat)")
    group.add_argument("--steps", type=int, help="steps per variant (600; quick 2)")
    group.add_argument("--work", type=Path, default=Path("outputs/ablation"), help="run folder")
    group.add_argument("--init", type=Path, help="stage3-start: the stage-2 tokenizer to grow")
    group.add_argument("--lpips-weights", help="VGG16 weights file, to report LPIPS too")


def run(ctx: Context) -> list[Row]:
    parts = {"concat": _concat, "vq-type": _vq_type, "stage3-start": _stage3_start}
    parts |= {"main-job": _main_job, "unseen": _unseen}
    return parts[ctx.options["part"] or "concat"](_Bench(ctx))


class _Bench:
    """What the parts share: the demo data, configs, budget and held-out evaluation."""

    def __init__(self, ctx: Context) -> None:
        from semhitok_plugin.data import DataConfig
        from semhitok_plugin.demo import write_demo_data
        from semhitok_plugin.evaluation import load_lpips, load_metric_backbones

        opts = ctx.options
        self.quick, self.lpips = ctx.quick, bool(opts["lpips_weights"])
        self.steps = opts["steps"] or (2 if ctx.quick else 600)
        self.work: Path = opts["work"]
        self.init: Path | None = opts["init"]
        self.crops = 64 if ctx.quick else 1280
        self.train_dir, self.heldout = write_demo_data(self.work / "data")
        self.common = [f"data.source={self.train_dir}", "image_every=100000"]
        self.common += ["max_steps=2", "checkpoint_every=2"] if ctx.quick else []
        # rFID is not reported (no Inception weights offline); LPIPS only with real VGG weights.
        self.backbones = load_metric_backbones(random_backbones=True, fid_dims=64)
        if self.lpips:
            self.backbones.lpips = load_lpips(opts["lpips_weights"])
        self.heldout_data = DataConfig(source=str(self.heldout), image_size=64, crop="center")

    def config(self, stage: str, slug: str, overrides: list[str], *, budget: bool = True):
        """The demo's ``stage`` config; stage 2 and 3 train ``--steps`` steps when ``budget``."""
        from semhitok_plugin.demo import CONFIGS
        from semhitok_plugin.training import TrainConfig

        names = [f"output_dir={self.work / slug}", *self.common, *overrides]
        if stage != "stage1":
            names += [f"eval_data.source={self.heldout}"]
            names += [f"max_steps={self.steps}"] if budget else []
        return TrainConfig.load(CONFIGS / f"{stage}.yaml", names)

    def train(self, stage: str, slug: str, overrides: list[str], **kw) -> Path:
        from semhitok_plugin.training import train

        return train(self.config(stage, slug, overrides, **kw))

    def reconstruction(self, model, data) -> dict:
        """``evaluate_reconstruction``'s metrics of ``model`` on the images of ``data``."""
        from semhitok_plugin.data import eval_batches
        from semhitok_plugin.evaluation import evaluate_reconstruction

        return evaluate_reconstruction(
            model, eval_batches(data, 32), self.backbones, progress=False
        )

    def evaluate(
        self, path: Path, *, usage: bool = True, source: Path | None = None
    ) -> dict[str, float]:
        """Held-out PSNR/SSIM and semantic cosine; codebook usage over crops of ``source`` (the
        demo's training regions by default) unless ``usage`` is False (a decoder stage cannot
        change any id)."""
        from semhitok_plugin.data import eval_batches
        from semhitok_plugin.evaluation import random_crop_usage, semantic_fidelity
        from semhitok_plugin.model import SemHiTok

        model = SemHiTok.from_pretrained(path)
        metrics = self.reconstruction(model, self.heldout_data)
        values = {
            "psnr": metrics["psnr"],
            "ssim": metrics["ssim"],
            "semantic_cosine": semantic_fidelity(model, eval_batches(self.heldout_data, 32))[
                "cosine"
            ],
        }
        if usage:
            counted = random_crop_usage(model, source or self.train_dir, crops=self.crops)
            values["semantic_usage"] = counted["semantic"]
            values["sub_codebook_usage"] = counted["sub_codebook"]
        if self.lpips:
            values["lpips"] = metrics["lpips"]
        return {k: float(v) for k, v in values.items()}


def _concat(b: _Bench) -> list[Row]:
    stage1 = b.train("stage1", "stage1", [])
    rows = []
    for name, (concat, m) in VARIANTS.items():
        slug = f"{concat}_m{m}"
        overrides = [
            f"init={stage1}",
            f"model_overrides.pixel.concat={concat}",
            f"model_overrides.pixel.sub_codebook_size={m}",
        ]
        values = b.evaluate(b.train("stage2", slug, overrides))
        params = {
            "concat": concat,
            "m": m,
            "stage2_steps": b.steps,
            "checkpoint": str(b.work / slug),
        }
        rows.append(Row(NAME, name, params, values))
    return rows


def _vq_type(b: _Bench) -> list[Row]:
    rows = []
    for name, semantic in VQ_TYPES.items():
        slug = "vq_" + "_".join(str(v) for v in semantic.values())
        sets = [f"model_overrides.semantic.{k}={v}" for k, v in semantic.items()]
        stage1 = b.train("stage1", f"{slug}/stage1", sets)
        values = b.evaluate(b.train("stage2", f"{slug}/stage2", [f"init={stage1}"]))
        params = {**semantic, "stage2_steps": b.steps, "checkpoint": str(b.work / slug)}
        rows.append(Row(NAME, name, params, values))
    return rows


def _stage3_start(b: _Bench) -> list[Row]:
    init = b.init or b.train(
        "stage2", "stage3_init/stage2", [f"init={b.train('stage1', 'stage1', [])}"]
    )
    rows = []
    for i, (name, start) in enumerate(STAGE3_STARTS.items()):
        slug = f"stage3_{i}"
        sets = [f"init={init}", "stage=decoder", BIGGER_DECODER, "ema_decay=0.0"]
        sets += [f"decoder_init={start['decoder_init']}", f"optim.lr={start['optim']['lr']}"]
        sets += [f"losses.{k}={v}" for k, v in start["losses"].items()]
        final = b.train("stage2", slug, sets)
        values = b.evaluate(final, usage=False)
        log = [
            json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()
        ]
        values["final_recon_loss"] = float(log[-1]["recon"])
        params = {**start, "steps": b.steps, "init": str(init), "checkpoint": str(b.work / slug)}
        rows.append(Row(NAME, name, params, values))
    return rows


def _main_job(b: _Bench) -> list[Row]:
    recipes = {name: ("demo", both, stage2) for name, (both, stage2) in MAIN_JOB.items()}
    return _recipes(b, "main", recipes, {})


def _unseen(b: _Bench) -> list[Row]:
    from semhitok_plugin.data import DataConfig

    right = _photo_set(b, "unseen left halves").parent / "right"
    right = DataConfig(str(right), image_size=64, crop="center")
    recipes = {name: (photos, both, []) for name, (photos, both) in UNSEEN.items()}
    return _recipes(b, "unseen", recipes, {"unseen_right": right})


def _photo_set(b: _Bench, name: str) -> Path:
    """The training folder of photo set ``name`` (``PHOTO_SETS``), written on first use."""
    import shutil

    from PIL import Image

    from semhitok_plugin.demo import save_tiles
    from semhitok_plugin.samples import UNSEEN_PHOTOS, unseen_photo

    if name not in PHOTO_SETS:
        raise ValueError(f"unknown photo set {name!r}: choose from {PHOTO_SETS}")
    if name == "demo":
        return b.train_dir
    folder = b.work / "data" / name.replace(" ", "_") / "train"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    if name == "more photos":
        import matplotlib.cbook
        import skimage.data

        for path in b.train_dir.iterdir():
            shutil.copy(path, folder)
        for photo in MORE_PHOTOS:
            pixels = getattr(skimage.data, photo)()
            if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
                pixels = pixels[0]
            Image.fromarray(pixels).convert("RGB").save(folder / f"{photo}.bmp")
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
            Image.open(file).convert("RGB").save(folder / "grace_hopper.bmp")
    else:  # the unseen photos' left halves; their right halves' tiles beside them
        right = folder.parent / "right"
        right.mkdir()
        for photo in UNSEEN_PHOTOS:
            image = unseen_photo(photo)
            half = image.width // 2
            image.crop((0, 0, half, image.height)).save(folder / f"{photo}.bmp")
            save_tiles(image.crop((half, 0, image.width, image.height)), 128, right / photo)
    return folder


def _recipes(b: _Bench, slug: str, recipes: dict, extra: dict) -> list[Row]:
    """Each recipe ``name: (photo set, both stages' overrides, stage 2's)`` trained as the main
    job (in ``{slug}_{i}``) and evaluated on the held-out, the unseen and the ``extra`` tiles
    (``{key: data}``), with the baselines once per training-data config."""
    from semhitok_plugin.data import DataConfig
    from semhitok_plugin.demo import BASELINE_CROPS, write_unseen_tiles
    from semhitok_plugin.model import SemHiTok
    from semhitok_plugin.training import train

    unseen = DataConfig(str(write_unseen_tiles(b.work / "data")), image_size=64, crop="center")
    tiles = {"unseen": unseen, **extra}
    rows, baselines, stage1s = [], set(), {}
    for i, (name, (photos, both, stage2)) in enumerate(recipes.items()):
        source = _photo_set(b, photos)
        sets = [f"data.source={source}", *both] if photos != "demo" else both
        if tuple(sets) not in stage1s:  # rows that change stage 2 only share a stage 1
            stage1s[tuple(sets)] = b.train("stage1", f"{slug}_{i}/stage1", sets)
        overrides = [f"init={stage1s[tuple(sets)]}", *sets, *stage2]
        config = b.config("stage2", f"{slug}_{i}/stage2", overrides, budget=False)
        config.max_steps = 2 if b.quick else config.max_steps
        start = time.perf_counter()
        final = train(config)
        values = b.evaluate(final, source=source)
        values["stage2_minutes"] = (time.perf_counter() - start) / 60
        model = SemHiTok.from_pretrained(final)
        for key, data in tiles.items():
            far = b.reconstruction(model, data)
            values |= {f"{key}_psnr": far["psnr"], f"{key}_ssim": far["ssim"]}
        rows.append(Row(NAME, name, {"photos": photos, "both": both, "stage2": stage2}, values))
        if repr(config.data) not in baselines:  # the training crops this recipe sees
            baselines.add(repr(config.data))
            crops = 64 if b.quick else BASELINE_CROPS
            rows += _baseline_rows(b, model, config.data, tiles, crops, name)
    return rows


def _baseline_rows(b: _Bench, model, train_data, tiles: dict, crops: int, recipe: str) -> list[Row]:
    """Thumbnail and k-means (fitted on ``crops`` crops of ``train_data``) on the held-out and
    the other ``tiles``."""
    from semhitok_plugin.data import eval_batches
    from semhitok_plugin.evaluation import evaluate_baselines, fit_patch_kmeans

    kmeans = fit_patch_kmeans(model, train_data, crops=crops)
    results = {
        key: evaluate_baselines(
            model, eval_batches(data, 32), b.backbones, kmeans=kmeans, progress=False
        )
        for key, data in {"heldout": b.heldout_data, **tiles}.items()
    }
    held = results.pop("heldout")
    rows = []
    for codec in ("thumbnail", "kmeans"):
        values = {"psnr": held[codec]["psnr"], "ssim": held[codec]["ssim"]}
        for key, result in results.items():
            values |= {f"{key}_psnr": result[codec]["psnr"], f"{key}_ssim": result[codec]["ssim"]}
        params = {k: v for k, v in held[codec].items() if k not in values}
        rows.append(Row(NAME, f"{codec}, on the training crops of: {recipe}", params, values))
    return rows


__all__ = [
    "MAIN_JOB",
    "NAME",
    "PARTS",
    "PHOTO_SETS",
    "STAGE3_STARTS",
    "UNSEEN",
    "VARIANTS",
    "VQ_TYPES",
    "run",
]
