"""Training and evaluation data: image folders, file lists or tar shards -> batches in [-1, 1].

A source is an image folder (searched recursively), a ``.txt`` list (one path per line), a
``.jsonl`` list (``{"path": ..., "label": int?}`` per line; relative paths are relative to the
list) or WebDataset tar shards given as a path, glob or brace pattern. Folders and lists are
map-style (a :class:`~torch.utils.data.Dataset` plus a sampler); shards are streamed by an
:class:`~torch.utils.data.IterableDataset` built on ``webdataset``'s tar reader.

Design
------
*One sequence per rank.* Epoch ``e`` of a map-style source is a permutation of all files seeded by
``(seed, e)``; rank ``r`` takes every ``world_size``-th entry from ``r`` on, so ranks are disjoint
and together cover the epoch (no padding, no duplicates). For shards the shard order is seeded by
``(seed, e)`` and rank ``r`` takes every ``world_size``-th shard (each shard is read by one rank);
a shuffle buffer seeded by ``(seed, e, r)`` then mixes the samples of the rank's shards.

*Batches straddle epochs*, so every batch has ``batch_size`` slots and no sample is dropped. The
stream's state is a cursor ``(epoch, position)``: ``position`` counts the slots of the current epoch
this rank has consumed, readable or not; after an epoch's last slot the cursor is ``(e + 1, 0)``.
Each batch carries the cursor after its last slot from the worker that built it, so the main process
tracks the state without knowing how many samples a tar epoch holds.

*Per-sample seeding.* The random crop and flip of a sample come from a generator seeded by
``(seed, epoch, sample identity)`` (the file's index; for shards the shard's index and the
sample's ordinal in it), never from a global or per-worker RNG. A sample's pixels therefore do not
depend on which worker loads it, on the number of workers, or on whether the stream was resumed, so
the cursor alone is enough to resume exactly. Conversely, opening a stream leaves the global torch
RNG untouched (a DataLoader draws its workers' base seed from it by default), so the training
step's own random draws (sub-codebook init and restarts) are the same after a resume, which opens
the stream at a different step.

*Workers.* Map-style: the sampler emits one request per batch and the DataLoader hands request ``i``
to worker ``i % W``. Shards: every worker reads the rank's shard stream (raw bytes only) and
decodes just the batches ``i`` with ``i % W == w``; the DataLoader collects batches round-robin, so
both kinds give the same batches whatever ``num_workers`` is. The price for shards is that each
worker reads the tar bytes (mostly from the page cache) while only 1/W of the samples are decoded
by it. Resuming a shard stream re-reads the epoch up to the cursor without decoding it.

*Bad input never stops a run.* A file that cannot be decoded (corrupt, truncated, empty, not an
image, an unreadable tar member or shard, a malformed tar label) becomes ``None``; :func:`collate`
drops the ``None`` samples and counts them as ``skipped``. The names travel with the batch to the
main process, which logs each one once (logger ``semhitok_plugin.data``, WARNING). A batch without a
readable image is not yielded; its count is added to the next batch's ``skipped``. A missing or
empty source raises at construction; a rank whose whole epoch is unreadable raises instead of
spinning forever.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeVar

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info
from torchvision.transforms.functional import adjust_hue

from semhitok_plugin.config import (
    Bounds,
    ConfigError,
    NonNegativeInt,
    OneOf,
    PositiveInt,
    check_fields,
)
from semhitok_plugin.images import (
    SkippedImages,
    adm_center_crop,
    center_crop,
    load_image,
    to_tensor,
)

logger = logging.getLogger(__name__)


class DataSourceError(ConfigError):
    """A data source that holds no usable images, or is not a kind we can read."""


IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
SHARD_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
CROPS = ("random", "center", "adm")  # adm: ADM/LlamaGen evaluation preprocessing
ASPECT_RATIOS = (3 / 4, 4 / 3)
# Tags that keep the random streams of different purposes apart.
_ORDER, _BUFFER, _AUGMENT = 0, 1, 2

T = TypeVar("T")
Cursor = tuple[int, int]  # (epoch, position) after a slot
AreaFraction = Annotated[float, Bounds(gt=0, le=1)]


@dataclass
class DataConfig:
    """Where the images come from and how they are cropped (see the module docstring)."""

    source: str
    image_size: PositiveInt = 256
    crop: Annotated[str, OneOf(CROPS)] = "random"
    scale: tuple[AreaFraction, AreaFraction] = (0.5, 1.0)  # (min, max) area of a random crop
    flip: bool = True  # random horizontal flip; only with crop="random"
    # Random hue rotation of up to +-hue of a full turn (0.5: any hue); only with crop="random".
    # Colours a small photo set lacks (the demo's six photos have little sky or foliage) are
    # then still learned.
    hue: Annotated[float, Bounds(ge=0, le=0.5)] = 0.0
    num_workers: NonNegativeInt = 0
    # tar shards: samples mixed across the rank's shards (0: off)
    shuffle_buffer: NonNegativeInt = 1000

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            self.source = os.fspath(self.source)
        check_fields(self)
        if not self.source:
            raise ConfigError(
                "source is empty: give an image folder, a .txt or .jsonl list, or .tar shards"
            )
        if self.scale[0] > self.scale[1]:
            raise ConfigError(f"scale must be (min, max) with min <= max, got {self.scale}")


class ImageStream:
    """Infinite, deterministic, resumable stream of training batches for one rank.

    Each batch is ``{"images": (B, 3, S, S) float in [-1, 1], "labels": (B,) long or None,
    "skipped": int}``. Iterating starts from the current state (the start, or what
    :meth:`load_state_dict` set); iterate one loop at a time.
    """

    def __init__(
        self,
        config: DataConfig,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_split(batch_size, rank, world_size)
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.config, self.batch_size, self.seed = config, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._source = _open_source(config.source)
        if len(self._source) < world_size:
            kind = "files" if isinstance(self._source, _Files) else "shards"
            raise DataSourceError(
                f"data source {config.source!r} has {len(self._source)} {kind}, fewer than "
                f"world_size={world_size}: some rank would get no data"
            )
        self._cursor: Cursor = (0, 0)
        self.skipped_total = 0
        self._logged: set[str] = set()

    def __iter__(self) -> Iterator[dict]:
        return _deliver(self._tracked(self._loader()), self._logged)

    def state_dict(self) -> dict:
        epoch, position = self._cursor
        return {"epoch": epoch, "position": position, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        epoch, position, skipped = (int(state[k]) for k in ("epoch", "position", "skipped_total"))
        if min(epoch, position, skipped) < 0:
            raise ValueError(f"invalid ImageStream state {state}")
        self._cursor, self.skipped_total = (epoch, position), skipped

    def _loader(self) -> DataLoader:
        split = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size}
        sampler = None
        if isinstance(self._source, _Files):
            dataset = _FileDataset(self._source, self.config, self.seed)
            sampler = _RequestSampler(
                len(self._source), self.batch_size, start=self._cursor, **split
            )
        else:
            dataset = _ShardDataset(
                self._source, self.config, self.batch_size, start=self._cursor, **split
            )
        return _batch_loader(dataset, sampler, self.config.num_workers)

    def _tracked(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Advance the state with each batch; raise once a whole epoch had no readable image."""
        last_good_epoch = self._cursor[0]
        for batch in batches:
            self._cursor = tuple(batch["end"])
            self.skipped_total += batch["skipped"]
            if batch["images"] is not None:
                last_good_epoch = self._cursor[0]
            elif self._cursor[0] >= last_good_epoch + 2:
                raise RuntimeError(
                    f"no readable image in a whole epoch of data source {self.config.source!r} "
                    f"on rank {self.rank} ({self.skipped_total} files skipped so far)"
                )
            yield batch


