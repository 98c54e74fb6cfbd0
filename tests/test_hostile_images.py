"""Hostile and odd image files (``semhitok_fixtures.hostile_images``) through the reader,
the training and evaluation loaders and ``semhitok encode``."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import struct
import subprocess
import sys
import time
from itertools import islice

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from semhitok_fixtures.hostile_images import (
    BAD,
    GREEN,
    ODD,
    RED,
    centre_colour,
    probe,
    write_hostile_images,
)
from semhitok_plugin import images
from semhitok_plugin.cli import main
from semhitok_plugin.data import DataConfig, ImageStream, eval_batches
from semhitok_plugin.images import ImageReadError, center_crop, load_image, to_rgb

SIZE = 32
BAD_NAMES = [name for name, _, _ in BAD]
ODD_NAMES = [odd.name for odd in ODD]
MODEL = ["-m", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{file name: HostileImage}, all in one folder that holds nothing else."""
    return {e.name: e for e in write_hostile_images(tmp_path_factory.mktemp("hostile"))}


def _paths(corpus, kind: str) -> list[str]:
    return [str(e.path) for e in corpus.values() if e.kind == kind]


def _logged(caplog) -> list[str]:
    """The files the loaders named as skipped (data._deliver: "skipping unreadable %s (%s)")."""
    return [r.args[0] for r in caplog.records if r.name == "semhitok_plugin.data"]


# --- the probe behind docs/bad-inputs.md: one row per file, then one per entry point -------------

# Why each bad file is refused, as the loaders log it (the start of the row's outcome).
REFUSALS = {
    "empty.jpg": "cannot identify image file 'empty.jpg'",
    "notes.jpg": "cannot identify image file 'notes.jpg'",
    "truncated.jpg": "image file is truncated",
    "truncated.png": "image file is truncated",
    "broken-chunk.png": "broken PNG file",
    "bad-tag.tif": "'float' object cannot be interpreted as an integer",
    "postscript.jpg": "cannot identify image file 'postscript.jpg'",
    "bomb-10000x10000.png": "10000x10000 = 100,000,000 pixels is over the limit of 67,108,864",
    "bomb-100000x100000.png": "Image size (10000000000 pixels) exceeds limit",
    "bomb-65535x65535.gif": "Image size (4294836225 pixels) exceeds limit",
}
REFUSED = "skipped and counted by both loaders, encode exits 1 naming the file, writes no tokens"
ALL_AT_ONCE = f"all {len(BAD) + len(ODD)} files at once ({len(BAD)} bad, {len(ODD)} odd)"


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """{(input, entry point): outcome} of every row the probe reports."""
    rows = probe(tmp_path_factory.mktemp("probe"))
    table = {(row.input, row.entry_point): row.outcome for row in rows}
    assert len(table) == len(rows) == len(BAD) + len(ODD) + 3
    return table


@pytest.mark.parametrize("name, description", [(name, words) for name, words, _ in BAD])
def test_probe_row_of_a_bad_file(probed, name, description):
    outcome = probed[(description, "training loader, evaluation loader, semhitok encode")]
    assert outcome.startswith(f"refused ({REFUSALS[name]}")
    assert outcome.endswith(f"); {REFUSED}")


@pytest.mark.parametrize("odd", ODD, ids=ODD_NAMES)
def test_probe_row_of_an_odd_file(probed, odd):
    width, height = odd.size
    assert probed[(odd.description, "training loader, evaluation loader, semhitok encode")] == (
        f"read as displayed ({len(odd.colours)} colour(s) and size {width}x{height} checked); "
        "kept by both loaders, centre crop colour right; encode exits 0"
    )


def test_probe_rows_of_the_whole_corpus(probed):
    loaded = f"{len(ODD)} images, skipped count {len(BAD)}, {len(BAD)} files logged by name"
    assert probed[(ALL_AT_ONCE, "training loader (one epoch)")] == loaded
    assert probed[(ALL_AT_ONCE, "evaluation loader")] == loaded
    assert probed[(ALL_AT_ONCE, "semhitok encode")] == (
        f"exit 1; tokens for {len(ODD)} images; {len(BAD)} failures named"
    )


# --- loaders --------------------------------------------------------------------------------------


def test_training_loader_skips_and_counts_exactly_the_bad_files(corpus, caplog):
    caplog.set_level(logging.WARNING, logger="semhitok_plugin.data")
    folder = next(iter(corpus.values())).path.parent
    stream = ImageStream(DataConfig(str(folder), image_size=SIZE), batch_size=len(corpus))
    batches = list(islice(stream, 2))  # a batch is an epoch
    bad, odd = _paths(corpus, "bad"), _paths(corpus, "odd")
    assert [(len(b["images"]), b["skipped"]) for b in batches] == [(len(odd), len(bad))] * 2
    assert stream.skipped_total == 2 * len(bad)
    assert sorted(_logged(caplog)) == sorted(bad)  # named once each
    crops = torch.cat([b["images"] for b in batches])
    assert crops.isfinite().all() and crops.min() >= -1 and crops.max() <= 1


