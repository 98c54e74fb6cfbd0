"""Malformed token inputs: ``.npz`` files for ``semhitok decode`` and id tensors for the API.

A token id that is wrong but in range decodes to a plausible, wrong image with no error at all,
so every way ids can arrive broken is built here and fed through the real entry points: the CLI
(``semhitok decode``), ``SemHiTok.decode`` / ``semantic_features``, the id helpers, the LlamaGen
``decode_code``, the LLaVA tower and the unified MLLM's processor. The guarantee is an error
naming the problem (which id, which range, which file), never an image.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semhitok_plugin import token_files
from semhitok_plugin.cli import main
from semhitok_plugin.model import SemHiTok, load_model

from . import Probe

FAMILY = "tokens"
MODEL = "tiny"  # the preset every file is written for (random weights, seed 0)
PICKLE_MARKER = "UNPICKLED"  # created in the directory if anything ever unpickles a payload
# The deflate bomb inflates to BOMB_BYTES and is probed under a MAX_TOKEN_BYTES lowered to
# BOMB_LIMIT: the same check as at the default 4 GiB, without building gigabytes for a test.
BOMB_BYTES, BOMB_LIMIT = 2**26, 2**24


class TouchOnUnpickle:
    """Unpickling this creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@dataclass(frozen=True)
class BadTokenFile:
    path: Path
    input: str  # what it is, in words
    expected: str  # the error must contain this, and the file's path
    max_bytes: int | None = None  # token_files.MAX_TOKEN_BYTES while it is probed, if lowered


