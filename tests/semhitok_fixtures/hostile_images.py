"""Hostile and odd image files, and what the loaders and the CLI do with them.

:func:`write_hostile_images` writes a small corpus (under 100 KB, well under a second): "bad" files
that must be refused (broken, truncated, not an image, decompression bombs) and "odd" files that
are valid and must come out as a viewer shows them (EXIF-rotated, CMYK, 16-bit, transparent,
animated, 1x1, 1x4000, WebP, TIFF). Each odd file is drawn from known colours, so its decoded
pixels can be checked. :func:`probe` feeds the corpus through the training loader
(:class:`~semhitok_plugin.data.ImageStream`), the evaluation loader
(:func:`~semhitok_plugin.data.eval_batches`) and ``semhitok encode``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from semhitok_plugin.cli import main as cli_main
from semhitok_plugin.data import DataConfig, ImageStream, eval_batches
from semhitok_plugin.images import BACKGROUND, load_image

from . import Probe

RGB = tuple[int, int, int]
RED, GREEN, BLUE = (200, 30, 30), (30, 160, 60), (40, 60, 210)
WIDTH, HEIGHT = 96, 64  # the displayed size of the striped images
CROP = 32  # the loaders' image_size in the probe
BOMB_SIDE = 10_000  # the complete bomb: 10000 x 10000 1-bit pixels in 12 KB


@dataclass(frozen=True)
class HostileImage:
    """One file of the corpus. ``kind`` is "bad" (must be refused) or "odd" (valid; must read as
    displayed: ``size`` and the ``colours`` at fractional (x, y) positions, within ``tolerance``
    per channel for lossy formats)."""

    name: str
    path: Path
    kind: str
    description: str
    size: tuple[int, int] | None = None
    colours: tuple[tuple[float, float, RGB], ...] = ()
    tolerance: int = 0

    @property
    def centre(self) -> RGB:
        """The expected colour at the centre, which every centre crop keeps."""
        return next(c for x, y, c in self.colours if (x, y) == (0.5, 0.5))

    def mismatches(self, img: Image.Image) -> list[str]:
        """How the decoded ``img`` differs from what a viewer shows (empty: it does not)."""
        if img.mode != "RGB" or img.size != self.size:
            return [f"got a {img.mode} image of {img.size}, expected RGB of {self.size}"]
        errors = []
        for x, y, colour in self.colours:
            at = (min(int(x * img.width), img.width - 1), min(int(y * img.height), img.height - 1))
            got = img.getpixel(at)
            if max(abs(g - c) for g, c in zip(got, colour, strict=True)) > self.tolerance:
                errors.append(f"pixel {at} is {got}, expected {colour}")
        return errors


# --- odd files: valid, drawn from known colours -------------------------------------------------


def _bands(colours: tuple, size: tuple[int, int] = (WIDTH, HEIGHT), axis: int = 1) -> np.ndarray:
    """An (H, W, ...) array in three equal bands of ``colours``: left to right (axis 1) or top to
    bottom (axis 0)."""
    width, height = size
    length = (height, width)[axis]
    index = np.arange(length) * 3 // length
    band = np.asarray(colours)[index]
    shape = (height, width, *band.shape[1:])
    return np.broadcast_to(band[:, None] if axis == 0 else band[None], shape).copy()


def _stripes() -> Image.Image:
    return Image.fromarray(_bands((RED, GREEN, BLUE)).astype(np.uint8))


def _over(colour: RGB, alpha: int) -> RGB:
    """``colour`` with ``alpha`` composited on the documented background."""
    return tuple(
        round((c * alpha + b * (255 - alpha)) / 255)
        for c, b in zip(colour, BACKGROUND, strict=True)
    )


def _grey(level: int) -> RGB:
    return (level, level, level)


def _three(left: RGB, middle: RGB, right: RGB) -> tuple:
    return ((1 / 6, 0.5, left), (0.5, 0.5, middle), (5 / 6, 0.5, right))


def _exif_rotated(path: Path) -> None:
    """Stored a quarter turn anticlockwise, with EXIF orientation 6 ("rotate 90 CW to show")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _stripes().transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())


