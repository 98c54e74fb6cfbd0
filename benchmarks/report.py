"""Reporting for every case: the text (or Markdown) table, the JSON report and the plots.

The JSON report is one object: ``date``, ``machine`` (CPU, threads, load, GPU), ``parameters``
(the command and the options), ``limit_gflop_per_s`` (0 when the ``limit`` case did not run),
``rows`` (each ``{case, name, params, metrics, reference}``), ``skipped`` and ``failed`` (case ->
reason / traceback), ``case_seconds``, ``plots``, ``plots_skipped`` and ``wall_s``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.suite import Row

# Metrics shown in the text table, in this order, where a row has them (else its first four).
KEY_METRICS = (
    "gflop_per_s",
    "images_per_s",
    "tokens_per_s",
    "ms_per_image",
    "ms",
    "fraction_of_limit",
    "peak_mib",
    "quantization_share",
    "speedup",
    "memory_ratio",
    "overhead",
    "time_vs_clip",
    "share_of_step",
    "host_syncs",
    "growth_mib",
    "slope_mib_per_1k",
    "psnr",
    "ssim",
    "sub_codebook_usage",
)
MAX_SHOWN = 6
# Achieved FLOP/s over the limit case's matmul rate.
LIMIT_METRIC = "fraction_of_limit"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    return names or list(row.metrics)[:4]


def table(rows: list[Row]) -> str:
    """One line per row: case, name, the key metrics and the row it is compared with."""
    if not rows:
        return "(no rows)"
    case_width = max([len(r.case) for r in rows] + [4])
    width = max([len(r.name) for r in rows] + [4])
    lines = [
        f"{'case':<{case_width}} {'name':<{width}}  key metrics",
        f"{'-' * case_width} {'-' * width}  {'-' * 40}",
    ]
    for r in rows:
        shown = "  ".join(f"{m}={fmt(r.metrics[m])}" for m in key_metrics(r))
        ref = f"  (vs {r.reference})" if r.reference else ""
        lines.append(f"{r.case:<{case_width}} {r.name:<{width}}  {shown}{ref}")
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    """One Markdown table per case, every metric a column (for the README)."""
    tables = []
    for case in dict.fromkeys(r.case for r in rows):
        sel = [r for r in rows if r.case == case]
        columns = list(dict.fromkeys(m for r in sel for m in r.metrics))
        lines = [
            f"| {case} | {' | '.join(columns)} |",
            f"|---|{'---:|' * len(columns)}",
        ]
        for r in sel:
            cells = [fmt(r.metrics[c]) if c in r.metrics else "" for c in columns]
            lines.append(f"| {r.name} | {' | '.join(cells)} |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


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


def machine_info(device: torch.device) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    machine = {
        "platform": platform.platform(),
        "processor": models[0] if models else platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15min": os.getloadavg(),  # at the end, incl. this run; load skews timings
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def write_report(out: Path, device: torch.device, parameters: dict, **sections: Any) -> None:
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "parameters": parameters,
        **sections,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plain(report), indent=2) + "\n")
    log(f"wrote {out}")


def plot_limit_fractions(rows: list[Row], directory: Path) -> Path | None:
    """Achieved FLOP/s as a fraction of the measured matmul limit, every row that has one."""
    import matplotlib.pyplot as plt

    from benchmarks.suite.harness import save_figure

    sel = [r for r in rows if LIMIT_METRIC in r.metrics]
    if not sel:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(sel) + 1.2))
    y = range(len(sel))
    colors = [f"C{sorted({r.case for r in sel}).index(r.case)}" for r in sel]
    ax.barh(y, [r.metrics[LIMIT_METRIC] for r in sel], color=colors)
    ax.set_yticks(y, [f"{r.case}: {r.name}" for r in sel], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set(xlabel="achieved FLOP/s / measured matmul FLOP/s")
    ax.set_title("Fraction of the machine's matmul limit")
    return save_figure(fig, directory / "fraction_of_limit.png")


def draw_plots(
    rows: list[Row], modules: dict[str, Any], directory: Path
) -> tuple[list[str], str | None]:
    """Each case's own plots of its rows, then the fraction-of-limit bars; (paths, why none)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return [], "matplotlib is not installed (pip install 'semhitok-plugin[bench]')"
    matplotlib.use("Agg")
    written: list[Path] = []
    for name, module in modules.items():
        sel = [r for r in rows if r.case == name]
        if sel and hasattr(module, "plot"):
            written.extend(module.plot(sel, directory))
    path = plot_limit_fractions(rows, directory)
    if path:
        written.append(path)
    return [str(p) for p in written], None


__all__ = ["draw_plots", "markdown", "plain", "table", "write_report"]
