"""Benchmark suite runner: one table, one JSON report, PNG plots.

    python -m benchmarks [--cases limit,tokenize,train,scaling,peers,data] [--device cpu|cuda]
                         [--quick] [--presets tiny,...] [--repeats N] [--batches 1,8]
                         [--out JSON] [--plots DIR | --no-plots]

Run from the repository root. Each case is the module ``benchmarks.suite.<name>`` (``NAME`` and
``run(ctx) -> list[Row]``, optionally ``plot(rows, directory) -> list[Path]``). ``limit`` always
runs first: it fills ``ctx.peak_flops``, which the model cases divide their achieved FLOP/s by.
A case whose module does not exist is reported as skipped; a case that raises is reported as
failed (traceback in the JSON), the others still run, and the exit status is 1.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.quantizer import write_report
from benchmarks.suite import Context, Row

CASES = ("limit", "tokenize", "train", "scaling", "peers", "data")
PRESETS = ("tiny", "siglip-l16-256", "siglip-so400m14-384")
# Metrics shown in the table, in this order, where a row has them (else its first four).
KEY_METRICS = (
    "gflop_per_s",
    "images_per_s",
    "ms_per_image",
    "fraction_of_limit",
    "peak_mib",
    "quantization_share",
    "ratio",
    "speedup",
    "share_of_step",
    "host_syncs",
)
MAX_SHOWN = 6
# Achieved FLOP/s over ``ctx.peak_flops``, under either name the cases use.
LIMIT_METRIC = "fraction_of_limit"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--cases", type=_csv, default=list(CASES), help=f"comma-separated ({','.join(CASES)})"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="fp32 on cpu, bf16 on cuda (default: cuda when available)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny preset, few repeats (CI)")
    parser.add_argument(
        "--presets", type=_csv, help=f"comma-separated (default: tiny with --quick, else {PRESETS})"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed rounds (default 2 quick, 3 cpu, 10 cuda)"
    )
    parser.add_argument(
        "--batches",
        type=lambda s: [int(b) for b in _csv(s)],
        help="batch sizes for the model cases (default: per case)",
    )
    parser.add_argument(
        "--variants",
        type=_csv,
        help="train case: only these variants (e.g. plain,checkpointing,fused,+lpips; "
        "plain is always measured, as every ratio's reference)",
    )
    parser.add_argument("--out", type=Path, help="JSON report (default benchmarks/results/...)")
    parser.add_argument(
        "--plots", type=Path, default=Path("benchmarks/results/plots"), help="PNG directory"
    )
    parser.add_argument("--no-plots", action="store_true", help="draw no plots")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.repeats is None:
        args.repeats = 2 if args.quick else (10 if args.device == "cuda" else 3)
    if args.presets is None:
        args.presets = ["tiny"] if args.quick else list(PRESETS)
    if args.out is None:
        suffix = "_quick" if args.quick else ""
        args.out = Path(f"benchmarks/results/bench_{args.device}{suffix}.json")
    return args


def make_context(args: argparse.Namespace) -> Context:
    device = torch.device(args.device)
    ctx = Context(
        device=device,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        quick=args.quick,
        presets=tuple(args.presets),
        repeats=args.repeats,
    )
    if args.batches:
        ctx.extra["batches"] = tuple(args.batches)
    if args.variants:
        ctx.extra["variants"] = ("plain", *args.variants)
    return ctx


def load_case(name: str):
    """The case module, or None when it does not exist (yet)."""
    module_name = f"benchmarks.suite.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise


def run_cases(ctx: Context, cases: list[str]) -> dict[str, Any]:
    """Run ``limit`` and then ``cases`` in order; collect rows, skips, failures and timings."""
    order = ["limit", *(c for c in dict.fromkeys(cases) if c != "limit")]
    out: dict[str, Any] = {
        "rows": [],
        "skipped": {},
        "failed": {},
        "case_seconds": {},
        "modules": {},
    }
    for name in order:
        start = time.perf_counter()
        try:
            module = load_case(name)
            if module is None:
                out["skipped"][name] = f"no module benchmarks.suite.{name}"
                log(f"[{name}] skipped: module not found")
                continue
            log(f"[{name}] running ...")
            rows = module.run(ctx)
        except Exception:  # one broken case must not hide the others' numbers
            out["failed"][name] = traceback.format_exc()
            log(f"[{name}] FAILED:\n{out['failed'][name]}")
            continue
        finally:
            out["case_seconds"][name] = time.perf_counter() - start
        out["modules"][name] = module
        out["rows"].extend(rows)
        log(f"[{name}] {len(rows)} rows in {out['case_seconds'][name]:.1f} s")
    return out


# ---------------------------------------------------------------------------- table


def fmt(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def key_metrics(row: Row) -> list[str]:
    names = [m for m in KEY_METRICS if m in row.metrics][:MAX_SHOWN]
    if not names:
        names = list(row.metrics)[:4]
    return names


def table(rows: list[Row]) -> str:
    lines = []
    width = max([len(r.name) for r in rows] + [4])
    lines.append(f"{'case':<10} {'name':<{width}}  key metrics")
    lines.append(f"{'-' * 10} {'-' * width}  {'-' * 40}")
    for r in rows:
        shown = "  ".join(f"{m}={fmt(r.metrics[m])}" for m in key_metrics(r))
        ref = f"  (vs {r.reference})" if r.reference else ""
        lines.append(f"{r.case:<10} {r.name:<{width}}  {shown}{ref}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- report


def plain(obj: Any) -> Any:
    """JSON-safe: dataclasses to dicts, non-finite floats to None, anything else odd to str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