def _animated(path: Path) -> None:
    second = Image.new("RGB", (WIDTH, HEIGHT), (220, 0, 220))
    _stripes().save(path, save_all=True, append_images=[second], duration=100, loop=0)


def _palette_transparent(path: Path) -> None:
    img = Image.frombytes("P", (WIDTH, HEIGHT), _bands((0, 1, 2)).astype(np.uint8).tobytes())
    img.putpalette([*RED, *GREEN, *BLUE])
    img.save(path, transparency=0)  # index 0 (the red band) is transparent


class _Odd(NamedTuple):
    name: str
    description: str
    write: Callable[[Path], None]
    colours: tuple[tuple[float, float, RGB], ...]
    tolerance: int = 0
    size: tuple[int, int] = (WIDTH, HEIGHT)


def _save_array(array: np.ndarray, **options) -> Callable[[Path], None]:
    return lambda path: Image.fromarray(array.astype(np.uint8)).save(path, **options)


STRIPES = _three(RED, GREEN, BLUE)
HALF_BLACK = _over((0, 0, 0), 128)
ODD = [
    _Odd(
        "cmyk.jpg",
        "CMYK JPEG (Adobe inverted, as Photoshop and libjpeg write)",
        lambda p: _stripes().convert("CMYK").save(p, quality=95),
        STRIPES,
        12,
    ),
    _Odd(
        "grey16.png",
        "16-bit greyscale PNG",
        lambda p: Image.fromarray(_bands((32, 128, 224)).astype(np.uint16) * 257).save(p),
        _three(_grey(32), _grey(128), _grey(224)),
    ),
    _Odd(
        "grey16-trns.png",
        "16-bit greyscale PNG with a transparent grey (tRNS)",
        lambda p: Image.fromarray(_bands((32, 128, 224)).astype(np.uint16) * 257).save(
            p, transparency=32 * 257
        ),
        _three(BACKGROUND, _grey(128), _grey(224)),
    ),
    _Odd(
        "palette-transparent.png",
        "palette PNG with a transparent index",
        _palette_transparent,
        _three(BACKGROUND, GREEN, BLUE),
    ),
    _Odd(
        "rgba.png",
        "RGBA PNG (clear, opaque, half-transparent bands)",
        _save_array(_bands(((*RED, 0), (*GREEN, 255), (0, 0, 0, 128)))),
        _three(BACKGROUND, GREEN, HALF_BLACK),
        1,
    ),
    _Odd(
        "la.png",
        "greyscale + alpha (LA) PNG",
        _save_array(_bands(((0, 0), (90, 255), (0, 128)))),
        _three(BACKGROUND, _grey(90), HALF_BLACK),
        1,
    ),
    _Odd(
        "grey-trns.png",
        "greyscale PNG with a transparent grey (tRNS)",
        _save_array(_bands((10, 90, 200)), transparency=10),
        _three(BACKGROUND, _grey(90), _grey(200)),
    ),
    _Odd("animated.gif", "animated GIF (2 frames)", _animated, STRIPES, 2),
    _Odd("exif-rotated.jpg", "JPEG with EXIF orientation 6", _exif_rotated, STRIPES, 12),
    _Odd(
        "one-pixel.png",
        "1x1 PNG",
        lambda p: Image.new("RGB", (1, 1), GREEN).save(p),
        ((0.5, 0.5, GREEN),),
        size=(1, 1),
    ),
    _Odd(
        "tall-1x4000.png",
        "1x4000 PNG (extreme aspect ratio)",
        _save_array(_bands((RED, GREEN, BLUE), (1, 4000), axis=0)),
        ((0.5, 1 / 6, RED), (0.5, 0.5, GREEN), (0.5, 5 / 6, BLUE)),
        size=(1, 4000),
    ),
    _Odd("stripes.webp", "lossless WebP", lambda p: _stripes().save(p, lossless=True), STRIPES),
    _Odd(
        "stripes.tif",
        "TIFF (deflate)",
        lambda p: _stripes().save(p, compression="tiff_deflate"),
        STRIPES,
    ),
]


