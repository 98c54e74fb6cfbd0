"""Quantizer benchmark: SemHiTok's two quantizers against the references a user would otherwise use.

Two comparisons, each run side by side in one invocation, on N = images x tokens random tokens:

1. **SGHC pixel quantisation** (``SubCodebookQuantizer``, K=16384 sub-codebooks of m=12 codes,
   d=8) against a **flat masked nearest-neighbour search** over the same K*m = 196,608 codes: the
   full, unchunked N x K*m cosine-score matrix (~12.9 GB fp32 at N=16384), with every code outside
   the token's own sub-codebook masked to -inf, then argmax. Both must pick the same pixel ids
   (checked; a mismatch is tolerated only where the two scores tie to within 1e-6, i.e. float
   rounding). SGHC gathers only the m candidates per token, so the issue expects it to be >=100x
   faster and to need >=100x less peak memory.
2. **Semantic codebook** (``SemanticCodebook``, K=16384, d=48, cosine EMA, no k-means init, no
   dead-code restarts) against ``vector_quantize_pytorch.VectorQuantize`` configured the same way:
   ``VectorQuantize(dim=48, codebook_size=16384, use_cosine_sim=True, decay=0.99,
   kmeans_init=False, threshold_ema_dead_code=0, commitment_weight=0.25)`` (all other arguments at
   their 1.32.0 defaults: one head, EMA update, rotation trick, no orthogonal/diversity losses).
   Both get the same (images, tokens, 48) input. Two modes each: inference (``eval()`` +
   ``torch.no_grad()``) and a training step (``train()``, forward with the EMA codebook update;
   ours via ``update=True``). The issue expects ours to be no slower than the library.

Measurement. Every case runs in a fresh subprocess (this script re-invoked with ``--case``), so
memory from one case never counts towards another. Inputs and modules are built first, then the op
runs once as warm-up and ``--repeats`` times measured. Throughput is tokens/s from the median
wall time. Peak memory: torch's CPU allocations are invisible to ``tracemalloc``, so before each
measured run the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` <- 5), ``VmRSS`` is
read as the baseline and ``VmHWM`` after the run; peak = max over repeats of VmHWM - baseline.
The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=131072`` so glibc returns every large block to
the kernel on free; otherwise buffers freed by the warm-up would be reused from already-resident
heap and later peaks would read as ~0. Linux only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

SEM_K, PIX_M, PIX_D = 16384, 12, 8  # SGHC: sub-codebooks, codes per sub-codebook, pixel dim
SEM_D = 48  # semantic codebook dim (same K)

Op = Callable[[], Any]
Check = Callable[[Any], bool]


# ---------------------------------------------------------------------------- cases
# Each builder makes its inputs and module, and returns the op to time plus an optional check
# of the op's result.


def _pixel_inputs(args: argparse.Namespace):
    from semhitok_plugin.sghc import SubCodebookQuantizer

    torch.manual_seed(args.seed)
    q = SubCodebookQuantizer(codebook_size=SEM_K, sub_size=PIX_M, dim=PIX_D).eval()
    n = args.images * args.tokens
    return q, torch.randn(n, PIX_D), torch.randint(0, SEM_K, (n,))


def sghc(args: argparse.Namespace) -> tuple[Op, Check | None]:
    q, z, sem = _pixel_inputs(args)
    return torch.no_grad()(lambda: q(z, sem).ids), None


def flat_masked(args: argparse.Namespace) -> tuple[Op, Check | None]:
    q, z, sem = _pixel_inputs(args)
    codes = F.normalize(q.codebooks.detach().reshape(-1, PIX_D), dim=-1)  # (K*m, d)
    with torch.no_grad():
        expected = q(z, sem).ids

    @torch.no_grad()
    def op() -> torch.Tensor:
        scores = F.normalize(z, dim=-1) @ codes.T  # (N, K*m): the full matrix, on purpose
        allowed = torch.arange(SEM_K) == sem[:, None]  # (N, K): only the token's sub-codebook
        scores.view(len(z), SEM_K, PIX_M).masked_fill_(~allowed[..., None], float("-inf"))
        return scores.argmax(-1) - sem * PIX_M  # flat id -> pixel id within the sub-codebook

    def check(pix: torch.Tensor) -> bool:
        bad = (pix != expected).nonzero().squeeze(1)
        if len(bad) == 0:
            return True
        # Tolerate float-rounding ties only: both picks must score the same to within 1e-6.
        cand = codes.view(SEM_K, PIX_M, PIX_D)[sem[bad]] @ F.normalize(z[bad], dim=-1)[..., None]
        picked = cand.squeeze(-1).gather(1, torch.stack([pix[bad], expected[bad]], 1))
        return bool((picked[:, 0] - picked[:, 1]).abs().max() <= 1e-6)

    return op, check


def _semantic_inputs(args: argparse.Namespace) -> torch.Tensor:
    torch.manual_seed(args.seed)
    return torch.randn(args.images, args.tokens, SEM_D)


def _ours(args: argparse.Namespace, train: bool) -> tuple[Op, Check | None]:
    from semhitok_plugin.semantic_codebook import SemanticCodebook

    z = _semantic_inputs(args)
    cb = SemanticCodebook(SEM_K, SEM_D, kmeans_init=False, dead_code_patience=0).train(train)
    return ((lambda: cb(z, update=True).ids) if train else torch.no_grad()(lambda: cb(z).ids)), None


def _library(args: argparse.Namespace, train: bool) -> tuple[Op, Check | None]:
    from vector_quantize_pytorch import VectorQuantize

    z = _semantic_inputs(args)
    vq = VectorQuantize(
        dim=SEM_D,
        codebook_size=SEM_K,
        use_cosine_sim=True,
        decay=0.99,
        kmeans_init=False,
        threshold_ema_dead_code=0,
        commitment_weight=0.25,
    ).train(train)
    return ((lambda: vq(z)[1]) if train else torch.no_grad()(lambda: vq(z)[1])), None


class Case(NamedTuple):
    build: Callable[[argparse.Namespace], tuple[Op, Check | None]]
    reference: str | None  # the case this one is compared against (None for references)


CASES: dict[str, Case] = {
    "sghc": Case(sghc, "flat_masked"),
    "flat_masked": Case(flat_masked, None),
    "semantic_eval": Case(lambda a: _ours(a, train=False), "vq_lib_eval"),
    "vq_lib_eval": Case(lambda a: _library(a, train=False), None),
    "semantic_train": Case(lambda a: _ours(a, train=True), "vq_lib_train"),
    "vq_lib_train": Case(lambda a: _library(a, train=True), None),
}


# ---------------------------------------------------------------------------- harness


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(op: Op, check: Check | None, repeats: int) -> dict[str, Any]:
    """Warm up once, then time ``repeats`` runs, each with its own peak-RSS window."""
    op()
    times, peaks, result = [], [], None
    for _ in range(repeats):
        result = None  # drop the previous result before the baseline is read
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        baseline = _proc_status_kib("VmRSS")
        start = time.perf_counter()
        result = op()
        times.append(time.perf_counter() - start)
        peaks.append(_proc_status_kib("VmHWM") - baseline)
    return {
        "seconds": times,
        "median_s": statistics.median(times),
        "min_s": min(times),  # less sensitive to other load on a shared machine
        "peak_mib": max(peaks) / 1024,
        "check": None if check is None else check(result),
    }


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its measurement."""
    cmd = [sys.executable, __file__, "--case", name]
    cmd += [f"--{k}={getattr(args, k)}" for k in ("images", "tokens", "repeats", "seed")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {name} failed (exit {proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["tokens_per_s"] = args.images * args.tokens / out["median_s"]
    return out


# ---------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return {
        "platform": platform.platform(),
        "processor": models[0] if models else platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15min": os.getloadavg(),  # at the end, incl. this run; load skews timings
    }


def write_report(out: Path, device: torch.device, parameters: dict, **sections: Any) -> None:
    """The JSON report of a device benchmark: date, machine (and GPU), parameters, results."""
    machine = machine_info()
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "parameters": parameters,
        **sections,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each (ours, reference) pair: speed-up = ours tokens/s / reference tokens/s, and
    memory ratio = reference peak / ours peak (how many times less memory ours needs)."""
    out = {}
    for name, case in CASES.items():
        if case.reference is None:
            continue
        ours, ref = results[name], results[case.reference]
        out[f"{name} vs {case.reference}"] = {
            "speedup": ours["tokens_per_s"] / ref["tokens_per_s"],
            "memory_ratio": ref["peak_mib"] / max(ours["peak_mib"], 1 / 1024),  # floor: 1 KiB
            "correct": ref["check"],
        }
    return out


def print_table(results: dict[str, dict[str, Any]], pairs: dict[str, dict[str, Any]]) -> None:
    print(f"{'case':<16}{'tokens/s':>14}{'peak MiB':>12}{'median s':>11}")
    for name, r in results.items():
        print(f"{name:<16}{r['tokens_per_s']:>14,.0f}{r['peak_mib']:>12,.1f}{r['median_s']:>11.3f}")
    print()
    print(f"{'ours vs reference':<34}{'speed-up':>10}{'mem ratio':>11}{'same ids':>10}")
    for pair, p in pairs.items():
        correct = "-" if p["correct"] is None else str(p["correct"])
        print(f"{pair:<34}{p['speedup']:>9,.1f}x{p['memory_ratio']:>10,.1f}x{correct:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per image (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after 1 warm-up")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed for inputs and codebooks")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/quantizer.json"), help="JSON report"
    )
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()

    if args.case:  # child process: measure one case, print its JSON on the last line
        op, check = CASES[args.case].build(args)
        print(json.dumps(measure(op, check, args.repeats)))
        return

    start = time.perf_counter()
    results = {}
    for name in CASES:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_case(name, args)
    pairs = ratios(results)
    print_table(results, pairs)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {
            "images": args.images,
            "tokens": args.tokens,
            "repeats": args.repeats,
            "seed": args.seed,
            "sghc": {"codebook_size": SEM_K, "sub_size": PIX_M, "dim": PIX_D},
            "semantic": {"codebook_size": SEM_K, "dim": SEM_D},
        },
        "cases": results,
        "ratios": pairs,
        "wall_s": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['wall_s']:.0f} s)")
    bad = [pair for pair, p in pairs.items() if p["correct"] is False]
    if bad:
        sys.exit(f"flat search disagrees with SGHC: {bad}")


if __name__ == "__main__":
    main()