# ---------------------------------------------------------------------------- plots


def plot_limit_fractions(rows: list[Row], directory: Path) -> Path | None:
    """Achieved FLOP/s as a fraction of the measured matmul limit, every row that has one."""
    import matplotlib.pyplot as plt

    sel = [r for r in rows if LIMIT_METRIC in r.metrics]
    if not sel:
        return None
    values = [r.metrics[LIMIT_METRIC] for r in sel]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(sel) + 1.2))
    y = range(len(sel))
    colors = [f"C{sorted({r.case for r in sel}).index(r.case)}" for r in sel]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, [f"{r.case}: {r.name}" for r in sel], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set(xlabel="achieved FLOP/s / measured matmul FLOP/s")
    ax.set_title("Fraction of the machine's matmul limit")
    path = directory / "fraction_of_limit.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def draw_plots(result: dict[str, Any], directory: Path) -> tuple[list[str], str | None]:
    try:
        import matplotlib
    except ModuleNotFoundError:
        return [], "matplotlib is not installed (pip install 'semhitok-plugin[bench]')"
    matplotlib.use("Agg")
    written: list[Path] = []
    for name, module in result["modules"].items():
        rows = [r for r in result["rows"] if r.case == name]
        if rows and hasattr(module, "plot"):
            written.extend(module.plot(rows, directory))
    path = plot_limit_fractions(result["rows"], directory)
    if path:
        written.append(path)
    return [str(p) for p in written], None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    ctx = make_context(args)
    log(f"benchmarks on {ctx.device} ({ctx.dtype}), presets {ctx.presets}, repeats {ctx.repeats}")
    result = run_cases(ctx, args.cases)
    print(table(result["rows"]))
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    for name in result["failed"]:
        print(f"FAILED {name} (traceback on stderr and in the JSON)")
    plots, plot_error = ([], "--no-plots") if args.no_plots else draw_plots(result, args.plots)
    for p in plots:
        log(f"wrote {p}")
    if plot_error and not args.no_plots:
        log(f"no plots: {plot_error}")
    parameters = {
        "cases": args.cases,
        "quick": args.quick,
        "presets": list(ctx.presets),
        "repeats": ctx.repeats,
        "batches": args.batches,
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "command": " ".join(
            ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    write_report(
        args.out,
        ctx.device,
        parameters,
        limit_gflop_per_s=ctx.peak_flops / 1e9,
        rows=plain(result["rows"]),
        skipped=result["skipped"],
        failed=result["failed"],
        case_seconds=result["case_seconds"],
        plots=plots,
        plots_skipped=None if plots else plot_error,
        wall_s=time.perf_counter() - start,
    )
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