def eval_batches(
    config: DataConfig, batch_size: int, *, rank: int = 0, world_size: int = 1
) -> Iterator[dict]:
    """One finite pass over the data (crop "center" unless "adm", no flip), same batch dicts; the
    last batch may be smaller. Rank ``r`` gets every ``world_size``-th file (or shard) from
    ``r`` on."""
    _check_split(batch_size, rank, world_size)
    config = replace(config, crop="adm" if config.crop == "adm" else "center", flip=False)
    source = _open_source(config.source)
    if isinstance(source, _Files):
        keys = ((0, index) for index in range(rank, len(source), world_size))
        dataset = _FileDataset(source, config, seed=0)
        requests = list(_requests(_with_cursors(keys, 0, 0), batch_size))
    else:
        split = {"seed": 0, "rank": rank, "world_size": world_size}
        dataset = _ShardDataset(source, config, batch_size, start=None, **split)
        requests = None
    return _deliver(_fold_tail(_batch_loader(dataset, requests, config.num_workers)), set())


def _batch_loader(dataset: Dataset, sampler: Iterable | None, num_workers: int) -> DataLoader:
    """A DataLoader of ready batches whose worker seeds come from a private generator, not the
    global RNG (samples seed themselves, see the module docs)."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


# --- batches ------------------------------------------------------------------------------------


class _Sample(NamedTuple):
    image: torch.Tensor  # (3, S, S) in [-1, 1]
    label: int | None


class _Request(NamedTuple):
    """The slots of one batch and the cursor after its last slot."""

    items: list
    end: Cursor


class _Unreadable(Exception):
    """A tar sample that cannot be used (no readable shard, malformed label)."""


def collate(samples: list[_Sample | None]) -> dict[str, Any]:
    """Stack the readable samples, count the unreadable ones (``None``) as ``skipped``.

    ``images`` is None when no sample is readable; ``labels`` is None unless every kept sample has
    one.
    """
    kept = [s for s in samples if s is not None]
    labels = [s.label for s in kept]
    return {
        "images": torch.stack([s.image for s in kept]) if kept else None,
        "labels": torch.tensor(labels, dtype=torch.long) if kept and None not in labels else None,
        "skipped": len(samples) - len(kept),
    }


def _load_batch(
    read: Callable[[T], _Sample], request: _Request, names: list[str]
) -> dict[str, Any]:
    """Read every slot of ``request`` (None where unreadable), collate, and attach the names and
    reasons of the unreadable files and the cursor after the batch."""
    skipped = SkippedImages(errors=(_Unreadable,))
    samples = [
        skipped.read(read, item, name) for item, name in zip(request.items, names, strict=True)
    ]
    return {**collate(samples), "bad": skipped.files, "end": request.end}


def _deliver(batches: Iterable[dict], logged: set[str]) -> Iterator[dict]:
    """Public batches: log each unreadable file once, fold batches without a readable image into
    the next batch's ``skipped``."""
    skipped = 0
    for batch in batches:
        for name, reason in batch["bad"]:
            if name not in logged:
                logged.add(name)
                logger.warning("skipping unreadable %s (%s)", name, reason)
        skipped += batch["skipped"]
        if batch["images"] is not None:
            yield {"images": batch["images"], "labels": batch["labels"], "skipped": skipped}
            skipped = 0


