"""Stage-2 training throughput and peak memory on this machine, per preset.

One process per preset (so peak memory is that preset's alone). Each runs the real stage-2 step
of the trainer's model path -- teacher and semantic branch without gradients, pixel encoder, SGHC,
pixel decoder with gradients, AdamW -- on random images in [-1, 1], after one warm-up step.
The stage-1 semantic codebook is random but initialised, which does not change the cost.
Peak memory is the process's peak resident set (VmHWM) over the whole case, model included.

    python benchmarks/train_throughput.py [--steps 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from quantizer import machine_info  # sibling script: one machine record for all reports

PRESETS = ("tiny", "siglip-l16-256")


def run_case(preset: str, steps: int, batch: int) -> dict:
    from semhitok_plugin import SemHiTok, get_preset

    config = get_preset(preset)
    config.teacher.weights = None  # random teacher: same cost, no download
    torch.manual_seed(0)
    model = SemHiTok(config).train()
    model.semantic_codebook.initialized.fill_(True)
    params = model.freeze_for("pixel")
    opt = torch.optim.AdamW(params, lr=1e-4)
    images = torch.rand(batch, 3, config.image_size, config.image_size) * 2 - 1
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        model(images, stage="pixel")["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    peak_kib = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    step = sorted(times)[len(times) // 2]
    return {
        "preset": preset,
        "batch": batch,
        "image_size": config.image_size,
        "step_s": step,
        "images_per_s": batch / step,
        "peak_rss_mib": peak_kib / 1024,
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
    }


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul rate right now: the ceiling the steps above are measured under."""
    a = torch.randn(n, n)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/train_throughput.json")
    )
    parser.add_argument("--case", choices=PRESETS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.steps, args.batch)))
        return
    rows = []
    for preset in PRESETS:
        cmd = [
            sys.executable,
            __file__,
            "--case",
            preset,
            f"--steps={args.steps}",
            f"--batch={args.batch}",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{preset:16} batch {r['batch']} @ {r['image_size']} px: {r['step_s']:.2f} s/step, "
            f"{r['images_per_s']:.1f} img/s, peak RSS {r['peak_rss_mib']:,.0f} MiB",
            flush=True,
        )
    gflops = matmul_gflops()
    print(f"fp32 matmul on this machine now: {gflops:.0f} GFLOP/s")
    report = {
        "machine": machine_info(),
        "matmul_gflops": gflops,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
