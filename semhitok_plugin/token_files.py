"""Token files and token sets: what ``semhitok encode`` writes and ``semhitok decode`` reads.

A token file is an ``.npz`` archive with ``flat_ids`` (N, h, w) int32, ``grid``, ``vocab_size``,
``model`` (the name or path of the tokenizer that wrote it) and ``files`` (one image name per
token map). Reading trusts nothing in it: the archive is never unpickled, the tokenizer that
wrote it must be the one decoding (vocabulary, grid, model name), and every id is checked, so
a bad file raises :class:`TokenFileError` naming the problem instead of decoding a wrong image.
Sizes are checked before anything is inflated: an archive over :data:`MAX_TOKEN_BYTES`
uncompressed, or an array header that declares more or less data than its member holds, is
refused from the zip directory and the headers alone.

A token set is what a distributed ``semhitok encode`` writes (see
:mod:`semhitok_plugin.sharded_encode`): a directory of shards, each a token file that also holds
``failed`` ((F, 2) strings: the unreadable images of the shard and why) and ``precision``, and
:data:`INDEX_NAME`, a JSON file written last::

    {"format": "semhitok-token-set", "version": 1,
     "model": "...", "grid": [h, w], "vocab_size": V, "precision": "fp32" | "bf16",
     "shards": [{"file": "shard-000000.npz", "images": n, "failed": f}, ...],
     "images": [[source, shard number, position in the shard], ...],   (input order)
     "failures": [[source, reason], ...]}

:class:`TokenSet` reads either kind, one image at a time or all at once (:func:`read_tokens`),
with every check of a token file applied to each shard, and the index checked against them: a
missing shard, a shard of another tokenizer or one that does not hold the image the index names
at a position is an error naming the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
import zipfile
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from .ids import TokenIdError, check_ids
from .model import SemHiTok


class TokenFileError(ValueError):
    """A token file that is malformed or belongs to another tokenizer."""


def write_tokens(
    path: Path,
    flat_ids: torch.Tensor,
    names: list[str],
    model: SemHiTok,
    *,
    failed: Sequence[tuple[str, str]] | None = None,
    precision: str | None = None,
) -> Path:
    """Write a token file; returns its path (``.npz`` is appended when missing, as numpy does).

    The file appears whole or not at all (written beside it, then renamed), so a crash never
    leaves a torn file that a rerun would mistake for finished work. ``failed`` (the unreadable
    images, with reasons) and ``precision`` are written for the shards of a token set."""
    if not path.name.endswith(".npz"):
        path = path.with_name(path.name + ".npz")
    arrays = {
        "flat_ids": flat_ids.numpy().astype(np.int32),  # vocab > 65,535: never 16-bit
        "grid": np.array(model.grid_size, dtype=np.int32),
        "vocab_size": np.int64(model.vocab_size),
        "model": np.str_(model.name_or_path),
        "files": np.array(names, dtype=np.str_),
    }
    if failed is not None:
        arrays["failed"] = np.array(list(failed), dtype=np.str_).reshape(len(failed), 2)
    if precision is not None:
        arrays["precision"] = np.str_(precision)
    replace_atomically(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def replace_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Create or replace ``path`` with what ``write`` writes to a binary file, whole or not at
    all: the bytes go to a hidden ``.part`` file in the same folder, are synced, then renamed
    over ``path`` (a crash leaves at most a ``.part`` file, never a torn ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}")
    try:
        with part.open("xb") as f:  # open() honours the umask, as a direct write would
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


PART_SUFFIX = ".part"


TOKEN_KEYS = ("flat_ids", "grid", "vocab_size")  # required; the others are optional
READ_KEYS = (*TOKEN_KEYS, "model", "files", "failed", "precision")
ARCHIVE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
# The uncompressed bytes a token file may hold: 2**32 is 4M token maps of 16x16 int32 ids
# (ImageNet's 1.28M train images take 1.3 GB). Raise it here or with SEMHITOK_MAX_TOKEN_BYTES.
MAX_TOKEN_BYTES = int(os.environ.get("SEMHITOK_MAX_TOKEN_BYTES", 2**32))


def _check_sizes(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse what would allocate more than the file is worth, before inflating anything: a
    deflate bomb (kilobytes that inflate to gigabytes) by the zip directory's sizes, which bound
    what zipfile will inflate (it stops there and checks the CRC), and a lying ``.npy`` header
    (numpy allocates the declared shape before reading a byte) against its member's size."""
    names = set(archive.namelist())
    members = [archive.getinfo(n) for k in READ_KEYS for n in (f"{k}.npy", k) if n in names]
    total = sum(m.file_size for m in members)
    if total > MAX_TOKEN_BYTES:
        raise TokenFileError(
            f"{path} inflates to {total:,} bytes, over the limit of {MAX_TOKEN_BYTES:,} "
            "(semhitok_plugin.token_files.MAX_TOKEN_BYTES, or SEMHITOK_MAX_TOKEN_BYTES)"
        )
    for member in members:
        with archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # 3.0 is only written for non-Latin-1 fields
                raise TokenFileError(f"{path}: {member.filename} is .npy version {version}")
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, _, dtype = read_header(f)
            held = member.file_size - f.tell()
        declared = math.prod(shape) * dtype.itemsize
        if not dtype.hasobject and declared != held:  # object arrays: refused by np.load
            raise TokenFileError(
                f"{path}: {member.filename} declares a {shape} {dtype} array ({declared:,} "
                f"bytes) but holds {held:,} bytes"
            )


