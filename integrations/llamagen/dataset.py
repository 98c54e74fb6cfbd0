"""The code-file layout LlamaGen's class-to-image training reads, and a reader that fits SemHiTok.

Layout (FoundationVision/LlamaGen ``autoregressive/train/extract_codes_c2i.py`` writes it,
``dataset/imagenet.py`` ``build_imagenet_code`` / ``CustomDataset`` read it)::

    CODE_PATH/imagenet{S}_codes/{i}.npy    (1, num_aug, h*w)  num_aug = 2 (image, h-flip) or 10
                                                              (ten-crop: TenCrop's 5 + 5 flips)
    CODE_PATH/imagenet{S}_labels/{i}.npy   (1,) int64

* ``imagenet`` is hard-coded in ``build_imagenet_code`` whatever ``--dataset`` the extractor got.
* ``CustomDataset`` picks one augmentation per sample only when the *path* contains ``flip``
  (``self.flip = 'flip' in self.feature_dir``); without it a sample is ``(1, num_aug, h*w)`` and
  ``train_c2i.py`` trains on ``num_aug * h*w`` tokens. Every layout has num_aug >= 2, so CODE_PATH
  must contain ``flip``.
* With ``ten_crop/`` in the path, a twin directory ``..._ten_crop_105/`` (crop range 1.05), if it
  exists, is drawn from half of the time.
* ``CustomDataset`` has ``range(1281167)`` files hard-coded (ImageNet-1k train) and returns the
  arrays with the dtype they were saved in. LlamaGen saves int64; SemHiTok's ids (up to 196,607)
  need more than 16 bits, and int32 halves the disk of int64, but ``F.cross_entropy`` in
  LlamaGen's ``gpt.py`` wants int64 targets. :class:`CodeDataset` below is ``CustomDataset``'s
  behaviour with the length read from disk and an int64 cast, so int32 files train unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

DATASET_PREFIX = "imagenet"  # LlamaGen's build_imagenet_code hard-codes it
TEN_CROP_TWIN = ("ten_crop/", "ten_crop_105/")  # CustomDataset's aug_feature_dir rule


def code_dirs(code_path: str | Path, image_size: int) -> tuple[Path, Path]:
    """``(codes_dir, labels_dir)`` as LlamaGen's ``build_imagenet_code`` names them."""
    root = Path(code_path)
    return (
        root / f"{DATASET_PREFIX}{image_size}_codes",
        root / f"{DATASET_PREFIX}{image_size}_labels",
    )


def path_problems(code_path: str | Path, *, ten_crop: bool, crop_range: float) -> list[str]:
    """Why LlamaGen's ``CustomDataset`` would misread codes written under ``code_path``."""
    path = os.path.abspath(code_path)
    name = Path(path).name
    problems = []
    if "flip" not in path:  # upstream tests the whole path (feature_dir) for the substring
        problems.append(
            f"{code_path!r} has no 'flip' in it: LlamaGen's CustomDataset picks one "
            "augmentation per sample only for paths containing 'flip' (dataset/imagenet.py), "
            "otherwise it trains on all of them concatenated; name it like "
            "'.../imagenet_code_c2i_flip'"
        )
    if ten_crop:
        twin = crop_range == 1.05
        suffix = "ten_crop_105" if twin else "ten_crop"
        if not name.endswith(suffix):
            problems.append(
                f"ten-crop codes with crop range {crop_range} belong in a directory ending in "
                f"{suffix!r} (LlamaGen pairs '…_ten_crop/' with its 1.05 twin '…_ten_crop_105/')"
            )
    return problems


class CodeDataset(Dataset):
    """LlamaGen's ``CustomDataset`` read rule, sized from disk, yielding int64 codes.

    ``__getitem__`` returns ``(codes, label)``: codes ``(1, h*w)`` int64 (one augmentation drawn
    uniformly when ``flip`` is in the path, as upstream), label ``(1,)`` int64.
    """

    def __init__(self, feature_dir: str | Path, label_dir: str | Path) -> None:
        self.feature_dir, self.label_dir = str(feature_dir), str(label_dir)
        self.flip = "flip" in self.feature_dir
        twin = [d.replace(*TEN_CROP_TWIN) for d in (self.feature_dir, self.label_dir)]
        have_twin = twin[0] != self.feature_dir and all(os.path.isdir(d) for d in twin)
        self.aug_feature_dir, self.aug_label_dir = twin if have_twin else (None, None)
        self.length = count_files(self.feature_dir)
        if count_files(self.label_dir) < self.length:
            raise FileNotFoundError(
                f"{self.label_dir} has fewer label files than {self.feature_dir} has code files"
            )
        if self.aug_feature_dir is not None:
            self.length = min(self.length, count_files(self.aug_feature_dir))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        feature_dir, label_dir = self.feature_dir, self.label_dir
        if self.aug_feature_dir is not None and torch.rand(1) < 0.5:
            feature_dir, label_dir = self.aug_feature_dir, self.aug_label_dir
        features = np.load(os.path.join(feature_dir, f"{idx}.npy"), allow_pickle=False)
        if self.flip:
            aug = int(torch.randint(0, features.shape[1], (1,)))
            features = features[:, aug]
        labels = np.load(os.path.join(label_dir, f"{idx}.npy"), allow_pickle=False)
        codes, labels = features.astype(np.int64), labels.astype(np.int64)
        return torch.from_numpy(codes), torch.from_numpy(labels)


def count_files(directory: str | Path) -> int:
    """How many of ``0.npy, 1.npy, ...`` exist without a gap (the files LlamaGen can index)."""
    names = {n for n in os.listdir(directory) if n.endswith(".npy")}
    n = 0
    while f"{n}.npy" in names:
        n += 1
    return n


def build_imagenet_code(args) -> CodeDataset:
    """Drop-in for LlamaGen's ``dataset.imagenet.build_imagenet_code(args)`` (same dirs, same
    read rule), for ``dataset.build.build_imagenet_code`` to be replaced with."""
    feature_dir, label_dir = code_dirs(args.code_path, args.image_size)
    if not (feature_dir.is_dir() and label_dir.is_dir()):
        raise FileNotFoundError(
            f"no {feature_dir} / {label_dir}: run python -m semhitok_llamagen.extract first"
        )
    return CodeDataset(feature_dir, label_dir)


__all__ = [
    "DATASET_PREFIX",
    "CodeDataset",
    "build_imagenet_code",
    "code_dirs",
    "count_files",
    "path_problems",
]