def _fold_tail(batches: Iterable[dict]) -> Iterator[dict]:
    """For a finite pass: add each batch without a readable image to the batch before it (one
    batch of look-ahead), so the unreadable files at the end of the pass are still counted."""
    held = None
    for batch in batches:
        if held is not None and batch["images"] is None:
            held["skipped"] += batch["skipped"]
            held["bad"] += batch["bad"]
            continue
        if held is not None:
            yield held
        held = batch
    if held is not None:
        yield held


def _with_cursors(items: Iterable[T], epoch: int, start: int) -> Iterator[tuple[T, Cursor]]:
    """The items of one epoch from position ``start`` on, each with the cursor after it; after the
    last item (found by one item of look-ahead) the cursor is the start of the next epoch. Items
    before ``start`` are passed over without being loaded."""
    pending: list[T] = []
    for position, item in enumerate(items):
        if position < start:
            continue
        if pending:
            yield pending.pop(), (epoch, position)
        pending.append(item)
    if pending:
        yield pending.pop(), (epoch + 1, 0)


def _epochs(epoch_items: Callable[[int], Iterable[T]], start: Cursor) -> Iterator[tuple[T, Cursor]]:
    """Epoch after epoch from ``start``, forever."""
    epoch, position = start
    while True:
        yield from _with_cursors(epoch_items(epoch), epoch, position)
        epoch, position = epoch + 1, 0


def _requests(cursored: Iterable[tuple[T, Cursor]], batch_size: int) -> Iterator[_Request]:
    items = iter(cursored)
    while chunk := list(islice(items, batch_size)):
        yield _Request([item for item, _ in chunk], chunk[-1][1])


# --- pixels -------------------------------------------------------------------------------------


def _crop(img: Image.Image, config: DataConfig, entropy: tuple[int, ...]) -> torch.Tensor:
    """Crop (and maybe flip) ``img`` to (3, S, S) in [-1, 1]; the random choices are seeded by
    ``entropy``."""
    size = config.image_size
    if config.crop == "center":
        img = center_crop(img, size)
    elif config.crop == "adm":
        img = adm_center_crop(img, size)
    else:
        rng = np.random.default_rng(entropy)
        box = _random_box(img.width, img.height, config.scale, rng)
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
        if config.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if config.hue:
            img = adjust_hue(img, rng.uniform(-config.hue, config.hue))
    return to_tensor([img])[0]