def _load_token_arrays(path: Path, keys: Sequence[str] = READ_KEYS) -> dict[str, np.ndarray]:
    """The arrays of a token archive (those of ``keys`` it holds). Only a zip reaches
    ``np.load``, which never unpickles (``allow_pickle=False``): anything else is refused by its
    first bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as err:
        raise TokenFileError(f"cannot read token file {path}: {err.strerror or err}") from err
    if head == b"\x93NUMPY":
        raise TokenFileError(f"{path} holds a single .npy array, not a .npz token archive")
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load's own zip test
        raise TokenFileError(
            f"{path} is not a SemHiTok token file: no zip signature (starts with {head!r})"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            _check_sizes(path, archive)
        data = np.load(path, allow_pickle=False)
    except TokenFileError:
        raise
    except ARCHIVE_ERRORS as err:
        raise TokenFileError(f"{path} is not a SemHiTok token file (.npz): {err}") from err
    with data:
        missing = [k for k in TOKEN_KEYS if k not in data.files]
        if missing:
            raise TokenFileError(f"{path} lacks {', '.join(missing)} (it holds {data.files})")
        try:
            return {k: data[k] for k in keys if k in data.files}
        except ARCHIVE_ERRORS as err:  # a damaged member, or an object (pickled) array
            raise TokenFileError(f"{path}: unreadable token archive: {err}") from err


@dataclass(frozen=True)
class Source:
    """What a token file or set says about the tokenizer that wrote it ("" where unnamed)."""

    grid: tuple[int, int]
    vocab_size: int
    model: str
    precision: str = ""

    def __str__(self) -> str:
        h, w = self.grid
        precision = f", {self.precision}" if self.precision else ""
        return f"model {self.model!r} (grid {h}x{w}, vocab {self.vocab_size}{precision})"

    def matches(self, other: Source) -> bool:
        """The same tokenizer (a checkpoint named by two paths included) at the same precision."""
        same = (self.grid, self.vocab_size, self.precision) == (
            other.grid,
            other.vocab_size,
            other.precision,
        )
        return same and same_model(self.model, other.model)


def _metadata(path: Path, arrays: dict[str, np.ndarray]) -> Source:
    """The tokenizer of a token file, each field of the expected kind."""
    grid, vocab = arrays["grid"], arrays["vocab_size"]
    if grid.shape != (2,) or grid.dtype.kind not in "iu":
        raise TokenFileError(f"{path}: grid must be 2 integers (rows, cols), got {grid!r}")
    if vocab.size != 1 or vocab.dtype.kind not in "iu":
        raise TokenFileError(f"{path}: vocab_size must be one integer, got {vocab!r}")
    texts = {}
    for key in ("model", "precision"):
        text = arrays.get(key, np.str_(""))
        if text.ndim != 0 or text.dtype.kind != "U":
            raise TokenFileError(f"{path}: {key} must be one string, got {text!r}")
        texts[key] = str(text)
    return Source((int(grid[0]), int(grid[1])), int(vocab.item()), **texts)


def same_model(written_by: str, name: str) -> bool:
    """Whether two tokenizer names are one: the same name, or two paths to the same
    checkpoint directory."""
    if written_by == name:
        return True
    a, b = Path(written_by).expanduser(), Path(name).expanduser()
    return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()


def _check_source(path: Path, source: Source, model: SemHiTok, allow_other_model: bool) -> None:
    """In-range ids of another tokenizer decode to a wrong image without any id error: only the
    file's metadata can tell, so vocabulary and grid must match, and so must the model name."""
    grid_hw, vocab, written_by = source.grid, source.vocab_size, source.model
    if vocab != model.vocab_size or grid_hw != model.grid_size:
        raise TokenFileError(
            f"{path} holds ids of a tokenizer with vocab {vocab} and grid {grid_hw} (model "
            f"{written_by!r}); this model has vocab {model.vocab_size} and grid {model.grid_size}"
        )
    if written_by and not allow_other_model and not same_model(written_by, model.name_or_path):
        raise TokenFileError(
            f"{path} was written by model {written_by!r}, not {model.name_or_path!r}: another "
            f"tokenizer's codes would give a wrong image. Decode with -m {written_by}, or pass "
            "--allow-other-model if it is the same tokenizer under another name"
        )