def test_evaluation_loader_skips_counts_and_keeps_the_odd_files_colours(corpus, caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="semhitok_plugin.data")
    listing = tmp_path / "all.txt"
    listing.write_text("".join(f"{e.path}\n" for e in corpus.values()))
    batches = list(eval_batches(DataConfig(str(listing), image_size=SIZE), batch_size=5))
    assert sum(b["skipped"] for b in batches) == len(_paths(corpus, "bad"))
    assert sorted(_logged(caplog)) == sorted(_paths(corpus, "bad"))
    kept = torch.cat([b["images"] for b in batches])
    odd = [e for e in corpus.values() if e.kind == "odd"]
    assert len(kept) == len(odd)
    for entry, image in zip(odd, kept, strict=True):
        got = np.array(centre_colour(image))
        assert np.abs(got - entry.centre).max() <= entry.tolerance + 2, entry.name


# --- odd files: read as a viewer shows them -------------------------------------------------------


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_file_reads_as_displayed(corpus, name):
    assert corpus[name].mismatches(load_image(corpus[name].path)) == []


def test_exif_orientation_is_applied(corpus):
    path = corpus["exif-rotated.jpg"].path
    assert Image.open(path).size == (64, 96)  # stored on its side
    img = load_image(path)
    assert img.size == (96, 64)
    assert np.abs(np.subtract(img.getpixel((8, 32)), RED)).max() <= 12  # red on the left


def test_sixteen_bit_grey_is_scaled_not_clipped(corpus):
    img = load_image(corpus["grey16.png"].path)
    assert Image.open(corpus["grey16.png"].path).mode.startswith("I")
    assert np.asarray(img)[32, [8, 48, 88]].tolist() == [[32] * 3, [128] * 3, [224] * 3]
    # mode "I" (older Pillow's 16-bit PNGs, 32-bit TIFFs) is read as 16-bit, clipped to 65535
    wide = to_rgb(Image.fromarray(np.array([[8224, 65535, 70000, -5]], dtype=np.int32)))
    assert np.asarray(wide)[0, :, 0].tolist() == [32, 255, 255, 0]


@pytest.mark.parametrize("name", ["rgba.png", "la.png", "palette-transparent.png", "grey-trns.png"])
def test_transparency_is_composited_on_the_documented_background(corpus, name, monkeypatch):
    path = corpus[name].path
    assert load_image(path).getpixel((8, 32)) == images.BACKGROUND  # the clear left band
    monkeypatch.setattr(images, "BACKGROUND", (0, 0, 255))
    assert load_image(path).getpixel((8, 32)) == (0, 0, 255)


def test_animated_gif_gives_its_first_frame(corpus):
    path = corpus["animated.gif"].path
    assert Image.open(path).n_frames == 2
    img = load_image(path)
    assert corpus["animated.gif"].mismatches(img) == []
    assert img.getpixel((48, 32)) != (220, 0, 220)  # not the second frame


def test_cmyk_jpeg_keeps_its_colours(corpus):
    path = corpus["cmyk.jpg"].path
    assert Image.open(path).mode == "CMYK"
    assert np.abs(np.subtract(load_image(path).getpixel((8, 32)), RED)).max() <= 12


def test_extreme_aspect_ratios_crop_to_their_centre(corpus, tmp_path):
    tall, dot = corpus["tall-1x4000.png"].path, corpus["one-pixel.png"].path
    for path in (tall, dot):
        crop = np.asarray(center_crop(load_image(path), SIZE))
        assert crop.shape == (SIZE, SIZE, 3) and (crop == GREEN).all()
    listing = tmp_path / "narrow.txt"
    listing.write_text(f"{tall}\n{dot}\n")
    batch = next(iter(ImageStream(DataConfig(str(listing), image_size=SIZE), batch_size=2)))
    expected = torch.tensor(GREEN).view(3, 1, 1) / 127.5 - 1  # random crops, all of the middle
    assert torch.allclose(batch["images"], expected.expand(2, 3, SIZE, SIZE), atol=1e-6)


# --- bad files: refused, by name, fast ------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_file_raises_image_read_error_naming_it(corpus, name):
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as info:
        load_image(corpus[name].path)
    assert time.perf_counter() - start < 1
    assert str(corpus[name].path) in str(info.value)


def test_postscript_is_never_identified_so_ghostscript_never_runs(corpus):
    with pytest.raises(ImageReadError, match="cannot identify image file") as info:
        load_image(corpus["postscript.jpg"].path)
    assert "Ghostscript" not in str(info.value)


