"""Load: ``semhitok encode`` on many images in one call keeps memory flat and reports progress.

The load test runs the CLI in a child process, as ``benchmarks/encode_memory.py`` does at 10,000
images, and bounds the RSS growth after warm-up well below what keeping one crop per image would
add. A planted leak run through the same meter shows the bound would catch such a leak.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semhitok_plugin.cli import GRID_ROWS, main

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``benchmarks`` is a folder of the clone, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.encode_memory import (  # noqa: E402
    CROP_BYTES,
    MIB,
    PROGRESS,
    measure_encode,
    run_sampled,
    summarise,
    write_images,
)

IMAGES, WARMUP = 1500, 0.2
BROKEN = ("broken.jpg", "truncated.png")
# A third of one crop per image after warm-up: a leak of a whole crop exceeds it threefold.
GROWTH_BOUND_MIB = CROP_BYTES * IMAGES * (1 - WARMUP) / 3 / MIB
SLOPE_BOUND_MIB_PER_1K = CROP_BYTES * 1000 / 3 / MIB


def write_broken(directory: Path) -> None:
    """A text file named .jpg and a PNG cut in half: counted as failed, never fatal."""
    (directory / BROKEN[0]).write_text("not a JPEG")
    good = directory / "000000.png"
    (directory / BROKEN[1]).write_bytes(good.read_bytes()[: good.stat().st_size // 2])


@pytest.fixture(scope="module")
def load_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("load") / "images"
    write_images(folder / "nested", IMAGES)
    write_broken(folder / "nested")
    return measure_encode([str(folder)], IMAGES + len(BROKEN), warmup=WARMUP, interval=0.02)


@pytest.mark.slow
def test_memory_stays_flat_after_warmup(load_run):
    _, summary = load_run
    # enough samples, over enough images, to judge a trend (an idle machine takes ~2 s)
    assert summary["samples_after_warmup"] >= 10 and summary["span_images"] >= IMAGES / 2, summary
    assert summary["growth_mib"] < GROWTH_BOUND_MIB, summary
    assert summary["slope_mib_per_1k"] < SLOPE_BOUND_MIB_PER_1K, summary


def test_every_readable_image_is_written_as_int32(load_run):
    run, summary = load_run
    assert run.returncode == 1  # the two broken files fail the call, but lose nothing else
    assert summary["written"] == IMAGES and summary["dtype"] == "int32"


def test_progress_is_reported_while_encoding_and_counted_at_the_end(load_run):
    run, _ = load_run
    total = IMAGES + len(BROKEN)
    counts = [int(done) for done, _ in PROGRESS.findall(run.stderr.encode())]
    assert counts[-1] == total  # the bar counts failed images too, so it reaches the end
    assert len(set(counts)) >= 5 and counts == sorted(counts)  # periodic and monotonic
    progress_seen = {s.done for s in run.samples}
    assert len(progress_seen - {0, total}) >= 2  # readable by a watcher while it runs
    assert f"encoded {IMAGES} of {total} images in " in run.stderr
    assert f"), {len(BROKEN)} failed\n" in run.stderr
    lines = re.split(r"[\r\n]+", run.stderr)  # the bar redraws with \r
    for name in BROKEN:  # each failure named on a line of its own, not glued to the bar
        assert any(
            line.startswith("error: cannot read image ") and f"nested/{name}'" in line
            for line in lines
        )


LEAKY = """
import time
from tqdm import tqdm
kept = []
for _ in tqdm(range({n}), unit="img", mininterval=0.02):
    kept.append(bytearray(b"\\x01" * {nbytes}))  # written, so resident
    time.sleep(0.002)
"""


@pytest.mark.slow
def test_the_meter_catches_a_planted_leak_of_one_crop_per_image():
    """Same sampler, same summary, a child that keeps 48 KiB per image: the bounds above fail."""
    code = textwrap.dedent(LEAKY.format(n=IMAGES, nbytes=CROP_BYTES))
    summary = summarise(run_sampled([sys.executable, "-c", code], interval=0.02), IMAGES, WARMUP)
    assert summary["growth_mib"] > 2 * GROWTH_BOUND_MIB, summary
    assert summary["slope_mib_per_1k"] == pytest.approx(CROP_BYTES * 1000 / MIB, rel=0.2)


def test_folders_and_lists_expand_in_order(tmp_path, capsys):
    """A folder is searched recursively for image files; a list's paths are relative to it."""
    images = write_images(tmp_path / "photos" / "a", 3)
    (tmp_path / "photos" / "notes.md").write_text("not an image, not counted")
    (tmp_path / "list.txt").write_text("photos/a/000001.jpg\n\nphotos/a/000000.png\n")
    out = tmp_path / "tokens.npz"
    args = [str(tmp_path / "photos"), str(tmp_path / "list.txt"), str(images[2])]
    assert main(["encode", *args, "-m", "tiny", "-o", str(out)]) == 0
    with np.load(out) as data:
        files = [Path(f) for f in data["files"]]
    assert files == [*images, images[1], images[0], images[2]]
    assert "encoded 6 of 6 images in " in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert main(["encode", str(tmp_path / "empty"), "-m", "tiny", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no image files") and f"{str(tmp_path / 'empty')!r}" in err


def test_many_failures_are_counted_not_all_listed_again(tmp_path, capsys):
    bad = [tmp_path / f"bad{i:02d}.jpg" for i in range(13)]
    for path in bad:
        path.write_text("not a JPEG")
    good = write_images(tmp_path / "good", 1)
    out = tmp_path / "tokens.npz"
    assert main(["encode", *map(str, [*bad, *good]), "-m", "tiny", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert all(err.count(f"error: cannot read image '{p}'") == 1 for p in bad)  # each named once
    assert "encoded 1 of 14 images in " in err and "), 13 failed\n" in err
    listed = err.split("13 of 14 images failed: ")[1]
    assert listed.endswith(" and 3 more\n")
    assert all(str(p) in listed for p in bad[:10]) and not any(str(p) in listed for p in bad[10:])


def test_reconstruct_grid_is_capped(tmp_path, capsys):
    """A grid row per image would grow with the run; the grid shows the first GRID_ROWS."""
    write_images(tmp_path / "photos", GRID_ROWS + 2)
    out = tmp_path / "recon"
    assert main(["reconstruct", str(tmp_path / "photos"), "-m", "tiny", "-o", str(out)]) == 0
    assert len(list(out.glob("0*.png"))) == GRID_ROWS + 2
    with Image.open(out / "grid.png") as grid:
        assert grid.height == GRID_ROWS * (64 + 2) + 2  # visualize.grid: 2 px gutters
    assert f"wrote {GRID_ROWS + 2} reconstructions" in capsys.readouterr().out