def _check_ids(path: Path, arrays: dict, model: SemHiTok) -> tuple[torch.Tensor, list[str]]:
    """Ids as int64 (N, h, w) and one name per token map; the error for a bad id names its
    image, since "index (3, 7, 2)" alone means little to someone holding a folder of photos."""
    ids, files = arrays["flat_ids"], arrays.get("files")
    if ids.dtype.kind not in "iu":
        raise TokenFileError(
            f"{path}: flat_ids must be integer ids, got {ids.dtype} (ids are never rounded)"
        )
    if ids.ndim != 3 or ids.shape[1:] != model.grid_size:
        raise TokenFileError(
            f"{path}: flat_ids has shape {ids.shape}, expected (N, {model.grid_size[0]}, "
            f"{model.grid_size[1]}) for the file's grid"
        )
    if files is not None and (files.shape != (len(ids),) or files.dtype.kind != "U"):
        raise TokenFileError(
            f"{path}: files must name each of the {len(ids)} token maps, got {files.shape} "
            f"{files.dtype}"
        )
    names = [str(f) for f in files] if files is not None else [f"{i:05d}" for i in range(len(ids))]
    flat = torch.from_numpy(ids.astype(ids.dtype.newbyteorder("="), copy=False))  # native order
    try:
        check_ids(flat, model.vocab_size, "flat_ids")
    except TokenIdError as err:
        where = f" (image {names[err.index[0]]!r})" if err.index else ""
        raise TokenFileError(f"{path}: {err}{where}") from err
    return flat.long(), names


def _failed(path: Path, arrays: dict) -> list[tuple[str, str]]:
    """The ``(image, reason)`` pairs of a shard's unreadable images."""
    failed = arrays.get("failed", np.empty((0, 2), dtype=np.str_))
    if failed.ndim != 2 or failed.shape[1] != 2 or failed.dtype.kind != "U":
        raise TokenFileError(f"{path}: failed must be (F, 2) strings, got {failed.shape}")
    return [(str(name), str(reason)) for name, reason in failed]


@dataclass(frozen=True)
class Shard:
    """The names a shard holds and those it could not read, without its ids (what an index is
    built from, and what a rerun compares with the images it would encode)."""

    path: Path
    source: Source
    files: list[str]
    failed: list[tuple[str, str]]


