"""Pre-extract SemHiTok codes of an ImageFolder in the layout LlamaGen's c2i training reads.

    python -m semhitok_llamagen.extract --model /ckpt/semhitok-l16-256 \\
        --data-path /data/imagenet/train --code-path /codes/imagenet_code_c2i_flip_ten_crop \\
        --image-size 256 --ten-crop --crop-range 1.1

Our equivalent of FoundationVision/LlamaGen ``autoregressive/train/extract_codes_c2i.py`` (same
preprocessing, augmentations and files; see :mod:`semhitok_llamagen.dataset` for the layout):

* preprocessing: ADM's centre crop (``dataset/augmentation.py`` ``center_crop_arr``) to the image
  size, or with ``--ten-crop`` to ``int(size * crop_range)`` followed by ``TenCrop(size)``;
  pixels to [-1, 1];
* augmentations per image: ``(image, horizontal flip)``, or TenCrop's 10 crops (5 + 5 flipped);
* files: ``{i}.npy`` codes ``(1, num_aug, h*w)`` and labels ``(1,)`` int64, ``i`` counting the
  readable images in ImageFolder order. Codes are int32 by default (SemHiTok ids exceed 16 bits;
  LlamaGen's own extractor writes int64): LlamaGen's ``train_c2i.py`` needs them as int64 before
  its cross-entropy — ``semhitok_llamagen.run`` reads them through
  :class:`semhitok_llamagen.dataset.CodeDataset`; ``--dtype int64`` needs no launcher.

Unreadable images are skipped (and listed in ``imagenet{S}_skipped.txt``); the source of every
written index goes to ``imagenet{S}_sources.txt``, which also makes a rerun resume where it
stopped.

Under torchrun it runs one process per GPU, as upstream does::

    torchrun --nproc_per_node 8 -m semhitok_llamagen.extract --model ... --data-path ...

and writes exactly the files one process writes: the images still to do (``todo``, ImageFolder
order) are split by position, rank ``r`` of ``W`` encoding ``todo[j]`` for ``j % W == r`` into
``imagenet{S}_staging/{j}.npy`` (or ``{j}.skip`` with the reason for an unreadable one). Once
every rank has finished, the readable ones are numbered in order (only then is an image's ``i``
known) and each rank renames its staged codes to ``{i}.npy`` and writes the labels; rank 0
appends the sources and skipped lists and the metadata and removes the staging folder. Staged
files are written whole (temporary file, then rename), so a killed run resumes from them with
any number of ranks. The code path must be on a filesystem every node sees. Differences from
upstream: batched, no CUDA requirement, resumable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from semhitok_plugin import SemHiTok, load_model
from semhitok_plugin.distributed import Launch, barrier, process_group
from semhitok_plugin.images import SkippedImages, load_image
from semhitok_plugin.token_files import replace_atomically

from .dataset import DATASET_PREFIX, code_dirs, path_problems

DTYPES = {"int32": np.int32, "int64": np.int64}


def adm_center_crop(img: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop, as LlamaGen's ``center_crop_arr``: halve with a box filter while the
    short side is at least twice ``size``, bicubic-resize the short side to ``size``, crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


class LlamaGenTransform:  # a class, not a closure: DataLoader workers pickle it
    """PIL -> (3, S, S), or (10, 3, S, S) with ``ten_crop``, in [-1, 1]."""

    def __init__(self, image_size: int, ten_crop: bool, crop_range: float) -> None:
        self.image_size, self.ten_crop = image_size, ten_crop
        self.crop_size = int(image_size * crop_range) if ten_crop else image_size
        self.to_tensor = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = adm_center_crop(img, self.crop_size)
        if not self.ten_crop:
            return self.to_tensor(img)
        return torch.stack([self.to_tensor(c) for c in transforms.TenCrop(self.image_size)(img)])


def load_as_imagefolder(path: str) -> Image.Image:
    """torchvision ``ImageFolder``'s default loader (open, ``convert("RGB")``: no EXIF rotation,
    no alpha compositing), so the codes are those of the pixels LlamaGen's extractor reads; an
    undecodable or oversized file raises :class:`ImageReadError` naming it."""
    return load_image(path, as_stored=True)


class SafeImages(Dataset):
    """ImageFolder samples read as ImageFolder reads them: (image or None, label, path, the
    ``(path, reason)`` of a file that could not be read)."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        skipped = SkippedImages()
        image = skipped.read(lambda p: self.transform(load_as_imagefolder(p)), path)
        return image, label, path, skipped.files


