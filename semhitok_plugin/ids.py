"""The hierarchical id space: ``flat = sem_id * m + pix_id`` (paper Fig. 3b, "codebook flattening").

Every id that crosses a public boundary goes through these helpers, so an out-of-range id is
reported with the range it violated instead of silently indexing a neighbouring code.
"""

from __future__ import annotations

import torch


class TokenIdError(ValueError):
    """Token ids that do not belong to this tokenizer's vocabulary. ``index`` is where the
    reported id first occurs, so callers that know more (a file's image names) can add it."""

    def __init__(self, message: str, index: tuple[int, ...] | None = None) -> None:
        super().__init__(message)
        self.index = index


def check_ids(ids: torch.Tensor, upper: int, name: str) -> None:
    """Raise :class:`TokenIdError` unless ``ids`` is an integer tensor with values in [0, upper).

    Refused rather than converted: floats (rounding would pick a neighbouring code), bools, and
    integer dtypes too narrow for the vocabulary (ids stored in them may already have wrapped
    around). The message names the first offending id, where it is and the valid range.
    """
    if not isinstance(ids, torch.Tensor):
        raise TokenIdError(f"{name} must be a torch tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TokenIdError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
    if ids.dtype == torch.uint64 or torch.iinfo(ids.dtype).max < upper - 1:
        raise TokenIdError(
            f"{name} has dtype {ids.dtype}, which cannot hold every id in [0, {upper}) exactly "
            "(ids may have wrapped around): use int32 or int64"
        )
    if ids.numel() == 0:
        return
    wide = ids.long()  # exact for every accepted dtype; torch has no min/max for uint16/uint32
    lo, hi = int(wide.min()), int(wide.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        where = tuple((wide == bad).nonzero()[0].tolist())
        raise TokenIdError(
            f"{name} contains {bad}, outside the valid range [0, {upper}) (first at index {where})",
            where,
        )


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
