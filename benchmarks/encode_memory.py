"""``semhitok encode`` on many small images in one call, in bounded memory.

For each preset (default ``tiny``) and batch size (default 16), it writes ``--images`` small
images (mixed sizes from 48 to 128 px, JPEG and PNG, smooth random content) into a temporary
folder, runs ``semhitok encode FOLDER -m PRESET -o tokens.npz --device DEVICE`` in a child
process with stderr going to a file (as in a batch job, not a TTY), and samples the child's
resident set every 50 ms. The progress bar the child writes says how many images were done at
each sample, so memory is read against images, not time:

* warm-up RSS: at the first sample once ``--warmup`` of the images are done (default 20 %);
* growth: the largest RSS over the rest of the encoding minus the warm-up RSS;
* slope: least-squares fit of RSS against images done after warm-up, in MiB per 1,000 images;
* peak while encoding: the largest sampled RSS from the first progress count to the last image;
* process peak: the kernel's high-water mark of the child (``wait4`` rusage), exact. It is set
  by the imports (torch and friends, ~870 MiB transiently) and by torch's interpreter teardown
  (+~125 MiB over the steady state: ``python -c "import torch"`` alone peaks at 633 MiB against
  506 MiB resident), neither of which depends on the number of images.

Keeping one 64x64x3 float32 crop per image (48 KiB) would read as a slope of ~47 MiB per 1k
images (the dashed line in the plot). The ids are kept by design: one preallocated int32 array,
h x w x 4 bytes per image (256 B at ``tiny``, 0.25 MiB per 1k images). The meter itself
(:func:`measure_encode`) is also what ``tests/test_encode_load.py`` bounds the growth with.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.suite import Context, Row
from benchmarks.suite.harness import save_figure

NAME = "encode_memory"
SIZES = ((64, 64), (48, 80), (96, 64), (72, 72), (128, 96))  # (width, height)
PROGRESS = re.compile(rb"(\d+)/(\d+) \[")  # tqdm's "done/total [elapsed<left, rate]"
MIB = 2**20
CROP_BYTES = 64 * 64 * 3 * 4  # one tiny-preset crop as float32: the leak this must detect


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the child started
    rss_mib: float
    done: int  # images done, from the child's progress bar (0 before it starts)


@dataclass
class Run:
    returncode: int
    wall_s: float
    peak_mib: float
    samples: list[Sample]
    stderr: str
    stdout: str


def write_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` small images of mixed sizes and formats: a random 4x4 pattern upsampled, so the
    files stay small (a few KiB) while every image differs."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pattern = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        image = pattern.resize(SIZES[i % len(SIZES)], Image.Resampling.BICUBIC)
        path = directory / f"{i:06d}.{'jpg' if i % 2 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


def encode_command(
    inputs: list[str], output: Path, model: str, batch_size: int, device: str | None = None
) -> list[str]:
    """The CLI call a user would make, in this interpreter's environment."""
    cli = [sys.executable, "-m", "semhitok_plugin.cli", "encode", *inputs]
    cli += ["-m", model, "-o", str(output), "--batch-size", str(batch_size)]
    return cli + (["--device", device] if device else [])


def run_sampled(command: list[str], interval: float = 0.05) -> Run:
    """Run ``command``; every ``interval`` s record its RSS and the last progress count it wrote
    to stderr. The peak is the kernel's own high-water mark of the child."""
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        err_path, out_path = Path(tmp, "stderr"), Path(tmp, "stdout")
        with err_path.open("wb") as err, out_path.open("wb") as out, err_path.open("rb") as tail:
            start = time.perf_counter()
            child = subprocess.Popen(command, stdout=out, stderr=err, env=os.environ.copy())
            process, samples, done, carry = psutil.Process(child.pid), [], 0, b""
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    break
                carry = carry[-64:] + tail.read()
                counts = PROGRESS.findall(carry)
                done = int(counts[-1][0]) if counts else done
                try:
                    rss = process.memory_info().rss / MIB
                except psutil.Error:  # exited between wait4 and here
                    rss = 0.0
                if rss:  # 0 for a zombie
                    samples.append(Sample(time.perf_counter() - start, rss, done))
                time.sleep(interval)
            wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4 above
        return Run(
            child.returncode,
            wall,
            usage.ru_maxrss / 1024,  # KiB on Linux
            samples,
            err_path.read_bytes().decode(errors="replace"),
            out_path.read_text(),
        )


def _rate(samples: list[Sample]) -> float:
    """Images per second while encoding (from the first to the last progress count)."""
    started = [s for s in samples if s.done > 0]
    if len(started) < 2 or started[-1].seconds <= started[0].seconds:
        return float("nan")
    return (started[-1].done - started[0].done) / (started[-1].seconds - started[0].seconds)