def read_shard_names(path: Path) -> Shard:
    """A shard's tokenizer, image names and failures; the ids are not inflated."""
    arrays = _load_token_arrays(
        path, ("grid", "vocab_size", "model", "files", "failed", "precision")
    )
    files = arrays.get("files")
    if files is None or files.ndim != 1 or files.dtype.kind != "U":
        raise TokenFileError(f"{path}: a shard must name its images (files), got {files!r}")
    return Shard(path, _metadata(path, arrays), [str(f) for f in files], _failed(path, arrays))


# -- token sets ------------------------------------------------------------------------------------
INDEX_NAME = "index.json"
SET_FORMAT = "semhitok-token-set"
SET_VERSION = 1


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.npz"


def is_token_set(path: Path) -> bool:
    """A set is named by its directory or its index; anything else is read as one token file."""
    return path.is_dir() or path.suffix == ".json"


def write_set_index(directory: Path, shard_files: Sequence[str]) -> Path:
    """Write ``directory/index.json`` from the shards (in order), after checking that they
    agree on the tokenizer and precision; the images are listed in shard order. Every field
    comes from the shards, so any number of ranks writes the same index."""
    shards = [read_shard_names(directory / name) for name in shard_files]
    if not shards:
        raise TokenFileError(f"{directory}: a token set needs at least one shard")
    first = shards[0]
    for shard in shards[1:]:
        if not shard.source.matches(first.source):
            raise TokenFileError(
                f"{shard.path} was written by {shard.source} but {first.path} by "
                f"{first.source}: one token set holds one tokenizer's ids"
            )
    fields = {
        "format": SET_FORMAT,
        "version": SET_VERSION,
        "model": first.source.model,
        "grid": list(first.source.grid),
        "vocab_size": first.source.vocab_size,
        "precision": first.source.precision,
        "shards": [
            {"file": s.path.name, "images": len(s.files), "failed": len(s.failed)} for s in shards
        ],
        "images": [[f, n, p] for n, s in enumerate(shards) for p, f in enumerate(s.files)],
        "failures": [list(pair) for s in shards for pair in s.failed],
    }
    path = directory / INDEX_NAME
    replace_atomically(path, lambda f: f.write(_dump_index(fields).encode()))
    return path