def collate(items):
    good = [it for it in items if it[0] is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    bad = [file for it in items for file in it[3]]
    return images, [it[1] for it in good], [it[2] for it in good], bad


@dataclass
class ExtractResult:
    written: int = 0  # images encoded by this run
    resumed: int = 0  # images already written by an earlier run
    skipped: list[str] = field(default_factory=list)  # unreadable files (this run)
    total: int = 0  # files written in all (the dataset length LlamaGen must see)
    num_aug: int = 2
    grid: tuple[int, int] = (0, 0)
    vocab_size: int = 0


@torch.no_grad()
def encode_augmented(model: SemHiTok, x: torch.Tensor, ten_crop: bool) -> torch.Tensor:
    """(B, num_aug, h*w) ids of a batch: x (B, 3, S, S) plus its flip, or x (B, 10, 3, S, S)."""
    if ten_crop:
        x_all, num_aug = x.flatten(0, 1), x.shape[1]
    else:  # upstream: cat([x, flip(x)]) of a batch of one; per image here: [x_i, flip(x_i)]
        x_all, num_aug = torch.stack([x, torch.flip(x, dims=[-1])], dim=1).flatten(0, 1), 2
    ids = model.encode(x_all).flat_ids
    return ids.reshape(x.shape[0], num_aug, -1)


def extract(
    model: SemHiTok,
    data_path: str | Path,
    code_path: str | Path,
    *,
    image_size: int | None = None,
    ten_crop: bool = False,
    crop_range: float = 1.1,
    batch_size: int = 16,
    limit: int | None = None,
    dtype: str = "int32",
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    check_path: bool = True,
    launch: Launch | None = None,
) -> ExtractResult:
    """Encode the images of ``data_path`` not yet under ``code_path``; every rank of a launch
    calls it with the same arguments (see the module docstring), and gets the same result."""
    launch = launch or Launch()
    image_size = image_size or model.config.image_size
    if image_size != model.config.image_size:
        raise ValueError(
            f"--image-size {image_size} but the tokenizer takes {model.config.image_size} px "
            "images (its LlamaGen --image-size)"
        )
    if model.vocab_size - 1 > np.iinfo(DTYPES[dtype]).max:
        raise ValueError(f"{dtype} cannot hold ids up to {model.vocab_size - 1}")
    problems = path_problems(code_path, ten_crop=ten_crop, crop_range=crop_range)
    if check_path and problems:
        raise ValueError("; ".join(problems) + " (or pass --no-path-check)")
    codes_dir, labels_dir = code_dirs(code_path, image_size)
    codes_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    root = Path(code_path)
    sources_file = root / f"{DATASET_PREFIX}{image_size}_sources.txt"
    skipped_file = root / f"{DATASET_PREFIX}{image_size}_skipped.txt"
    if launch.rank == 0:
        resume_state(sources_file, codes_dir, labels_dir)  # drops a torn tail of the list
    barrier()
    done = resume_state(sources_file, codes_dir, labels_dir)
    folder = ImageFolder(str(data_path))  # lists (path, class index) in sorted order
    samples = folder.samples[:limit] if limit is not None else folder.samples
    seen = set(done) | set(read_lines(skipped_file))
    todo = [s for s in samples if s[0] not in seen]
    staging = Staging(
        root / f"{DATASET_PREFIX}{image_size}_staging",
        [p for p, _ in todo],
        f"{model.name_or_path} {dtype} ten_crop={ten_crop} crop_range={crop_range}",
    )
    if launch.rank == 0:
        staging.prepare()
    barrier()
    ours = range(launch.rank, len(todo), launch.world_size)
    mine = [j for j in ours if not staging.finished(j)]
    model = model.to(device).eval()
    loader = DataLoader(
        SafeImages([todo[j] for j in mine], LlamaGenTransform(image_size, ten_crop, crop_range)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
    )
    position = {todo[j][0]: j for j in mine}
    bar = tqdm(total=len(mine), unit="img", desc="extracting", disable=not progress)
    for images, _, paths, bad in loader:
        for path, reason in bad:
            print(f"skipping unreadable {path} ({reason})", file=sys.stderr)
            staging.skip(position[path], reason)
        if images is not None:
            ids = encode_augmented(model, images.to(device), ten_crop).cpu().numpy()
            for codes, path in zip(ids, paths, strict=True):
                staging.stage(position[path], codes[None].astype(DTYPES[dtype]))
        bar.update(len(paths) + len(bad))
    bar.close()
    barrier()  # every image of todo is staged: the files can be numbered
    readable = [j for j in range(len(todo)) if staging.finished(j) and not staging.skipped(j)]
    number = {j: len(done) + k for k, j in enumerate(readable)}
    barrier()  # every rank has numbered the files before any staged file moves
    for j in ours:
        if j in number:
            os.replace(staging.codes(j), codes_dir / f"{number[j]}.npy")
            np.save(labels_dir / f"{number[j]}.npy", np.array([todo[j][1]], dtype=np.int64))
    barrier()
    result = ExtractResult(resumed=len(done), num_aug=10 if ten_crop else 2)
    result.grid, result.vocab_size = tuple(model.grid_size), model.vocab_size
    result.written, result.total = len(readable), len(done) + len(readable)
    result.skipped = [todo[j][0] for j in range(len(todo)) if staging.skipped(j)]
    if launch.rank == 0:  # the sources last: a crash before here re-encodes, never misnumbers
        with open(sources_file, "a") as sources, open(skipped_file, "a") as skipped:
            sources.writelines(todo[j][0] + "\n" for j in readable)
            skipped.writelines(path + "\n" for path in result.skipped)
        meta = root / f"{DATASET_PREFIX}{image_size}_semhitok.json"
        write_meta(meta, model, result, dtype, ten_crop, crop_range)
        staging.remove()
    return result


class Staging:
    """The staging folder of a run: ``{j}.npy`` (codes of ``todo[j]``, as they will be saved)
    or ``{j}.skip`` (why ``todo[j]`` is unreadable), and ``todo.txt``: the settings (``key``)
    and the list the positions ``j`` refer to. Files staged for other settings or another list
    are discarded."""

    def __init__(self, directory: Path, todo: list[str], key: str) -> None:
        self.directory, self.todo, self.key = directory, todo, key

    def prepare(self) -> None:
        manifest = self.directory / "todo.txt"
        listed = "".join(f"{line}\n" for line in [f"# {self.key}", *self.todo])
        if manifest.exists() and manifest.read_text() == listed:
            return
        self.remove()
        self.directory.mkdir(parents=True)
        replace_atomically(manifest, lambda f: f.write(listed.encode()))

    def codes(self, j: int) -> Path:
        return self.directory / f"{j}.npy"

    def stage(self, j: int, codes: np.ndarray) -> None:
        replace_atomically(self.codes(j), lambda f: np.save(f, codes))

    def skip(self, j: int, reason: str) -> None:
        replace_atomically(self.directory / f"{j}.skip", lambda f: f.write(reason.encode()))

    def skipped(self, j: int) -> bool:
        return (self.directory / f"{j}.skip").exists()

    def finished(self, j: int) -> bool:
        return self.skipped(j) or self.codes(j).exists()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def resume_state(sources_file: Path, codes_dir: Path, labels_dir: Path) -> list[str]:
    """Sources of the indices already written (a prefix whose files both exist)."""
    done = []
    for i, path in enumerate(read_lines(sources_file)):
        if not ((codes_dir / f"{i}.npy").exists() and (labels_dir / f"{i}.npy").exists()):
            break
        done.append(path)
    if len(done) < len(read_lines(sources_file)):  # drop a torn tail so appends stay aligned
        sources_file.write_text("".join(p + "\n" for p in done))
    return done


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def write_meta(path: Path, model: SemHiTok, result: ExtractResult, dtype, ten_crop, crop_range):
    meta = {
        "tokenizer": model.name_or_path,
        "vocab_size": model.vocab_size,
        "grid": list(model.grid_size),
        "image_size": model.config.image_size,
        "dtype": dtype,
        "num_aug": result.num_aug,
        "ten_crop": ten_crop,
        "crop_range": crop_range if ten_crop else None,
        "files": result.total,
    }
    path.write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m semhitok_llamagen.extract", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", required=True, help="SemHiTok preset, save_pretrained dir or hub id")
    p.add_argument("--teacher-weights", help="teacher weights for a preset (file or dir)")
    p.add_argument("--data-path", required=True, help="ImageFolder root (class subfolders)")
    p.add_argument("--code-path", required=True, help="output root; must contain 'flip'")
    p.add_argument("--image-size", type=int, help="default: the tokenizer's")
    p.add_argument("--ten-crop", action="store_true", help="TenCrop of a centre crop (as upstream)")
    p.add_argument("--crop-range", type=float, default=1.1, help="ten-crop: crop size / image size")
    p.add_argument("--batch-size", type=int, default=16, help="images per encode call")
    p.add_argument("--limit", type=int, help="only the first N images of the folder")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="int32",
        help="code dtype (int64 = LlamaGen's, trains with no reader change)",
    )
    p.add_argument("--device", help="default: this rank's GPU (cuda:LOCAL_RANK), else the CPU")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-path-check", action="store_true", help="allow a code path without 'flip'")
    args = p.parse_args(argv)
    problems = path_problems(args.code_path, ten_crop=args.ten_crop, crop_range=args.crop_range)
    if problems and not args.no_path_check:  # before loading a model that may be large
        p.error("; ".join(problems) + " (or pass --no-path-check)")
    model = load_model(args.model, teacher_weights=args.teacher_weights)
    with process_group(args.device) as (launch, device):
        try:
            r = extract(
                model,
                args.data_path,
                args.code_path,
                image_size=args.image_size,
                ten_crop=args.ten_crop,
                crop_range=args.crop_range,
                batch_size=args.batch_size,
                limit=args.limit,
                dtype=args.dtype,
                device=device,
                num_workers=args.num_workers,
                progress=not args.no_progress and launch.rank == 0,
                check_path=not args.no_path_check,
                launch=launch,
            )
        except ValueError as err:
            p.error(str(err))
    if launch.rank != 0:
        return 0
    print(
        f"wrote {r.written} images ({r.resumed} already there, {len(r.skipped)} unreadable "
        f"skipped): {r.total} files of (1, {r.num_aug}, {r.grid[0] * r.grid[1]}) {args.dtype} "
        f"codes, vocab {r.vocab_size:,}"
    )
    if r.total != 1281167:
        print(
            f"note: LlamaGen's CustomDataset assumes 1,281,167 files (ImageNet-1k train); for "
            f"{r.total} use semhitok_llamagen.dataset.build_imagenet_code"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
