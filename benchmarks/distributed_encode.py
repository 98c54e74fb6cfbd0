"""Distributed ``semhitok encode``: images/s of the torchrun pass at 1 and 2 ranks, side by side.

Each variant is the command a user runs, in a child process, into a fresh output folder::

    OMP_NUM_THREADS=T python -m torch.distributed.run --nproc_per_node R --master_port P \\
        -m semhitok_plugin.cli encode FOLDER -m CHECKPOINT -o SET --shard-size S --batch-size B

The rate is the one rank 0 prints: images encoded by all ranks over the pass, from the barrier
after every rank has built its model to the last rank's end (start-up and model building are
left out; the wall time of the whole command is reported too). Variants on the CPU: 1 rank x 1
thread (the reference), 2 ranks x 1 thread (torchrun's default of one thread per rank), and
1 rank x 2 threads (the same cores used by one process); on CUDA, 1 rank and 2 ranks (one GPU
each, bf16: ``--device cuda`` needs two GPUs for the second). Every round runs each variant once,
the order reversed every round; the median is reported. Images are small generated JPEG/PNG files
(``encode_memory.write_images``), ``--shard-size`` is an eighth of them so both ranks have work.
Each preset is saved once with random weights (``teacher.weights = None``: the same cost, no
download) and encoded from that checkpoint directory, as a trained tokenizer would be.

On a GPU node the 1-rank CUDA row of a paper preset is the per-GPU rate ``docs/scale.md`` turns
into days for 50M images: ``python -m benchmarks distributed_encode --device cuda --presets
siglip-l16-256``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.encode_memory import write_images
from benchmarks.suite import PAPER_PRESETS, Context, Row, Skip
from benchmarks.suite.harness import median
from semhitok_plugin import SemHiTok, get_preset

NAME = "distributed_encode"
COUNT_LINE = re.compile(
    r"encoded (\d+) of \d+ images in ([\d.]+) s \(([\d.]+) images/s\) on (\d+) ranks?"
)
IMAGES = {"tiny": 512}  # per preset; the paper presets: PAPER_IMAGES
PAPER_IMAGES = 24  # a 316M-428M teacher encodes ~1 image/s per CPU thread


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--dist-images",
        type=int,
        help=f"images per run (default tiny {IMAGES['tiny']}, paper presets {PAPER_IMAGES}; "
        "quick 48)",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_random(preset: str, directory: Path) -> Path:
    config = get_preset(preset)
    config.teacher.weights = None  # random teacher: the same cost, no download
    return SemHiTok(config).save_pretrained(directory)


def command(
    folder: Path, output: Path, model: Path, *, ranks: int, batch: int, shard: int, device: str
) -> list[str]:
    """The torchrun call a user would make, in this interpreter's environment."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
    launcher += ["--master_port", str(_free_port()), "-m", "semhitok_plugin.cli", "encode"]
    options = ["-m", str(model), "-o", str(output), "--shard-size", str(shard)]
    return [*launcher, str(folder), *options, "--batch-size", str(batch), "--device", device]


def measure(argv: list[str], threads: int) -> dict[str, float]:
    """One run: rank 0's rate and the command's wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    found = COUNT_LINE.search(run.stderr)
    if run.returncode or found is None:
        raise RuntimeError(f"{' '.join(argv)} exited {run.returncode}:\n{run.stderr[-2000:]}")
    images, seconds, printed = int(found[1]), float(found[2]), float(found[3])
    # the line prints 1 decimal: the printed rate is the finer figure above 10 images/s
    rate = printed if printed >= 10 else images / max(seconds, 1e-9)
    return {"images_per_s": rate, "pass_s": seconds, "wall_s": wall}


def variants(device: torch.device) -> dict[str, tuple[int, int]]:
    """Name -> (ranks, threads per rank)."""
    if device.type == "cuda":
        if torch.cuda.device_count() < 2:
            return {"1 rank": (1, 1)}
        return {"1 rank": (1, 1), "2 ranks": (2, 1)}
    return {"1 rank x 1 thread": (1, 1), "2 ranks x 1 thread": (2, 1), "1 rank x 2 threads": (1, 2)}


def run(ctx: Context) -> list[Row]:
    if ctx.device.type == "cpu" and (os.cpu_count() or 1) < 2:
        raise Skip("2 ranks need 2 CPU cores")
    runs = variants(ctx.device)
    reference = next(iter(runs))
    rows = []
    for preset in ctx.presets_or(("tiny", PAPER_PRESETS[0])):
        default = 48 if ctx.quick else IMAGES.get(preset, PAPER_IMAGES)
        total = ctx.options.get("dist_images") or default
        batch = (ctx.batches or (16,))[0]
        shard = max(1, total // 8)
        with tempfile.TemporaryDirectory() as tmp:
            write_images(Path(tmp, "images"), total)
            model = save_random(preset, Path(tmp, preset))
            times: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
            for round_ in range(ctx.repeats):
                order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
                for name in order:
                    ranks, threads = runs[name]
                    out = Path(tmp, f"set-{round_}-{ranks}-{threads}")
                    argv = command(
                        Path(tmp, "images"),
                        out,
                        model,
                        ranks=ranks,
                        batch=batch,
                        shard=shard,
                        device=ctx.device.type,
                    )
                    print(f"[{NAME}] {preset} {name} round {round_ + 1}", file=sys.stderr)
                    times[name].append(measure(argv, threads))
        base = median([t["images_per_s"] for t in times[reference]])
        for name, (ranks, threads) in runs.items():
            metrics = {k: median([t[k] for t in times[name]]) for k in times[name][0]}
            metrics["speedup"] = metrics["images_per_s"] / base
            params = {"preset": preset, "ranks": ranks, "threads_per_rank": threads}
            params |= {"images": total, "batch": batch, "shard_size": shard, "rounds": ctx.repeats}
            params["command"] = " ".join(
                [
                    "OMP_NUM_THREADS=T",
                    "python -m torch.distributed.run --nproc_per_node R",
                    "-m semhitok_plugin.cli encode FOLDER -m CHECKPOINT -o SET",
                    f"--shard-size {shard} --batch-size {batch} --device {ctx.device.type}",
                ]
            )
            ref = None if name == reference else f"{preset} {reference}"
            rows.append(Row(NAME, f"{preset} {name}", params, metrics, reference=ref))
    return rows
