"""Tokenizing a corpus once, in parallel: what ``semhitok encode`` reads, the pass that encodes
it, and the sharded token set that ``torchrun ... -m semhitok_plugin.cli encode`` writes.

*Inputs* are image files, folders (searched recursively), ``.txt``/``.jsonl`` lists and
WebDataset tar shards (a path, glob or brace pattern such as ``shards/{000000..000099}.tar``,
read without unpacking; a tar's images are named ``TARPATH/KEY``). They are cut into *chunks*, in
input order: each tar is one chunk, and the image files between tars are cut into chunks of
``--shard-size`` files.

*Split.* Chunk ``n`` becomes ``shard-{n:06d}.npz`` (:mod:`semhitok_plugin.token_files`) and is
encoded by rank ``n % world_size``. The chunks depend on the inputs and the shard size only,
never on the number of ranks: every launch writes the same shards and the same index, and a rerun
with another number of ranks resumes the set.

*Resuming.* A shard is written whole or not at all (a ``.part`` file, then a rename), so a shard
that exists is finished: a rerun checks it (readable, this tokenizer and precision, exactly the
images of its chunk) and skips it, and stops at one that does not match, naming it, rather than
overwrite it. Rank 0 writes the index last, once every rank has finished (also in place of the
index of an earlier pass, which a failed pass leaves as it was).

*Reading.* Images are decoded by a DataLoader: with ``--num-workers W`` every worker walks the
rank's items (each reads a tar's bytes) and decodes the items ``i`` with ``i % W == w``; the
DataLoader hands them back round-robin, in order, so the ids do not depend on ``W``.

*Precision.* ``auto`` runs a sharded pass under bf16 autocast on CUDA and in fp32 elsewhere, and
a single token file in fp32 (the ids ``semhitok encode`` has always written). The quantisers run
outside autocast (``semantic_codebook.full_precision``), so only the encoders' features are
bf16; bf16 ids can still differ from fp32 ids where two codes are nearly tied, so a set records
its precision and a rerun never mixes the two.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from .config import ConfigError
from .data import SHARD_EXTENSIONS, expand_shards, image_files, image_member
from .distributed import Launch, all_reduce_sum_, barrier
from .images import ImageReadError, SkippedImages, center_crop, load_image, to_tensor
from .model import SemHiTok, TokenizerOutput
from .token_files import (
    PART_SUFFIX,
    SetIndex,
    Source,
    TokenFileError,
    read_set_index,
    read_shard_names,
    shard_name,
    write_set_index,
    write_tokens,
)

DEFAULT_SHARD_SIZE = 10_000  # image files per shard: ~10 MB of 16x16 ids, minutes of work
PRECISIONS = ("auto", "fp32", "bf16")

Report = Callable[[str, str], None]  # (image name, reason) of an unreadable image


@dataclass(frozen=True)
class ImageItem:
    """One image of the inputs: a file, a tar member's bytes, or the rest of a tar that could
    not be read (``problem``)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    problem: str | None = None

    def __str__(self) -> str:  # SkippedImages names an item by its text
        return self.name

    def load(self) -> Image.Image:
        if self.problem is not None:
            raise ImageReadError(self.problem)
        return load_image(self.path if self.path is not None else _Member(self.data, self.name))