# --- bad files: must be refused -----------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    """A noise image (so that it has real data to cut) as a ``fmt`` file."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _first_half(fmt: str) -> bytes:
    data = _encoded(fmt)
    return data[: len(data) // 2]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, depth: int, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A greyscale PNG from raw chunks (IHDR and IEND added)."""
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    body = [(b"IHDR", header), *chunks, (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(kind, data) for kind, data in body)


def _zero_rows(width: int, rows: int) -> bytes:
    """``rows`` compressed 1-bit rows of zeros (about 1000:1), built a row at a time."""
    compressor, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)
    return b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()


def _png_bomb(side: int, rows: int) -> bytes:
    return _png(side, side, 1, [(b"IDAT", _zero_rows(side, rows))])


def _gif_bomb() -> bytes:
    """A GIF whose screen and only frame declare 65535 x 65535 pixels, with 1 pixel of data."""
    size = struct.pack("<HH", 65535, 65535)
    return b"GIF89a" + size + b"\0\0\0" + b",\0\0\0\0" + size + b"\0\x02\x02D\x01\0;"


def _broken_chunk_png() -> bytes:
    """Image data split over two IDAT chunks, the second with a garbled type (Pillow raises
    SyntaxError while decoding, after the header opened fine)."""
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    data = zlib.compress(b"".join(b"\0" + row.tobytes() for row in pixels))
    half = len(data) // 2
    return _png(WIDTH, HEIGHT, 8, [(b"IDAT", data[:half]), (b"ID\0T", data[half:])])


def _float_strip_offsets_tiff() -> bytes:
    """A TIFF whose StripOffsets tag is typed FLOAT (Pillow raises TypeError while decoding)."""
    data = bytearray(_encoded("TIFF"))
    ifd = struct.unpack("<I", data[4:8])[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", data[ifd : ifd + 2])[0], 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 273:  # StripOffsets
            data[entry + 2 : entry + 4] = struct.pack("<H", 11)  # FLOAT
    return bytes(data)


BAD: list[tuple[str, str, Callable[[], bytes]]] = [
    ("empty.jpg", "zero-byte file", lambda: b""),
    ("notes.jpg", "text file renamed .jpg", lambda: b"shopping list: milk, eggs\n"),
    ("truncated.jpg", "JPEG cut in half", lambda: _first_half("JPEG")),
    ("truncated.png", "PNG cut in half", lambda: _first_half("PNG")),
    ("broken-chunk.png", "PNG with a garbled chunk type", _broken_chunk_png),
    ("bad-tag.tif", "TIFF with a FLOAT StripOffsets tag", _float_strip_offsets_tiff),
    (
        "postscript.jpg",
        "EPS (PostScript) renamed .jpg",
        lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
    ),
    (
        "bomb-10000x10000.png",
        "complete 10000x10000 PNG in 12 KB (Pillow only warns)",
        lambda: _png_bomb(BOMB_SIDE, BOMB_SIDE),
    ),
    (
        "bomb-100000x100000.png",
        "PNG declaring 100000x100000 pixels",
        lambda: _png_bomb(100_000, 8),
    ),
    ("bomb-65535x65535.gif", "GIF declaring 65535x65535 pixels", _gif_bomb),
]


def write_hostile_images(directory: Path) -> list[HostileImage]:
    """Write the corpus into ``directory`` (created if needed): the bad files, then the odd."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus = []
    for name, description, make in BAD:
        (directory / name).write_bytes(make())
        corpus.append(HostileImage(name, directory / name, "bad", description))
    for odd in ODD:
        odd.write(directory / odd.name)
        corpus.append(
            HostileImage(
                odd.name,
                directory / odd.name,
                "odd",
                odd.description,
                odd.size,
                odd.colours,
                odd.tolerance,
            )
        )
    return corpus


# --- probing the entry points -------------------------------------------------------------------


class _SkipLog(logging.Handler):
    """Keeps {file name: reason} of data._deliver's ("skipping unreadable %s (%s)", name, why)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.skipped: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("skipping unreadable"):
            name, reason = record.args
            self.skipped[name] = reason


@contextlib.contextmanager
def skipped_files() -> Iterator[dict[str, str]]:
    """Collect what the loaders log as skipped: {file name: reason}."""
    handler, logger = _SkipLog(), logging.getLogger("semhitok_plugin.data")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield handler.skipped
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass
class LoaderRun:
    """What one loader did with the whole corpus."""

    images: torch.Tensor  # the kept images, in the order the loader gave them
    skipped: int  # the loader's own count (ImageStream.skipped_total, or the batches' "skipped")
    logged: dict[str, str]  # {path: reason} of the files it named as skipped
    crash: str | None = None  # the exception that stopped it, if one did


def _raised(err: Exception) -> str:
    return f"raised {type(err).__name__}: {err}"


def run_training_loader(source: str, files: int) -> LoaderRun:
    """The first batch of an ImageStream whose batch is one epoch (random crops, as in training)."""
    stream = ImageStream(DataConfig(source, image_size=CROP), batch_size=files)
    with skipped_files() as logged:
        try:
            batch = next(iter(stream))
        except Exception as err:  # the probe reports a crash, it does not stop at one
            return LoaderRun(torch.empty(0), stream.skipped_total, logged, _raised(err))
    return LoaderRun(batch["images"], stream.skipped_total, logged)


def run_evaluation_loader(source: str) -> LoaderRun:
    """One evaluation pass (centre crops)."""
    images, skipped, crash = [torch.empty(0, 3, CROP, CROP)], 0, None
    with skipped_files() as logged:
        try:
            for batch in eval_batches(DataConfig(source, image_size=CROP), batch_size=8):
                images.append(batch["images"])
                skipped += batch["skipped"]
        except Exception as err:  # reported, as above
            crash = _raised(err)
    return LoaderRun(torch.cat(images), skipped, logged, crash)


def run_encode(*inputs: Path, output: Path) -> tuple[int | None, str]:
    """``semhitok encode`` (tiny preset, CPU) in this process: the exit status (None if it raised)
    and stderr."""
    err = io.StringIO()
    args = ["encode", *map(str, inputs), "-m", "tiny", "--device", "cpu", "-o", str(output)]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return cli_main(args), err.getvalue()
    except Exception as crash:  # reported, as above
        return None, f"{err.getvalue()}{_raised(crash)}"


def centre_colour(image: torch.Tensor) -> RGB:
    """The mean colour of the central 2 x 2 pixels of a (3, S, S) image in [-1, 1]."""
    middle = image.shape[-1] // 2
    block = (image[:, middle - 1 : middle + 1, middle - 1 : middle + 1] + 1) * 127.5
    return tuple(round(v) for v in block.mean(dim=(1, 2)).tolist())


def _near(a: RGB, b: RGB, tolerance: int) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


def probe(directory: Path) -> list[Probe]:
    """One row per file (both loaders and ``semhitok encode`` of that file alone), then one row
    per entry point for the whole corpus at once. A crash anywhere becomes a row's outcome (not
    ok), so the table shows it instead of stopping."""
    corpus = write_hostile_images(directory / "corpus")
    listing = directory / "corpus.txt"
    listing.write_text("".join(f"corpus/{entry.name}\n" for entry in corpus))
    train = run_training_loader(str(listing), len(corpus))
    evaluation = run_evaluation_loader(str(listing))
    kept = [entry for entry in corpus if str(entry.path) not in evaluation.logged]
    # a miscount is reported in the corpus rows; here it only leaves some centres unchecked
    centres = dict(zip((e.name for e in kept), map(centre_colour, evaluation.images), strict=False))
    rows = []
    for entry in corpus:
        status, err = run_encode(entry.path, output=directory / "one" / f"{entry.name}.npz")
        written = (directory / "one" / f"{entry.name}.npz").exists()
        if entry.kind == "bad":
            rows.append(_bad_row(entry, train, evaluation, status, err, written))
        else:
            rows.append(_odd_row(entry, train, evaluation, centres.get(entry.name), status))
    return rows + _corpus_rows(directory, corpus, train, evaluation)


LOADERS_AND_CLI = "training loader, evaluation loader, semhitok encode"


def _bad_row(
    entry: HostileImage,
    train: LoaderRun,
    evaluation: LoaderRun,
    status: int | None,
    err: str,
    written: bool,
) -> Probe:
    path = str(entry.path)
    problems = [
        f"{name} did not skip it" + (f" ({run.crash})" if run.crash else "")
        for name, run in (("training loader", train), ("evaluation loader", evaluation))
        if path not in run.logged
    ]
    if status != 1 or path not in err or written:
        problems.append(f"encode exit {status}, named: {path in err}, tokens written: {written}")
        problems += [line for line in err.splitlines() if line.startswith("raised")]
    reason = evaluation.logged.get(path) or train.logged.get(path) or "?"
    done = "skipped and counted by both loaders, encode exits 1 naming the file, writes no tokens"
    outcome = f"refused ({reason}); {'; '.join(problems) or done}"
    outcome = outcome.replace(f"{entry.path.parent}/", "")  # file names, not temporary paths
    return Probe("image", entry.description, LOADERS_AND_CLI, outcome, not problems)


def _odd_row(
    entry: HostileImage,
    train: LoaderRun,
    evaluation: LoaderRun,
    centre: RGB | None,
    status: int | None,
) -> Probe:
    try:
        problems = entry.mismatches(load_image(entry.path))
    except Exception as err:  # reported, as above
        problems = [f"load_image {_raised(err)}"]
    for name, run in (("training loader", train), ("evaluation loader", evaluation)):
        if str(entry.path) in run.logged:
            problems.append(f"{name} skipped it: {run.logged[str(entry.path)]}")
    if centre is not None and not _near(centre, entry.centre, entry.tolerance + 2):
        problems.append(f"evaluation crop centre is {centre}, expected {entry.centre}")
    if status != 0:
        problems.append(f"encode exit {status}")
    checked = f"{len(entry.colours)} colour(s) and size {entry.size[0]}x{entry.size[1]}"
    outcome = "; ".join(problems) or (
        f"read as displayed ({checked} checked); kept by both loaders, centre crop colour right; "
        "encode exits 0"
    )
    return Probe("image", entry.description, LOADERS_AND_CLI, outcome, not problems)


def _corpus_rows(
    directory: Path, corpus: list[HostileImage], train: LoaderRun, evaluation: LoaderRun
) -> list[Probe]:
    bad = {str(e.path) for e in corpus if e.kind == "bad"}
    odd = [e.path for e in corpus if e.kind == "odd"]
    what = f"all {len(corpus)} files at once ({len(bad)} bad, {len(odd)} odd)"
    rows = []
    for name, run in (("training loader (one epoch)", train), ("evaluation loader", evaluation)):
        ok = len(run.images) == len(odd) and run.skipped == len(bad) and set(run.logged) == bad
        ok = ok and run.crash is None
        outcome = (
            f"{len(run.images)} images, skipped count {run.skipped}, "
            f"{len(run.logged)} files logged by name" + (f"; {run.crash}" if run.crash else "")
        )
        rows.append(Probe("image", what, name, outcome, ok))
    output = directory / "all.npz"
    status, err = run_encode(*(e.path for e in corpus), output=output)
    files = []
    if output.exists():
        with np.load(output) as tokens:
            files = [str(f) for f in tokens["files"]]
    named = sum(path in err for path in bad)
    ok = status == 1 and files == [str(p) for p in odd] and named == len(bad)
    outcome = f"exit {status}; tokens for {len(files)} images; {named} failures named"
    rows.append(Probe("image", what, "semhitok encode", outcome, ok))
    return rows
