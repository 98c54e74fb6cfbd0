"""Equal-bit baselines: the codecs a reconstruction figure has to beat to mean anything.

A tokenizer that writes T tokens from a vocabulary of V ids spends ``T log2 V`` bits an image.
Two codecs anyone can write spend the same:

* :class:`Thumbnail`: an s x s bicubic thumbnail whose channels are quantised to L uniform levels,
  upsampled back (bicubic). The whole thumbnail is one integer in base L, so it costs
  ``ceil(3 s^2 log2 L)`` bits; for each side s, L is the most levels the budget allows (at most
  256). Which side is best depends on the images, so :func:`best_thumbnail` picks the one with
  the best mean PSNR on a sample of them (the strongest thumbnail: it can only make the
  tokenizer look worse).
* :class:`PatchKMeans`: k-means with V centroids over raw p x p x 3 pixel patches (p: the
  tokenizer's patch size), fitted on training crops; an image is coded as one centroid id per
  patch, exactly the tokenizer's budget. Fitted by scikit-learn's ``KMeans`` (Lloyd, k-means++
  init), which runs on the CPU: at a paper-scale vocabulary (196,608 flat ids) a fit takes hours.

Images are (B, 3, S, S) floats in [-1, 1], as everywhere in the library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError
from .images import to_uint8


def bits_per_image(tokens: int, vocabulary: int) -> float:
    """What a tokenizer's ids cost: ``tokens x log2(vocabulary)``."""
    return tokens * math.log2(vocabulary)


@dataclass(frozen=True)
class Thumbnail:
    """An ``side`` x ``side`` thumbnail with ``levels`` uniform levels per channel."""

    side: int
    levels: int

    @classmethod
    def within(cls, bits: float, side: int) -> Thumbnail | None:
        """The most levels (2..256) an ``side`` x ``side`` thumbnail can have within ``bits``;
        None when even two levels do not fit."""
        levels = math.floor(2 ** min(8.0, bits / (3 * side * side)) + 1e-9)
        while levels >= 2 and cls(side, levels).bits > bits:  # float rounding of the power
            levels -= 1
        return cls(side, levels) if levels >= 2 else None

    @property
    def bits(self) -> int:
        return math.ceil(3 * self.side * self.side * math.log2(self.levels))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        small = F.interpolate(
            (images + 1) / 2, size=(self.side, self.side), mode="bicubic", antialias=True
        )
        small = torch.round(small.clamp(0, 1) * (self.levels - 1)) / (self.levels - 1)
        return (F.interpolate(small, size=size, mode="bicubic") * 2 - 1).clamp(-1, 1)


def thumbnails_within(bits: float, image_size: int) -> list[Thumbnail]:
    """Every side's thumbnail within ``bits``, smallest side first."""
    candidates = (Thumbnail.within(bits, side) for side in range(1, image_size + 1))
    return [t for t in candidates if t is not None]


def best_thumbnail(images: torch.Tensor, bits: float) -> Thumbnail:
    """The thumbnail within ``bits`` with the highest mean PSNR on ``images`` (as reported)."""
    from .evaluation import psnr_per_image

    candidates = thumbnails_within(bits, images.shape[-1])
    if not candidates:
        raise ValueError(f"no thumbnail fits in {bits:.0f} bits (a 1 x 1 one needs 3)")
    reference = to_uint8(images)
    return max(
        candidates,
        key=lambda t: float(psnr_per_image(reference, to_uint8(t.reconstruct(images))).mean()),
    )


def patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, (S/p)^2, 3 p^2): the non-overlapping p x p patches, row-major."""
    if images.shape[-1] % patch or images.shape[-2] % patch:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {patch}")
    return F.unfold(images, patch, stride=patch).transpose(1, 2)


def from_patches(rows: torch.Tensor, size: int, patch: int) -> torch.Tensor:
    """The inverse of :func:`patches` for square ``size`` x ``size`` images."""
    return F.fold(rows.transpose(1, 2), (size, size), patch, stride=patch)


class PatchKMeans:
    """A patch VQ: each p x p patch becomes the id of its nearest of V centroids."""

    def __init__(self, centroids: torch.Tensor, patch: int, *, fitted_on: int = 0) -> None:
        if centroids.ndim != 2 or centroids.shape[1] != 3 * patch * patch:
            raise ValueError(
                f"centroids must be (V, {3 * patch * patch}) for {patch} px patches, "
                f"got {tuple(centroids.shape)}"
            )
        self.centroids, self.patch = centroids.float(), patch
        self.fitted_on = fitted_on  # training patches (0: centroids given)

    @classmethod
    def fit(
        cls,
        crops: Iterable[torch.Tensor],
        vocabulary: int,
        patch: int,
        *,
        max_iter: int = 100,
        seed: int = 0,
    ) -> PatchKMeans:
        """Fit V = ``vocabulary`` centroids on the patches of ``crops`` (batches of images)."""
        from sklearn.cluster import KMeans

        data = torch.cat([patches(c.float(), patch).reshape(-1, 3 * patch * patch) for c in crops])
        if len(data) < vocabulary:
            raise ConfigError(
                f"k-means with {vocabulary} centroids needs at least as many patches, got "
                f"{len(data)}: give more training crops"
            )
        km = KMeans(vocabulary, init="k-means++", n_init=1, max_iter=max_iter, random_state=seed)
        km.fit(data.numpy().astype(np.float32))
        return cls(torch.from_numpy(km.cluster_centers_), patch, fitted_on=len(data))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, (S/p)^2) centroid ids."""
        rows = patches(images.float(), self.patch)
        flat, centroids = rows.reshape(-1, rows.shape[-1]), self.centroids.to(images.device)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin.
        scores = flat @ centroids.T - 0.5 * (centroids**2).sum(1)
        return scores.argmax(1).view(rows.shape[:2])

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        rows = self.centroids.to(images.device)[self.encode(images)]
        return from_patches(rows, images.shape[-1], self.patch).clamp(-1, 1)


__all__ = [
    "PatchKMeans",
    "Thumbnail",
    "best_thumbnail",
    "bits_per_image",
    "from_patches",
    "patches",
    "thumbnails_within",
]