class _Member(io.BytesIO):
    """A tar member's bytes that Pillow's errors name by the member, not by a memory address:
    the reasons recorded in a set are then the same in every run."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return repr(self.name)


@dataclass(frozen=True)
class Chunk:
    """The images of one shard: consecutive image files of the inputs, or one tar."""

    files: tuple[Path, ...] = ()
    tar: str | None = None

    def items(self) -> Iterator[ImageItem]:
        if self.tar is None:
            yield from (ImageItem(str(path), path=path) for path in self.files)
            return
        errors: list[Exception] = []

        def stop(err: Exception) -> bool:
            errors.append(err)
            return False

        for sample in wds.tarfile_samples([{"url": self.tar}], handler=stop):
            member = image_member(sample)
            if member is not None:
                yield ImageItem(f"{self.tar}/{sample['__key__']}", data=sample[member])
        if errors:  # a truncated tar: what was read is kept, the rest is one failure
            yield ImageItem(self.tar, problem=f"unreadable shard: {errors[0]!r}")

    def holds(self, names: Iterable[str]) -> bool:
        """Whether ``names`` (a shard's encoded and failed images) are this chunk's images."""
        if self.tar is None:
            return Counter(names) == Counter(map(str, self.files))
        return all(name == self.tar or name.startswith(f"{self.tar}/") for name in names)

    def __str__(self) -> str:
        if self.tar is not None:
            return f"tar {self.tar}"
        return f"{len(self.files)} files from {str(self.files[0])!r}" if self.files else "no files"


def is_tar_pattern(text: str) -> bool:
    return any(name.endswith(SHARD_EXTENSIONS) for name in braceexpand.braceexpand(text))


def plan_chunks(inputs: Iterable[Path], shard_size: int | None = None) -> list[Chunk]:
    """The chunks of the command line's inputs, in order; ``shard_size=None`` keeps each run of
    files between tars whole (a single token file). Folders, lists and tar patterns are expanded
    here, so a bad one fails before any model is built; images are read only when encoded."""
    chunks: list[Chunk] = []
    files: list[Path] = []

    def cut_files() -> None:
        size = shard_size or max(len(files), 1)
        chunks.extend(Chunk(tuple(files[i : i + size])) for i in range(0, len(files), size))
        files.clear()

    for path in inputs:
        if is_tar_pattern(str(path)):
            cut_files()
            chunks += [Chunk(tar=tar) for tar in expand_shards(str(path))]
        elif path.is_dir() or path.suffix in (".txt", ".jsonl"):
            files.extend(image_files(path))  # the folder and list rules of ``--data``
        else:
            files.append(path)
    cut_files()
    return chunks


def file_count(chunks: Iterable[Chunk]) -> int | None:
    """How many images the chunks hold, known up front only when there is no tar."""
    chunks = list(chunks)
    return None if any(c.tar for c in chunks) else sum(len(c.files) for c in chunks)


def resolve_precision(precision: str, device: torch.device, sharded: bool) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if sharded and device.type == "cuda" else "fp32"
    return precision


# -- the pass ------------------------------------------------------------------------------------
class _Crops(IterableDataset):
    """``(chunk number, image name, centre crop (S, S, 3) uint8 or None, why not)`` for every
    image of the numbered chunks, in order; worker ``w`` of ``W`` decodes the items ``i`` with
    ``i % W == w`` (see the module docstring)."""

    def __init__(self, chunks: list[tuple[int, Chunk]], size: int) -> None:
        self.chunks, self.size = chunks, size

    def __iter__(self) -> Iterator[tuple[int, str, torch.Tensor | None, str | None]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        items = ((number, item) for number, chunk in self.chunks for item in chunk.items())
        for i, (number, item) in enumerate(items):
            if i % workers == worker:
                skipped = SkippedImages()
                crop = skipped.read(self._crop, item)
                yield number, item.name, crop, skipped.files[0][1] if crop is None else None

    def _crop(self, item: ImageItem) -> torch.Tensor:
        return torch.from_numpy(np.array(center_crop(item.load(), self.size)))


class EncodedBatch(NamedTuple):
    """Up to a batch of one chunk's readable images and the failures met since the last one."""

    chunk: int
    names: list[str]
    crops: list[torch.Tensor]  # (S, S, 3) uint8 centre crops, as encoded
    out: TokenizerOutput | None  # None when none of them was readable
    failed: list[tuple[str, str]]


def encode_chunks(
    model: SemHiTok,
    chunks: list[tuple[int, Chunk]],
    *,
    batch_size: int,
    num_workers: int = 0,
    precision: str = "fp32",
    report: Report | None = None,
    progress: bool = False,
) -> Iterator[EncodedBatch]:
    """Encode the numbered chunks' images in order, batch by batch; unreadable images are
    skipped, handed to ``report`` and carried in the batches. Nothing outlives its batch, so
    memory stays flat however many images there are. The bar counts read and failed images."""
    device = next(model.parameters()).device
    crops = DataLoader(
        _Crops(chunks, model.config.image_size), batch_size=None, num_workers=num_workers
    )
    total = file_count(chunk for _, chunk in chunks)
    with tqdm(total=total, unit="img", disable=not progress) as bar:
        for number, good, failed in _batches(crops, batch_size, report):
            out = None
            if good:
                x = to_tensor([crop for _, crop in good]).to(device)
                with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                    out = model.encode(x)
            yield EncodedBatch(number, [n for n, _ in good], [c for _, c in good], out, failed)
            bar.update(len(good) + len(failed))


def _batches(reads: Iterable, batch_size: int, report: Report | None) -> Iterator[tuple]:
    """``(chunk, [(name, crop)], [(name, reason)])``: up to ``batch_size`` readable images of one
    chunk and the failures met since the previous batch; a batch never spans two chunks."""
    good: list[tuple[str, torch.Tensor]] = []
    failed: list[tuple[str, str]] = []
    current = None
    for number, name, crop, reason in reads:
        if number != current and (good or failed):
            yield current, good, failed
            good, failed = [], []
        current = number
        if crop is None:
            failed.append((name, reason))
            if report is not None:
                report(name, reason)
        else:
            good.append((name, crop))
        if len(good) == batch_size:
            yield current, good, failed
            good, failed = [], []
    if good or failed:
        yield current, good, failed


# -- the sharded set -------------------------------------------------------------------------------
@dataclass
class SetResult:
    """One pass over a set. Counts cover every rank; ``index`` is rank 0's (None elsewhere)."""

    encoded: int  # images encoded by this pass
    failed: int  # unreadable images met by this pass
    kept: int  # shards finished by an earlier pass, skipped
    seconds: float  # the pass on every rank: from the start together to the last rank's end
    index: SetIndex | None


def encode_set(
    model: SemHiTok,
    chunks: list[Chunk],
    output: Path,
    *,
    launch: Launch,
    batch_size: int,
    num_workers: int = 0,
    precision: str = "fp32",
    report: Report | None = None,
    progress: bool = False,
) -> SetResult:
    """This rank's share of a sharded token set in ``output`` (see the module docstring); every
    rank of the launch calls it with the same chunks. Rank 0 writes the index at the end."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{output} is a file: a token set is written to a directory")
    output.mkdir(parents=True, exist_ok=True)
    source = Source(model.grid_size, model.vocab_size, model.name_or_path, precision)
    mine = [(n, c) for n, c in enumerate(chunks) if n % launch.world_size == launch.rank]
    todo = [(n, c) for n, c in mine if not _finished(output / shard_name(n), c, source)]
    barrier()  # every rank has its model: the pass is timed from here
    start = time.perf_counter()
    shards = _ShardWriter(output, model, precision)
    for batch in encode_chunks(
        model,
        todo,
        batch_size=batch_size,
        num_workers=num_workers,
        precision=precision,
        report=report,
        progress=progress,
    ):
        shards.add(batch)
    shards.close([n for n, _ in todo])  # and the chunks without an image (an empty tar)
    device = next(model.parameters()).device
    counts = torch.tensor([shards.encoded, shards.failed, len(mine) - len(todo)], device=device)
    all_reduce_sum_(counts)  # also waits for the last rank
    seconds = time.perf_counter() - start
    index = None
    if launch.rank == 0:
        for part in output.glob(f".shard-*{PART_SUFFIX}"):  # left by a killed pass
            part.unlink(missing_ok=True)
        index = read_set_index(write_set_index(output, [shard_name(n) for n in range(len(chunks))]))
    encoded, failed, kept = counts.tolist()
    return SetResult(encoded, failed, kept, seconds, index)


def _finished(path: Path, chunk: Chunk, source: Source) -> bool:
    """Whether the shard at ``path`` is there and was written from ``chunk`` by this tokenizer
    at this precision; a shard that is there but does not match stops the pass, naming it."""
    if not path.exists():
        return False
    keep = "an existing shard is never overwritten: write to another directory or delete it"
    try:
        shard = read_shard_names(path)
    except TokenFileError as err:
        raise TokenFileError(f"{err} ({keep})") from err
    if not shard.source.matches(source):
        raise TokenFileError(
            f"{path} was written by {shard.source}, this pass by {source} ({keep})"
        )
    if not chunk.holds([*shard.files, *(name for name, _ in shard.failed)]):
        raise TokenFileError(
            f"{path} holds other images than this pass's {chunk}: the inputs or --shard-size "
            f"changed since it was written ({keep})"
        )
    return True


class _ShardWriter:
    """Collects the batches of one chunk at a time and writes its shard when the next begins."""

    def __init__(self, output: Path, model: SemHiTok, precision: str) -> None:
        self.output, self.model, self.precision = output, model, precision
        self.encoded = self.failed = 0
        self.written: set[int] = set()
        self._reset(None)

    def _reset(self, number: int | None) -> None:
        self.number, self.ids, self.names = number, [], []
        self.failures: list[tuple[str, str]] = []

    def add(self, batch: EncodedBatch) -> None:
        if batch.chunk != self.number:
            self._flush()
            self._reset(batch.chunk)
        if batch.out is not None:
            self.ids.append(batch.out.flat_ids.cpu())
        self.names += batch.names
        self.failures += batch.failed
        self.encoded, self.failed = self.encoded + len(batch.names), self.failed + len(batch.failed)

    def close(self, numbers: list[int]) -> None:
        self._flush()
        for number in numbers:
            if number not in self.written:
                self._reset(number)
                self._flush()

    def _flush(self) -> None:
        if self.number is None:
            return
        h, w = self.model.grid_size
        ids = torch.cat(self.ids) if self.ids else torch.empty((0, h, w), dtype=torch.long)
        path = self.output / shard_name(self.number)
        write_tokens(
            path, ids, self.names, self.model, failed=self.failures, precision=self.precision
        )
        self.written.add(self.number)


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "PRECISIONS",
    "Chunk",
    "EncodedBatch",
    "ImageItem",
    "SetResult",
    "encode_chunks",
    "encode_set",
    "file_count",
    "plan_chunks",
    "resolve_precision",
]
