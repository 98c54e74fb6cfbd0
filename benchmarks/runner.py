"""The one benchmark runner: ``python -m benchmarks [CASE ...] [options]``, from the repo root.

Every case (``python -m benchmarks --help`` lists them with their options) runs in this process,
in the order given (default: the tokenizer suite, ``SUITE``); ``limit`` runs first whenever a
case divides its achieved FLOP/s by the machine's matmul rate. A case that cannot run here (a
missing optional package, or it raised ``Skip``) is reported as skipped; one that raises is
reported as failed with its traceback, the others still run, and the exit status is 1.
Progress goes to stderr, the table to stdout, and one JSON report (``benchmarks.report``) to
``--out``: by default ``RESULTS/<case>_<device>.json`` for one case, ``RESULTS/bench_<device>.json``
for several, with ``_quick`` appended in quick mode.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmarks.report import draw_plots, log, markdown, table, write_report
from benchmarks.suite import Context, Skip

SUITE = ("limit", "tokenize", "train", "scaling", "peers", "data")
OTHERS = (
    "quantizer",
    "encode_memory",
    "llamagen_adapter",
    "llamagen_vocab_cost",
    "llava_tower",
    "mllm_generation",
    "ablation",
    "distributed_encode",
    "hierarchical_head",
)
CASES = {name: f"benchmarks.suite.{name}" for name in SUITE} | {
    name: f"benchmarks.{name}" for name in OTHERS
}
FIRST_PARTY = ("benchmarks", "semhitok_plugin")  # a missing module of these is a bug, not a skip
RESULTS = Path("benchmarks/results")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _csv(text))


def load_case(name: str) -> ModuleType:
    return importlib.import_module(CASES[name])


def missing_dependency(err: BaseException) -> str | None:
    """Why a case is skipped when ``err`` means it needs a package this environment lacks."""
    missing = isinstance(err, ModuleNotFoundError) and err.name
    if missing and err.name.split(".")[0] not in FIRST_PARTY:
        return f"needs the {err.name} package, which is not installed"
    return None


def _case_summary(name: str) -> tuple[ModuleType | None, str]:
    try:
        module = load_case(name)
    except ModuleNotFoundError as err:
        if missing_dependency(err) is None:
            raise
        return None, f"(unavailable here: {missing_dependency(err)})"
    return module, " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser, and which case owns each case-specific option (by dest)."""
    summaries = {name: _case_summary(name) for name in CASES}
    listing = "\n".join(f"  {name}: {summary}" for name, (_, summary) in summaries.items())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        epilog=f"cases:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "cases",
        nargs="*",
        metavar="CASE",
        type=_csv,
        help=f"cases to run, space- or comma-separated (default: {','.join(SUITE)})",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="fp32 on cpu, bf16 on cuda (default: cuda when available)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (CI)")
    parser.add_argument(
        "--presets", type=_csv, help="tokenizer presets, comma-separated (default: per case)"
    )
    parser.add_argument(
        "--batches", type=_ints, help="batch sizes, comma-separated (default: per case)"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed rounds (default 2 quick, 3 cpu, 10 cuda)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help=f"folder of the default --out and --plots (default {RESULTS})",
    )
    parser.add_argument("--out", type=Path, help="JSON report (default: see above)")
    parser.add_argument("--plots", type=Path, help="PNG folder (default RESULTS/plots)")
    parser.add_argument("--no-plots", action="store_true", help="draw no plots")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    owner: dict[str, str] = {}
    for name, (module, _) in summaries.items():
        if module is not None and hasattr(module, "add_arguments"):
            group = parser.add_argument_group(f"{name} options")
            module.add_arguments(group)
            owner.update({action.dest: name for action in group._group_actions})
    return parser, owner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser, owner = build_parser()
    args = parser.parse_args(argv)
    args.cases = [c for part in args.cases for c in part] or list(SUITE)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    for dest, case in owner.items():
        if case not in args.cases and getattr(args, dest) != parser.get_default(dest):
            parser.error(f"--{dest.replace('_', '-')} is an option of {case}, which is not run")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.repeats is None:
        args.repeats = 2 if args.quick else (10 if args.device == "cuda" else 3)
    if args.out is None:
        stem = args.cases[0] if len(args.cases) == 1 else "bench"
        args.out = args.results / f"{stem}_{args.device}{'_quick' if args.quick else ''}.json"
    args.plots = args.plots or args.results / "plots"
    args.options = {dest: getattr(args, dest) for dest, case in owner.items() if case in args.cases}
    return args


def make_context(args: argparse.Namespace) -> Context:
    device = torch.device(args.device)
    return Context(
        device=device,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        quick=args.quick,
        repeats=args.repeats,
        presets=tuple(args.presets) if args.presets else None,
        batches=args.batches,
        options=args.options,
    )


def run_cases(ctx: Context, cases: list[str]) -> dict[str, Any]:
    """Run ``cases`` in order (``limit`` first where one uses it); rows, skips, failures and
    each case's seconds."""
    out: dict[str, Any] = {"rows": [], "skipped": {}, "failed": {}, "case_seconds": {}}
    out["modules"] = modules = {}
    order = list(dict.fromkeys(cases))
    for name in order:
        try:
            modules[name] = load_case(name)
        except ModuleNotFoundError as err:
            if missing_dependency(err) is None:
                raise
    if "limit" not in order and any(getattr(m, "USES_LIMIT", False) for m in modules.values()):
        order.insert(0, "limit")
    for name in order:
        start = time.perf_counter()
        try:
            module = modules.get(name) or load_case(name)
            log(f"[{name}] running ...")
            rows = module.run(ctx)
        except Skip as err:
            out["skipped"][name] = str(err)
        except Exception as err:  # one broken case must not hide the others' numbers
            why = missing_dependency(err)
            if why:
                out["skipped"][name] = why
            else:
                out["failed"][name] = traceback.format_exc()
                log(f"[{name}] FAILED:\n{out['failed'][name]}")
        else:
            modules[name] = module
            out["rows"].extend(rows)
            log(f"[{name}] {len(rows)} rows in {time.perf_counter() - start:.1f} s")
        finally:
            out["case_seconds"][name] = time.perf_counter() - start
        if name in out["skipped"]:
            log(f"[{name}] skipped: {out['skipped'][name]}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    ctx = make_context(args)
    log(f"benchmarks on {ctx.device} ({ctx.dtype}), repeats {ctx.repeats}: {' '.join(args.cases)}")
    result = run_cases(ctx, args.cases)
    print((markdown if args.markdown else table)(result["rows"]))
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    for name in result["failed"]:
        print(f"FAILED {name} (traceback on stderr and in the JSON)")
    plots, plot_error = [], "--no-plots"
    if not args.no_plots:
        plots, plot_error = draw_plots(result["rows"], result["modules"], args.plots)
        for p in plots:
            log(f"wrote {p}")
        if plot_error:
            log(f"no plots: {plot_error}")
    parameters = {
        "cases": args.cases,
        "quick": args.quick,
        "presets": args.presets,
        "batches": args.batches,
        "repeats": ctx.repeats,
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "options": args.options,
        "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
    }
    write_report(
        args.out,
        ctx.device,
        parameters,
        limit_gflop_per_s=ctx.peak_flops / 1e9,
        rows=result["rows"],
        skipped=result["skipped"],
        failed=result["failed"],
        case_seconds=result["case_seconds"],
        plots=plots,
        plots_skipped=None if plots else plot_error,
        wall_s=time.perf_counter() - start,
    )
    return 1 if result["failed"] else 0


__all__ = ["CASES", "SUITE", "main", "make_context", "parse_args", "run_cases"]
