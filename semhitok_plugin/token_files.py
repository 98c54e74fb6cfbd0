"""Token files: what ``semhitok encode`` writes and ``semhitok decode`` reads.

A token file is an ``.npz`` archive with ``flat_ids`` (N, h, w) int32, ``grid``, ``vocab_size``,
``model`` (the name or path of the tokenizer that wrote it) and ``files`` (one image name per
token map). Reading trusts nothing in it: the archive is never unpickled, the tokenizer that
wrote it must be the one decoding (vocabulary, grid, model name), and every id is checked, so
a bad file raises :class:`TokenFileError` naming the problem instead of decoding a wrong image.
Sizes are checked before anything is inflated: an archive over :data:`MAX_TOKEN_BYTES`
uncompressed, or an array header that declares more or less data than its member holds, is
refused from the zip directory and the headers alone.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .ids import TokenIdError, check_ids
from .model import SemHiTok


class TokenFileError(ValueError):
    """A token file that is malformed or belongs to another tokenizer."""


def write_tokens(path: Path, flat_ids: torch.Tensor, names: list[str], model: SemHiTok) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        flat_ids=flat_ids.numpy().astype(np.int32),  # vocab > 65,535: never 16-bit
        grid=np.array(model.grid_size, dtype=np.int32),
        vocab_size=np.int64(model.vocab_size),
        model=np.str_(model.name_or_path),
        files=np.array(names, dtype=np.str_),
    )


TOKEN_KEYS = ("flat_ids", "grid", "vocab_size")  # required; "model" and "files" are optional
READ_KEYS = (*TOKEN_KEYS, "model", "files")
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


def _load_token_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a token archive. Only a zip reaches ``np.load``, which never unpickles
    (``allow_pickle=False``): anything else is refused by its first bytes."""
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
            return {k: data[k] for k in READ_KEYS if k in data.files}
        except ARCHIVE_ERRORS as err:  # a damaged member, or an object (pickled) array
            raise TokenFileError(f"{path}: unreadable token archive: {err}") from err


def _metadata(path: Path, arrays: dict[str, np.ndarray]) -> tuple[tuple[int, int], int, str]:
    """(grid, vocab size, model name or "") of a token file, each of the expected kind."""
    grid, vocab = arrays["grid"], arrays["vocab_size"]
    model = arrays.get("model", np.str_(""))
    if grid.shape != (2,) or grid.dtype.kind not in "iu":
        raise TokenFileError(f"{path}: grid must be 2 integers (rows, cols), got {grid!r}")
    if vocab.size != 1 or vocab.dtype.kind not in "iu":
        raise TokenFileError(f"{path}: vocab_size must be one integer, got {vocab!r}")
    if model.ndim != 0 or model.dtype.kind != "U":
        raise TokenFileError(f"{path}: model must be one string, got {model!r}")
    return (int(grid[0]), int(grid[1])), int(vocab.item()), str(model)


def _same_model(written_by: str, name: str) -> bool:
    """The same name, or two paths to the same checkpoint directory."""
    if written_by == name:
        return True
    a, b = Path(written_by).expanduser(), Path(name).expanduser()
    return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()


def _check_source(path: Path, arrays: dict, model: SemHiTok, allow_other_model: bool) -> None:
    """In-range ids of another tokenizer decode to a wrong image without any id error: only the
    file's metadata can tell, so vocabulary and grid must match, and so must the model name."""
    grid_hw, vocab, written_by = _metadata(path, arrays)
    if vocab != model.vocab_size or grid_hw != model.grid_size:
        raise TokenFileError(
            f"{path} holds ids of a tokenizer with vocab {vocab} and grid {grid_hw} (model "
            f"{written_by!r}); this model has vocab {model.vocab_size} and grid {model.grid_size}"
        )
    if written_by and not allow_other_model and not _same_model(written_by, model.name_or_path):
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


def read_tokens(
    path: Path, model: SemHiTok, *, allow_other_model: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """Flat ids (N, h, w) and file names from a token file, checked against ``model``.

    Everything is checked before any image is decoded: the archive (never unpickled), the
    tokenizer that wrote it (vocabulary, grid and model name; ``allow_other_model`` skips the
    name, and a file without ``model`` is checked by vocabulary and grid only), the dtype
    (integers wide enough for the vocabulary: never rounded or wrapped), the shape and every
    id. Each error names the file, and an out-of-range id its position and image.
    """
    arrays = _load_token_arrays(path)
    _check_source(path, arrays, model, allow_other_model)
    return _check_ids(path, arrays, model)


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