def summarise(run: Run, total: int, warmup: float) -> dict[str, float]:
    """Wall time, encoding rate, warm-up RSS, peak, growth after warm-up and its slope."""
    warm = [s for s in run.samples if total * warmup <= s.done < total]
    nan = float("nan")
    summary = {"images": total, "wall_s": run.wall_s, "images_per_s": _rate(run.samples)}
    summary |= {"peak_mib": run.peak_mib, "samples_after_warmup": len(warm), "warmup": warmup}
    summary["warm_rss_mib"] = warm[0].rss_mib if warm else nan
    summary["span_images"] = warm[-1].done - warm[0].done if warm else 0
    encoding = [s.rss_mib for s in run.samples if 0 < s.done < total]
    summary["peak_encoding_mib"] = max(encoding) if encoding else nan
    summary["growth_mib"] = max(s.rss_mib for s in warm) - warm[0].rss_mib if warm else nan
    done, rss = np.array([s.done for s in warm]), np.array([s.rss_mib for s in warm])
    fitted = len(warm) >= 3 and done[-1] > done[0]
    summary["slope_mib_per_1k"] = float(np.polyfit(done, rss, 1)[0]) * 1000 if fitted else nan
    return summary


def measure_encode(
    inputs: list[str],
    total: int,
    *,
    model: str = "tiny",
    batch_size: int = 16,
    warmup: float = 0.2,
    interval: float = 0.05,
    device: str | None = None,
) -> tuple[Run, dict[str, float]]:
    """One ``semhitok encode`` call on ``inputs`` (``total`` images), sampled and summarised.
    The token file goes to a temporary folder and is checked to hold ``total`` int32 maps."""
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp, "tokens.npz")
        run = run_sampled(encode_command(inputs, tokens, model, batch_size, device), interval)
        summary = summarise(run, total, warmup)
        if tokens.exists():
            with np.load(tokens) as data:
                summary["written"] = len(data["flat_ids"])
                summary["dtype"] = str(data["flat_ids"].dtype)
    return run, summary


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--images", type=int, help="images to encode (default 10,000; 300 quick)")
    group.add_argument(
        "--warmup", type=float, default=0.2, help="fraction of the images before warm (0.2)"
    )


METRICS = (
    "wall_s",
    "images_per_s",
    "warm_rss_mib",
    "peak_encoding_mib",
    "peak_mib",
    "growth_mib",
    "slope_mib_per_1k",
)


def run(ctx: Context) -> list[Row]:
    total = ctx.options["images"] or (300 if ctx.quick else 10_000)
    warmup = ctx.options["warmup"]
    rows = []
    for preset in ctx.presets_or(("tiny",)):
        for batch in ctx.batches or (16,):
            with tempfile.TemporaryDirectory() as tmp:
                print(f"writing {total:,} images to {tmp}", file=sys.stderr, flush=True)
                write_images(Path(tmp), total)
                print("running semhitok encode (child RSS sampled every 50 ms)", file=sys.stderr)
                run, summary = measure_encode(
                    [tmp],
                    total,
                    model=preset,
                    batch_size=batch,
                    warmup=warmup,
                    device=ctx.device.type,
                )
            if run.returncode:
                raise RuntimeError(
                    f"semhitok encode exited {run.returncode}:\n{run.stderr[-2000:]}"
                )
            step = max(1, len(run.samples) // 400)
            series = [[round(s.seconds, 3), round(s.rss_mib, 2), s.done] for s in run.samples]
            params = {k: v for k, v in summary.items() if k not in METRICS}
            params |= {"preset": preset, "batch": batch, "device": ctx.device.type}
            params["command"] = "semhitok encode FOLDER -m PRESET -o tokens.npz --batch-size B"
            params["series"] = {
                "columns": ["seconds", "rss_mib", "images_done"],
                "rows": series[::step],
            }
            metrics = {k: float(summary[k]) for k in METRICS}
            rows.append(Row(NAME, f"{preset} b{batch} {total} images", params, metrics))
    return rows


def plot(rows: list[Row], directory: Path) -> list[Path]:
    """RSS over time, and RSS against images encoded with the slope one leaked crop would add."""
    import matplotlib.pyplot as plt

    written = []
    for row in rows:
        samples = [Sample(*values) for values in row.params["series"]["rows"]]
        m, total = row.metrics, row.params["images"]
        fig, (by_time, by_images) = plt.subplots(1, 2, figsize=(11, 4))
        by_time.plot([s.seconds for s in samples], [s.rss_mib for s in samples])
        by_time.set(xlabel="seconds since start", ylabel="RSS (MiB)", title="child RSS over time")
        warm_at = total * row.params["warmup"]
        encoding = [s for s in samples if 0 < s.done < total]
        by_images.plot([s.done for s in encoding], [s.rss_mib for s in encoding], ".", ms=3)
        by_images.axvline(warm_at, color="grey", ls=":", lw=1)
        warm_rss = m["warm_rss_mib"]
        by_images.set(
            xlabel="images encoded",
            ylabel="RSS (MiB)",
            title=f"growth after warm-up {m['growth_mib']:.1f} MiB, "
            f"{m['slope_mib_per_1k']:.2f} MiB / 1k images",
        )
        if math.isfinite(warm_rss):  # NaN when a short run ends before a sample after warm-up
            leak = warm_rss + (total - warm_at) * CROP_BYTES / MIB
            by_images.plot([warm_at, total], [warm_rss, leak], "r--", lw=1, label="one crop leaked")
            by_images.set_ylim(warm_rss - 50, max(leak, warm_rss + 100))
            by_images.legend(loc="upper left")
        suffix = "" if len(rows) == 1 else f"_{row.params['preset']}_b{row.params['batch']}"
        written.append(save_figure(fig, directory / f"encode_memory_rss{suffix}.png"))
    return written
