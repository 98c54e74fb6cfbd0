"""The hierarchical id space: ``flat = sem_id * m + pix_id`` (paper Fig. 3b, "codebook flattening").

Every id that crosses a public boundary goes through these helpers, so an out-of-range id is
reported with the range it violated instead of silently indexing a neighbouring code.
"""

from __future__ import annotations

import torch


class TokenIdError(ValueError):
    """Token ids that do not belong to this tokenizer's vocabulary."""


def check_ids(ids: torch.Tensor, upper: int, name: str) -> None:
    """Raise :class:`TokenIdError` unless ``ids`` is an integer tensor with values in [0, upper)."""
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TokenIdError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise TokenIdError(f"{name} contains {bad}, outside the valid range [0, {upper})")


def merge_ids(
    sem_ids: torch.Tensor, pix_ids: torch.Tensor, codebook_size: int, sub_size: int
) -> torch.Tensor:
    """Flat ids from (semantic id, pixel id inside its sub-codebook) pairs."""
    check_ids(sem_ids, codebook_size, "sem_ids")
    check_ids(pix_ids, sub_size, "pix_ids")
    return sem_ids.long() * sub_size + pix_ids.long()


def split_ids(
    flat_ids: torch.Tensor, codebook_size: int, sub_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(semantic id, pixel id) pairs from flat ids; inverse of :func:`merge_ids`."""
    check_ids(flat_ids, codebook_size * sub_size, "flat_ids")
    flat = flat_ids.long()
    return torch.div(flat, sub_size, rounding_mode="floor"), flat.remainder(sub_size)