def _dump_index(fields: dict) -> str:
    """JSON with one image (or shard, or failure) per line: greppable, and diffable."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, list) and value and isinstance(value[0], list | dict):
            body = ",\n".join(f"    {json.dumps(v, ensure_ascii=False)}" for v in value)
            value_text = f"[\n{body}\n  ]"
        else:
            value_text = json.dumps(value, ensure_ascii=False)
        parts.append(f"  {json.dumps(key)}: {value_text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


@dataclass(frozen=True)
class SetIndex:
    """A checked token-set index: each shard's file and image count, each image's
    ``(source, shard, position)`` in input order, and the failures."""

    path: Path
    source: Source
    shards: list[tuple[str, int]]
    images: list[tuple[str, int, int]]
    failures: list[tuple[str, str]]


def read_set_index(path: Path) -> SetIndex:
    """Parse and check an index (or the index of a directory); errors name the file and field."""
    path = path / INDEX_NAME if path.is_dir() else path
    try:
        if path.stat().st_size > MAX_TOKEN_BYTES:
            raise TokenFileError(f"{path} is over the limit of {MAX_TOKEN_BYTES:,} bytes")
        fields = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        where = "its directory holds no index" if path.name == INDEX_NAME else "no such file"
        raise TokenFileError(
            f"{path}: not a finished token set ({where}; rerun the encode to finish it)"
        ) from err
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError included
        raise TokenFileError(f"{path} is not a token-set index (JSON): {err}") from err
    if not isinstance(fields, dict) or fields.get("format") != SET_FORMAT:
        raise TokenFileError(f'{path} is not a token-set index (no "format": {SET_FORMAT!r})')
    if fields.get("version") != SET_VERSION:
        raise TokenFileError(
            f"{path}: token-set version {fields.get('version')!r}, this reader knows {SET_VERSION}"
        )
    try:
        return _parse_index(path, fields)
    except (KeyError, TypeError, ValueError) as err:
        raise TokenFileError(f"{path}: malformed token-set index: {err!s}") from None


def _parse_index(path: Path, fields: dict) -> SetIndex:
    def typed(value, kind, what: str):
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{what} must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    grid = typed(fields["grid"], list, "grid")
    if len(grid) != 2:
        raise ValueError(f"grid must be [rows, cols], got {grid!r}")
    source = Source(
        (typed(grid[0], int, "grid"), typed(grid[1], int, "grid")),
        typed(fields["vocab_size"], int, "vocab_size"),
        typed(fields["model"], str, "model"),
        typed(fields["precision"], str, "precision"),
    )
    shards = []
    for entry in typed(fields["shards"], list, "shards"):
        name, images = typed(entry["file"], str, "a shard's file"), entry["images"]
        if name != Path(name).name or name in ("", ".", ".."):
            raise ValueError(f"a shard's file must be a name in the set's folder, got {name!r}")
        if typed(images, int, "a shard's images") < 0:
            raise ValueError(f"{name}: images must be >= 0, got {images}")
        shards.append((name, images))
    images = []
    for row in typed(fields["images"], list, "images"):
        if not isinstance(row, list) or len(row) != 3:
            raise ValueError(f"each image is [source, shard, position], got {row!r}")
        src, shard, pos = typed(row[0], str, "source"), typed(row[1], int, "shard"), row[2]
        if not 0 <= shard < len(shards) or not 0 <= typed(pos, int, "position") < shards[shard][1]:
            raise ValueError(f"image {src!r} is at shard {shard} position {pos}, which is not held")
        images.append((src, shard, pos))
    if len({(s, p) for _, s, p in images}) != len(images) or len(images) != sum(
        n for _, n in shards
    ):
        raise ValueError("the images do not name each position of each shard exactly once")
    failures = [
        (typed(src, str, "a failure's source"), typed(why, str, "a failure's reason"))
        for src, why in typed(fields["failures"], list, "failures")
    ]
    return SetIndex(path, source, shards, images, failures)


# Shards kept in memory by a TokenSet read one image at a time (a DataLoader worker each).
CACHE_BYTES = int(os.environ.get("SEMHITOK_TOKEN_CACHE_BYTES", 2**30))


class TokenSet:
    """The ids of a token file or a token set, checked against ``model``, by position in input
    order (``tokens[i]``: (h, w) int64) or all at once (:meth:`all`).

    A set's shards are loaded on first use, checked like token files (and against the index:
    the image it names at each position), and kept up to :data:`CACHE_BYTES` of ids, least
    recently used dropped first. ``sources`` name the images; ``failures`` maps the images that
    could not be read when the set was written to why (empty for a single token file).
    """

    def __init__(self, path: Path, model: SemHiTok, *, allow_other_model: bool = False) -> None:
        self.path, self.model, self.allow_other_model = Path(path), model, allow_other_model
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        if is_token_set(self.path):
            self.index: SetIndex | None = read_set_index(self.path)
            _check_source(self.index.path, self.index.source, model, allow_other_model)
            self.sources = [src for src, _, _ in self.index.images]
            where = np.array([(s, p) for _, s, p in self.index.images], dtype=np.int64)
            self.failures = dict(self.index.failures)
        else:
            arrays = _load_token_arrays(self.path)
            _check_source(self.path, _metadata(self.path, arrays), model, allow_other_model)
            ids, self.sources = _check_ids(self.path, arrays, model)
            self.index, self._cache[0] = None, ids
            where = np.stack([np.zeros(len(ids), np.int64), np.arange(len(ids))], axis=1)
            self.failures = {}
        self._shard_of, self._pos_of = where.reshape(-1, 2).T
        # the images of shard n are self._order[self._starts[n]:self._starts[n + 1]]
        self._order = np.argsort(self._shard_of, kind="stable")
        shards = len(self.index.shards) if self.index else 1
        self._starts = np.searchsorted(self._shard_of[self._order], np.arange(shards + 1))
        self._positions: dict[str, int] | None = None

    def _rows(self, number: int) -> np.ndarray:
        """The positions in input order of shard ``number``'s images."""
        return self._order[self._starts[number] : self._starts[number + 1]]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._shard(int(self._shard_of[i]))[int(self._pos_of[i])]

    def position(self, source: str) -> int:
        """The position of the first image named ``source``; KeyError when the set lacks it."""
        if self._positions is None:
            self._positions = {}
            for i, name in enumerate(self.sources):
                self._positions.setdefault(name, i)
        return self._positions[source]

    def all(self) -> torch.Tensor:
        """Every image's ids (N, h, w) int64, in input order; each shard is read once."""
        if self.index is None:
            return self._cache[0]
        out = torch.empty((len(self), *self.model.grid_size), dtype=torch.long)
        for number in range(len(self.index.shards)):
            rows = torch.from_numpy(self._rows(number))
            out[rows] = self._load(number)[torch.from_numpy(self._pos_of)[rows]]
        return out

    def _shard(self, number: int) -> torch.Tensor:
        if number in self._cache:
            self._cache.move_to_end(number)
            return self._cache[number]
        ids = self._load(number)
        self._cache[number] = ids
        while len(self._cache) > 1 and sum(t.nbytes for t in self._cache.values()) > CACHE_BYTES:
            self._cache.popitem(last=False)
        return ids

    def _load(self, number: int) -> torch.Tensor:
        """Shard ``number``'s ids, after every check of a token file and of the index."""
        index = self.index
        name, count = index.shards[number]
        path = index.path.parent / name
        if not path.is_file():
            raise TokenFileError(f"{path}: shard {number} of the token set {index.path} is missing")
        arrays = _load_token_arrays(path)
        if not _metadata(path, arrays).matches(index.source):
            raise TokenFileError(
                f"{path} was written by {_metadata(path, arrays)}, but its index {index.path} "
                f"names {index.source}"
            )
        ids, names = _check_ids(path, arrays, self.model)
        if len(ids) != count:
            raise TokenFileError(f"{path} holds {len(ids)} images, its index says {count}")
        for i in self._rows(number).tolist():
            pos = int(self._pos_of[i])
            if names[pos] != self.sources[i]:
                raise TokenFileError(
                    f"{path} holds {names[pos]!r} at position {pos}, where {index.path} names "
                    f"{self.sources[i]!r}"
                )
        return ids