def token_arrays(model: SemHiTok, count: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid token file's arrays for ``model``, as ``semhitok encode`` writes them."""
    rng = np.random.default_rng(seed)
    return {
        "flat_ids": rng.integers(0, model.vocab_size, (count, *model.grid_size), dtype=np.int32),
        "grid": np.array(model.grid_size, dtype=np.int32),
        "vocab_size": np.int64(model.vocab_size),
        "model": np.str_(model.name_or_path),
        "files": np.array([f"photos/{chr(97 + i)}.png" for i in range(count)], dtype=np.str_),
    }


def _archive(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return buffer.getvalue()


def _lying_header(model: SemHiTok) -> bytes:
    """flat_ids whose header declares 10**11 token maps over 64 bytes of data: numpy allocates
    the declared shape before reading, so one small file asks for terabytes."""
    meta = {k: _npy(v) for k, v in token_arrays(model).items() if k != "flat_ids"}
    header = _npy_header((10**11, *model.grid_size), np.dtype("<i4"))
    return _zip({"flat_ids": header + bytes(64), **meta})


def _write_deflate_bomb(path: Path, model: SemHiTok) -> None:
    """A valid token file whose all-zero ids inflate to BOMB_BYTES from a thousandth of that."""
    meta = token_arrays(model)
    shape = (BOMB_BYTES // (4 * meta["flat_ids"][0].size), *model.grid_size)
    zeros = bytes(2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("flat_ids.npy", "w") as f:
            f.write(_npy_header(shape, np.dtype("<i4")))
            for _ in range(BOMB_BYTES // len(zeros)):
                f.write(zeros)
        for key in ("grid", "vocab_size", "model"):
            archive.writestr(f"{key}.npy", _npy(meta[key]))


def _bad_contents(model: SemHiTok, marker: Path) -> list[tuple[str, str, str, object]]:
    """(file name, input in words, expected error fragment, bytes or arrays) per bad file."""
    good = token_arrays(model)
    ids, vocab, (h, w) = good["flat_ids"], model.vocab_size, model.grid_size

    def edit(**changes) -> dict[str, np.ndarray]:
        return {k: v for k, v in {**good, **changes}.items() if v is not None}

    def with_id(value: int, dtype=np.int64, where=(1, 2, 3)) -> np.ndarray:
        out = ids.astype(dtype)
        out[where] = value
        return out

    nan_ids = ids.astype(np.float64)
    nan_ids[0, 0, 0] = np.nan
    other = {"vocab_size": np.int64(196_608), "grid": np.array([16, 16], np.int32)}
    archive = _archive(good)
    return [
        ("not_a_zip.npz", "not a zip archive (text)", "no zip signature", b"ids!"),
        (
            "truncated.npz",
            "archive cut in half",
            "is not a SemHiTok token file",
            archive[: len(archive) // 2],
        ),
        ("single_array.npz", "a bare .npy array", "holds a single .npy array", _npy(ids)),
        (
            "lying_header.npz",
            "flat_ids header declares 10**11 token maps over 64 bytes (numpy would allocate TBs)",
            "but holds 64 bytes",
            _lying_header(model),
        ),
        ("no_flat_ids.npz", "archive without flat_ids", "lacks flat_ids", edit(flat_ids=None)),
        (
            "pickled_ids.npz",
            "flat_ids as a pickled object array (code on load)",
            "allow_pickle=False",
            edit(flat_ids=np.array([TouchOnUnpickle(marker)], object)),
        ),
        (
            "pickle.npz",
            "a pickle, not an archive (code on load)",
            "no zip signature",
            pickle.dumps(TouchOnUnpickle(marker)),
        ),
        (
            "float_ids.npz",
            "float32 ids (3.4 would truncate to 3)",
            "got float32",
            edit(flat_ids=ids.astype(np.float32) + 0.4),
        ),
        ("nan_ids.npz", "float64 ids with a NaN", "got float64", edit(flat_ids=nan_ids)),
        ("bool_ids.npz", "bool ids", "got bool", edit(flat_ids=ids > 0)),
        (
            "int64_beyond_int32.npz",
            "int64 id 2**32 + 7 (an int32 cast would give 7)",
            f"contains {2**32 + 7}, outside the valid range [0, {vocab}) (first at index "
            "(1, 2, 3)) (image 'photos/b.png')",
            edit(flat_ids=with_id(2**32 + 7)),
        ),
        (
            "uint64_ids.npz",
            "uint64 id 2**63 + 7 (an int64 cast would wrap negative)",
            "cannot hold every id",
            edit(flat_ids=with_id(2**63 + 7, np.uint64)),
        ),
        (
            "int8_ids.npz",
            f"int8 ids for a {vocab}-id vocabulary (may have wrapped)",
            f"cannot hold every id in [0, {vocab})",
            edit(flat_ids=ids.astype(np.int8)),
        ),
        (
            "negative_ids.npz",
            "a negative id",
            f"contains -1, outside the valid range [0, {vocab})",
            edit(flat_ids=with_id(-1, np.int32)),
        ),
        (
            "id_at_vocab_size.npz",
            "an id equal to vocab_size",
            f"contains {vocab}, outside the valid range [0, {vocab}) (first at index (1, 2, 3)) "
            "(image 'photos/b.png')",
            edit(flat_ids=with_id(vocab, np.int32)),
        ),
        (
            "wrong_grid_ids.npz",
            f"ids (2, {h // 2}, {w * 2}) with grid metadata {h}x{w}",
            f"flat_ids has shape (2, {h // 2}, {w * 2})",
            edit(flat_ids=ids.reshape(2, h // 2, w * 2)),
        ),
        (
            "grid_metadata.npz",
            "grid metadata 16x16 for this 8x8 tokenizer",
            "grid (16, 16)",
            edit(grid=other["grid"]),
        ),
        (
            "other_preset.npz",
            "written by siglip-l16-256 (vocab 196608), ids all in range",
            "vocab 196608",
            edit(**other, model=np.str_("siglip-l16-256")),
        ),
        (
            "other_vocabulary.npz",
            f"written by a K=128 x m=4 tokenizer, same grid, ids < {vocab}",
            "vocab 512",
            edit(vocab_size=np.int64(512), model=np.str_("k128-m4")),
        ),
        (
            "other_model.npz",
            "same vocab and grid, another model's name",
            "was written by model 'another-tiny-checkpoint'",
            edit(model=np.str_("another-tiny-checkpoint")),
        ),
        (
            "files_count.npz",
            "1 file name for 2 token maps",
            "files must name each of the 2",
            edit(files=good["files"][:1]),
        ),
        (
            "vocab_array.npz",
            "vocab_size as an array of 2",
            "vocab_size must be one integer",
            edit(vocab_size=np.array([vocab, vocab])),
        ),
        (
            "grid_scalar.npz",
            "grid as a single number",
            "grid must be 2 integers",
            edit(grid=np.int32(h)),
        ),
    ]


def write_bad_token_files(directory: Path, model: SemHiTok) -> list[BadTokenFile]:
    """Write every malformed token file for ``model`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, words, expected, content in _bad_contents(model, directory / PICKLE_MARKER):
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            with path.open("wb") as f:
                np.savez(f, **content)  # np.savez pickles object arrays, as an attacker would
        files.append(BadTokenFile(path, words, expected))
    bomb = directory / "deflate_bomb.npz"
    _write_deflate_bomb(bomb, model)
    words = (
        f"deflate bomb: {bomb.stat().st_size // 1024} KiB inflating to {BOMB_BYTES >> 20} MiB "
        f"of ids (probed with the limit lowered to {BOMB_LIMIT >> 20} MiB)"
    )
    return [*files, BadTokenFile(bomb, words, "over the limit of", BOMB_LIMIT)]


@contextlib.contextmanager
def token_byte_limit(max_bytes: int | None) -> Iterator[None]:
    """``token_files.MAX_TOKEN_BYTES`` set to ``max_bytes`` (None: left as it is) inside."""
    default = token_files.MAX_TOKEN_BYTES
    token_files.MAX_TOKEN_BYTES = default if max_bytes is None else max_bytes
    try:
        yield
    finally:
        token_files.MAX_TOKEN_BYTES = default


def run_decode(path: Path, output: Path, *extra: str) -> tuple[int, str]:
    """``semhitok decode path -m tiny -o output``, in process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["decode", str(path), "-m", MODEL, "-o", str(output), *extra])
    return status, err.getvalue()


def _probe_file(case: BadTokenFile, directory: Path) -> Probe:
    output = directory / f"{case.path.stem}.decoded"
    try:
        with token_byte_limit(case.max_bytes):
            status, err = run_decode(case.path, output)
    except Exception as crash:  # a crash is an outcome to record, not to raise
        return Probe(FAMILY, case.input, "semhitok decode", f"crashed: {crash!r}", False)
    ok = (
        status == 2
        and str(case.path) in err
        and case.expected in err
        and not output.exists()  # nothing written
        and not (directory / PICKLE_MARKER).exists()  # nothing unpickled
    )
    outcome = f"exit {status}: {err.strip().replace(str(directory) + '/', '')}"
    return Probe(FAMILY, case.input, "semhitok decode", outcome, ok)


def _decoded(path: Path, output: Path) -> dict[str, np.ndarray]:
    status, err = run_decode(path, output)
    if status:
        raise RuntimeError(f"decoding {path} failed: {err}")
    return {f.name: np.asarray(Image.open(f)) for f in sorted(output.glob("*.png"))}


def _probe_accepted(directory: Path, model: SemHiTok) -> list[Probe]:
    """Odd but valid files decode exactly as their plain twin, and lose no image."""
    good = token_arrays(model)
    paths = {n: directory / f"{n}.npz" for n in ("native", "big_endian", "same_stem")}
    np.savez(paths["native"], **good)
    np.savez(paths["big_endian"], **{**good, "flat_ids": good["flat_ids"].astype(">i4")})
    same = np.array(["photos/x.png", "more/x.jpg"], dtype=np.str_)
    np.savez(paths["same_stem"], **{**good, "files": same})
    out = {n: _decoded(p, directory / f"{n}.decoded") for n, p in paths.items()}
    native, big = out["native"], out["big_endian"]
    same_big = native.keys() == big.keys() and all(np.array_equal(native[k], big[k]) for k in big)
    names = sorted(out["same_stem"])
    return [
        Probe(
            FAMILY,
            "big-endian int32 ids",
            "semhitok decode",
            f"decoded; {len(big)} images {'identical to' if same_big else 'DIFFER from'} the "
            "native-order file's",
            same_big and len(big) == len(good["flat_ids"]),
        ),
        Probe(
            FAMILY,
            "two images with the same file stem (photos/x.png, more/x.jpg)",
            "semhitok decode",
            f"{len(names)} images written: {', '.join(names)}",
            len(names) == len(same),
        ),
    ]


def api_cases(model: SemHiTok) -> list[tuple[str, str, str, Callable[[], object]]]:
    """(input in words, entry point, expected error fragment, call) for the Python API."""
    from semhitok_llamagen.vq_model import SemHiTokVQModel
    from semhitok_llava.tower import SemHiTokVisionTower
    from semhitok_plugin.ids import merge_ids, split_ids

    h, w = model.grid_size
    k, m, vocab = model.codebook_size, model.sub_codebook_size, model.vocab_size
    ids = torch.zeros(1, h, w, dtype=torch.long)
    high = ids.clone()
    high[0, 2, 5] = vocab
    vq, tower = SemHiTokVQModel(model), SemHiTokVisionTower(f"semhitok:{MODEL}", tokenizer=model)
    return [
        (
            "float ids (0.9 would truncate to 0)",
            "SemHiTok.decode",
            "must be an integer tensor",
            lambda: model.decode(ids + 0.9),
        ),
        (
            "an id equal to vocab_size",
            "SemHiTok.decode",
            f"contains {vocab}, outside the valid range [0, {vocab}) (first at index (0, 2, 5))",
            lambda: model.decode(high),
        ),
        (
            "a negative id",
            "SemHiTok.decode",
            f"contains -1, outside the valid range [0, {vocab})",
            lambda: model.decode(ids - 1),
        ),
        (
            f"ids (1, {h // 2}, {w * 2}): as many ids, another grid",
            "SemHiTok.decode",
            f"must have shape (B, {h}, {w}) or (B, {h * w})",
            lambda: model.decode(ids.reshape(1, h // 2, w * 2)),
        ),
        (
            "int8 ids",
            "SemHiTok.decode",
            f"cannot hold every id in [0, {vocab})",
            lambda: model.decode(ids.to(torch.int8)),
        ),
        (
            "a numpy array",
            "SemHiTok.decode",
            "must be a torch tensor, got ndarray",
            lambda: model.decode(ids.numpy()),
        ),
        (
            "sem_id equal to K",
            "SemHiTok.semantic_features",
            f"sem_ids contains {k}, outside the valid range [0, {k})",
            lambda: model.semantic_features(ids + k),
        ),
        (
            f"sem_ids (1, 2, {h * w // 2})",
            "SemHiTok.semantic_features",
            "sem_ids must have shape",
            lambda: model.semantic_features(ids.reshape(1, 2, -1)),
        ),
        (
            "pix_id equal to m",
            "merge_ids",
            f"pix_ids contains {m}, outside the valid range",
            lambda: merge_ids(ids, ids + m, k, m),
        ),
        (
            "float flat ids",
            "split_ids",
            "must be an integer tensor",
            lambda: split_ids(ids.double(), k, m),
        ),
        (
            "float codes (2.7 would truncate to 2)",
            "LlamaGen decode_code",
            "codes must be an integer tensor",
            lambda: vq.decode_code(ids.flatten() + 2.7),
        ),
        (
            "int64 code 2**32 + 7 (an int32 cast would give 7)",
            "LlamaGen decode_code",
            f"contains {2**32 + 7}",
            lambda: vq.decode_code(ids.flatten() + 2**32 + 7),
        ),
        (
            f"shape [1, C, {h // 2}, {w * 2}]",
            "LlamaGen decode_code",
            f"asks for a {h // 2}x{w * 2} grid",
            lambda: vq.decode_code(ids, [1, 8, h // 2, w * 2]),
        ),
        (
            "float ids",
            "LLaVA tower features_from_ids",
            "must be an integer tensor",
            lambda: tower.features_from_ids(ids.float()),
        ),
        (
            "an id equal to vocab_size",
            "LLaVA tower features_from_ids",
            f"contains {vocab}",
            lambda: tower.features_from_ids(high),
        ),
    ]


def mllm_cases(directory: Path) -> list[tuple[str, str, str, Callable[[], object]]]:
    """Image token ids of the unified MLLM outside its image range (tiny Qwen2 + tiny preset)."""
    from semhitok_qwen import load_unified

    from .tiny_qwen import save_tiny_unified

    _, processor = load_unified(save_tiny_unified(directory / "mllm"))
    n, start, end = processor.num_image_tokens, processor.image_start_id, processor.image_end_id
    offset, size = processor.image_vocab.offset, processor.image_vocab.size
    body = [offset] * n

    def sequence(bad: int) -> list[int]:
        return [start, *body[:-1], bad, end]

    return [
        (
            "a text id inside an image",
            "MLLM processor.decode",
            f"image opened at position 0 is not {n} image ids",
            lambda: processor.decode(sequence(5)),
        ),
        (
            "an id past the image range",
            "MLLM processor.decode",
            f"image opened at position 0 is not {n} image ids",
            lambda: processor.decode(sequence(offset + size)),
        ),
        (
            "float image ids",
            "MLLM processor.encode_images",
            "image ids must be an integer tensor",
            lambda: processor.encode_images([torch.zeros(n)]),
        ),
        (
            "image id equal to K*m",
            "MLLM processor.encode_images",
            f"contains {size}, outside the valid range [0, {size})",
            lambda: processor.encode_images([torch.full((n,), size)]),
        ),
    ]


def _probe_call(words: str, entry: str, expected: str, call: Callable[[], object]) -> Probe:
    try:
        call()
    except ValueError as err:  # TokenIdError, TokenFileError and the processor's errors
        return Probe(FAMILY, words, entry, f"{type(err).__name__}: {err}", expected in str(err))
    except Exception as crash:  # an unnamed failure is recorded as not ok
        return Probe(FAMILY, words, entry, f"crashed: {crash!r}", False)
    return Probe(FAMILY, words, entry, "returned a result: no error", False)


def probe(directory: Path) -> list[Probe]:
    """Feed every malformed token input through the real entry points; record what happened."""
    directory = Path(directory)
    model = load_model(MODEL)  # what ``semhitok decode -m tiny`` builds
    probes = [_probe_file(case, directory) for case in write_bad_token_files(directory, model)]
    probes += _probe_accepted(directory, model)
    cases = api_cases(model) + mllm_cases(directory)
    return probes + [_probe_call(*case) for case in cases]


__all__ = [
    "BOMB_BYTES",
    "BOMB_LIMIT",
    "MODEL",
    "PICKLE_MARKER",
    "BadTokenFile",
    "TouchOnUnpickle",
    "api_cases",
    "mllm_cases",
    "probe",
    "run_decode",
    "token_arrays",
    "token_byte_limit",
    "write_bad_token_files",
]