def _random_box(
    width: int, height: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A random-resized-crop box (left, top, right, bottom): area fraction drawn from ``scale``,
    aspect ratio log-uniform in [3/4, 4/3]; after 10 misses, the largest central box whose aspect
    ratio is in that range (the Inception / torchvision rule)."""
    log_ratios = np.log(ASPECT_RATIOS)
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratios))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
            return left, top, left + w, top + h
    ratio = min(max(width / height, ASPECT_RATIOS[0]), ASPECT_RATIOS[1])
    w, h = min(width, round(height * ratio)), min(height, round(width / ratio))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


# --- map-style sources: folders and lists ---------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    paths: list[Path]
    labels: list[int] | None

    def __len__(self) -> int:
        return len(self.paths)


class _FileDataset(Dataset):
    """Map-style dataset indexed by batch requests of ``(epoch, file index)`` keys, so that a
    batch's unreadable files and its cursor travel with it to the main process."""

    def __init__(self, files: _Files, config: DataConfig, seed: int) -> None:
        self.files, self.config, self.seed = files, config, seed

    def __getitem__(self, request: _Request) -> dict[str, Any]:
        names = [str(self.files.paths[index]) for _, index in request.items]
        return _load_batch(self._read, request, names)

    def _read(self, key: tuple[int, int]) -> _Sample:
        index = key[1]
        image = _crop(load_image(self.files.paths[index]), self.config, (self.seed, _AUGMENT, *key))
        return _Sample(image, None if self.files.labels is None else self.files.labels[index])


class _RequestSampler(Sampler[_Request]):
    """Endless batch requests of one rank from the cursor ``start`` on."""

    def __init__(
        self,
        num_files: int,
        batch_size: int,
        *,
        seed: int,
        rank: int,
        world_size: int,
        start: Cursor,
    ) -> None:
        self.num_files, self.batch_size, self.seed = num_files, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def __iter__(self) -> Iterator[_Request]:
        return _requests(_epochs(self._epoch_keys, self.start), self.batch_size)

    def _epoch_keys(self, epoch: int) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, _ORDER, epoch]).permutation(self.num_files)
        return ((epoch, int(index)) for index in order[self.rank :: self.world_size])


def _open_source(source: str) -> _Files | list[str]:
    """The files of a folder or list, or the shards of a tar pattern; errors name ``source``."""
    if any(name.endswith(SHARD_EXTENSIONS) for name in braceexpand.braceexpand(source)):
        return expand_shards(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data source {source!r} does not exist")
    if path.is_dir():
        return _scan_folder(path)
    if path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines()]
        return _listed(path, [line for line in lines if line], None)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    raise DataSourceError(
        f"data source {source!r} is not a folder, a .txt or .jsonl list, or .tar shards"
    )


def image_files(source: str | Path) -> list[Path]:
    """The image paths of a folder (recursive) or a ``.txt``/``.jsonl`` list, by the rules of a
    training source; errors name ``source``."""
    files = _open_source(str(source))
    if not isinstance(files, _Files):
        raise DataSourceError(f"{source!s} names tar shards, not a folder or list of images")
    return files.paths


def _is_image_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def _scan_folder(folder: Path) -> _Files:
    paths = sorted(
        Path(root, name)
        for root, _, names in os.walk(folder, followlinks=True)
        for name in names
        if _is_image_name(name)
    )
    if not paths:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataSourceError(f"no image files ({extensions}) under data source {str(folder)!r}")
    return _Files(paths, None)


def _read_jsonl(path: Path) -> _Files:
    names: list[str] = []
    labels: list[int | None] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry["path"], str):
                raise TypeError("the path must be a string")
            names.append(entry["path"])
            labels.append(_as_label(entry.get("label")))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise DataSourceError(
                f'{str(path)!r} line {lineno}: expected {{"path": str, "label": int?}}, '
                f"got {shown!r}"
            ) from err
    if None not in labels:
        return _listed(path, names, labels)
    if any(label is not None for label in labels):
        raise DataSourceError(
            f"{str(path)!r}: some entries have a label and some do not (label all or none)"
        )
    return _listed(path, names, None)


def _as_label(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"a label must be an integer, got {value!r}")
    return value


def _listed(list_file: Path, names: list[str], labels: list[int] | None) -> _Files:
    """The files named by a list file; relative names are relative to the list's folder."""
    if not names:
        raise DataSourceError(f"data source {str(list_file)!r} lists no images")
    return _Files([list_file.parent / name for name in names], labels)