# Peak memory in a fresh process; images.py is loaded alone (the package's imports take seconds).
BOMB_SCRIPT = """
import importlib.util, resource, sys, time
spec = importlib.util.spec_from_file_location("images", sys.argv[1])
images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(images)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[2:]:
    start = time.perf_counter()
    try:
        images.load_image(path)
        print("decoded", path)
    except images.ImageReadError as err:
        print(f"refused in {time.perf_counter() - start:.3f} s: {err}")
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"grew {grown // 1024} MiB; limit {images.MAX_PIXELS}")
"""


def test_bombs_are_refused_from_their_header_without_decoding(corpus):
    bombs = [corpus[name].path for name in BAD_NAMES if name.startswith("bomb")]
    env = {k: v for k, v in os.environ.items() if k != "SEMHITOK_MAX_IMAGE_PIXELS"}
    run = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, images.__file__, *map(str, bombs)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    *refusals, summary = run.stdout.strip().splitlines()
    assert all(line.startswith("refused in ") for line in refusals) and len(refusals) == 3
    assert all(float(line.split()[2]) < 0.5 for line in refusals)
    # decoding the 10000 x 10000 one alone would take 100 MB as 1-bit pixels, 300 MB as RGB
    assert int(summary.split()[1]) < 30 and summary.endswith(f"limit {2**26}")
    assert "10000x10000 = 100,000,000 pixels is over the limit of 67,108,864" in refusals[0]


def test_pixel_limit_is_a_setting(corpus, monkeypatch):
    path = corpus["stripes.webp"].path  # 96 x 64
    monkeypatch.setattr(images, "MAX_PIXELS", 96 * 64)
    assert load_image(path).size == (96, 64)
    monkeypatch.setattr(images, "MAX_PIXELS", 96 * 64 - 1)
    with pytest.raises(ImageReadError, match="96x64 = 6,144 pixels is over the limit of 6,143"):
        load_image(path)
    monkeypatch.setenv("SEMHITOK_MAX_IMAGE_PIXELS", "1234")
    spec = importlib.util.spec_from_file_location("images_copy", images.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)  # a copy: reloading would replace ImageReadError everywhere
    assert fresh.MAX_PIXELS == 1234


def _noise(fmt: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _png_chunks(data: bytes) -> list[int]:
    """The offset of each chunk of a PNG file."""
    offsets, at = [], 8
    while at < len(data):
        offsets.append(at)
        at += 12 + struct.unpack(">I", data[at : at + 4])[0]
    return offsets


NOISE_PNG = _noise("PNG", (256, 256))  # four IDAT chunks between IHDR and IEND


@given(
    st.sampled_from(_png_chunks(NOISE_PNG)),
    st.one_of(
        st.tuples(st.just(0), st.binary(min_size=4, max_size=4)),  # a new length
        st.tuples(st.just(4), st.binary(min_size=4, max_size=4)),  # a new type
    ),
)
def test_any_garbled_png_chunk_header_gives_an_image_or_image_read_error(chunk, edit):
    field, value = edit
    data = bytearray(NOISE_PNG)
    data[chunk + field : chunk + field + 4] = value
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images, "MAX_PIXELS", 10**6)  # a garbled size must not allocate much
        with contextlib.suppress(ImageReadError):
            assert load_image(io.BytesIO(bytes(data))).mode == "RGB"


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow on the tags it cannot use
def test_any_tiff_tag_of_any_type_gives_an_image_or_image_read_error():
    tiff = _noise("TIFF", (32, 24))
    ifd = struct.unpack("<I", tiff[4:8])[0]
    entries = range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", tiff[ifd : ifd + 2])[0], 12)
    for entry in entries:
        for tiff_type in range(14):  # 1..12 are TIFF 6.0's types; 0 and 13 are not types
            data = bytearray(tiff)
            data[entry + 2 : entry + 4] = struct.pack("<H", tiff_type)
            with contextlib.suppress(ImageReadError):
                assert load_image(io.BytesIO(bytes(data))).mode == "RGB"


# --- semhitok encode ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_encode_of_one_bad_file_exits_1_naming_it(corpus, name, tmp_path, capsys):
    tokens = tmp_path / "tokens.npz"
    assert main(["encode", str(corpus[name].path), *MODEL, "-o", str(tokens)]) == 1
    assert str(corpus[name].path) in capsys.readouterr().err
    assert not tokens.exists()


def test_encode_continues_past_bad_files_and_reports_them(corpus, tmp_path, capsys):
    bad, odd = _paths(corpus, "bad"), _paths(corpus, "odd")
    folder = next(iter(corpus.values())).path.parent
    given_paths = [str(e.path) for e in corpus.values()]
    for inputs, written in (([str(folder)], sorted(odd)), (given_paths, odd)):
        tokens = tmp_path / "tokens.npz"
        assert main(["encode", *inputs, *MODEL, "-o", str(tokens)]) == 1
        err = capsys.readouterr().err
        assert all(path in err for path in bad)
        assert f"{len(bad)} of {len(corpus)} images failed" in err
        with np.load(tokens) as data:
            assert list(data["files"]) == written and data["flat_ids"].shape[0] == len(odd)
        tokens.unlink()