def read_tokens(
    path: Path, model: SemHiTok, *, allow_other_model: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """Flat ids (N, h, w) and image names from a token file or a token set (its directory or
    its index), checked against ``model``; a set gives the same result whatever number of ranks
    wrote it, in the order of the encoder's input list.

    Everything is checked before any image is decoded: the archive (never unpickled), the
    tokenizer that wrote it (vocabulary, grid and model name; ``allow_other_model`` skips the
    name, and a file without ``model`` is checked by vocabulary and grid only), the dtype
    (integers wide enough for the vocabulary: never rounded or wrapped), the shape and every
    id, in every shard of a set; and a set's index against its shards. Each error names the
    file, and an out-of-range id its position and image.
    """
    tokens = TokenSet(path, model, allow_other_model=allow_other_model)
    return tokens.all(), tokens.sources


def output_names(files: list[str], reserved: tuple[str, ...] = ()) -> list[str]:
    """One distinct PNG name per token map: the stem of its image (untrusted text, so path
    separators and control characters become "_"), numbered where two stems, or a stem and a
    ``reserved`` name, would collide."""
    stems = [
        re.sub(r"[\x00-\x1f/\\]", "_", Path(name).stem) or f"{i:05d}"
        for i, name in enumerate(files)
    ]
    counts = Counter(stems) + Counter(reserved)
    return [f"{s}.png" if counts[s] == 1 else f"{s}-{i:05d}.png" for i, s in enumerate(stems)]