# --- tar shards ---------------------------------------------------------------------------------


class _Slot(NamedTuple):
    name: str  # shard:member, for the log
    key: tuple[int, ...]  # (epoch, shard index, ordinal in shard): seeds the augmentation
    sample: dict[str, Any] | str  # webdataset's sample, or why the rest of the shard is unreadable


class _ShardDataset(IterableDataset):
    """Batches from tar shards: endless epochs from the cursor ``start``, or with ``start=None``
    one pass over the rank's shards in order. Worker ``w`` of ``W`` yields the batches ``i`` with
    ``i % W == w``."""

    def __init__(
        self,
        shards: list[str],
        config: DataConfig,
        batch_size: int,
        *,
        seed: int,
        rank: int,
        world_size: int,
        start: Cursor | None,
    ) -> None:
        self.shards, self.config, self.batch_size = shards, config, batch_size
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.start is None:
            mine = list(range(self.rank, len(self.shards), self.world_size))
            cursored = _with_cursors(self._slots(mine, 0), 0, 0)
        else:
            cursored = _epochs(self._epoch_slots, self.start)
        for i, request in enumerate(_requests(cursored, self.batch_size)):
            if i % workers == worker:
                yield _load_batch(self._read, request, [slot.name for slot in request.items])

    def _epoch_slots(self, epoch: int) -> Iterator[_Slot]:
        order = np.random.default_rng([self.seed, _ORDER, epoch]).permutation(len(self.shards))
        mine = [int(i) for i in order[self.rank :: self.world_size]]
        entropy = np.random.SeedSequence([self.seed, _BUFFER, epoch, self.rank])
        buffer = self.config.shuffle_buffer
        shuffle = wds.shuffle(buffer, initial=buffer, seed=int(entropy.generate_state(1)[0]))
        count = 0
        for slot in shuffle(self._slots(mine, epoch)):
            count += 1
            yield slot
        if count == 0:
            raise DataSourceError(f"shards {[self.shards[i] for i in mine]} hold no image samples")

    def _slots(self, shard_ids: list[int], epoch: int) -> Iterator[_Slot]:
        for shard_id in shard_ids:
            yield from self._shard_slots(shard_id, epoch)

    def _shard_slots(self, shard_id: int, epoch: int) -> Iterator[_Slot]:
        """The samples of one shard that have an image member, then one unreadable slot if reading
        the shard failed (truncated tar, duplicate member...)."""
        path = self.shards[shard_id]
        errors: list[Exception] = []

        def stop(err: Exception) -> bool:
            errors.append(err)
            return False

        for ordinal, sample in enumerate(wds.tarfile_samples([{"url": path}], handler=stop)):
            member = image_member(sample)
            if member is not None:
                name = f"{path}:{sample['__key__']}.{member}"
                yield _Slot(name, (epoch, shard_id, ordinal), sample)
        if errors:
            yield _Slot(path, (epoch, shard_id), f"unreadable shard: {errors[0]!r}")

    def _read(self, slot: _Slot) -> _Sample:
        if isinstance(slot.sample, str):
            raise _Unreadable(slot.sample)
        data = slot.sample[image_member(slot.sample)]
        image = _crop(load_image(io.BytesIO(data)), self.config, (self.seed, _AUGMENT, *slot.key))
        return _Sample(image, _tar_label(slot.sample))


def expand_shards(pattern: str) -> list[str]:
    """Shard paths of a path, glob or brace pattern, in pattern order (glob matches sorted)."""
    shards = []
    for name in braceexpand.braceexpand(pattern):
        matches = sorted(glob.glob(name))
        if not matches:
            raise FileNotFoundError(f"no shard {name!r} (data source {pattern!r})")
        shards.extend(os.path.abspath(match) for match in matches)
    return shards


def image_member(sample: dict[str, Any]) -> str | None:
    """The extension of a sample's image member (webdataset keys members by extension)."""
    return next((ext for ext in sorted(sample) if _is_image_name(ext)), None)


def _tar_label(sample: dict[str, Any]) -> int | None:
    """The label from a ``cls`` member (an integer as text) or a ``json`` member's "label"."""
    try:
        if "cls" in sample:
            return int(sample["cls"])
        if "json" in sample:
            return _as_label(json.loads(sample["json"]).get("label"))
    except (ValueError, TypeError, AttributeError) as err:
        raise _Unreadable(f"malformed label: {err}") from err
    return None


def _check_split(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
