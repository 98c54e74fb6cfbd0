"""How cost grows with K, m, resolution and batch.

Three series, each timed side by side (alternating rounds, median):

* ``sghc``: the SGHC pixel search (``SubCodebookQuantizer``, d = 8, inference) on N tokens with
  random semantic ids, for K in {1024, 4096, 16384} at m = 12 and m in {4, 8, 12, 16} at
  K = 16384. A flat masked search would cost O(N K m); SGHC gathers the m candidates of each token,
  O(N m d). As shipped, every call also l2-normalises *all* K x m codes (``normalized()``), an
  O(K m d) term per call that does not depend on N. The ``sghc-gather-first`` rows run the same
  search normalising only the gathered candidates (a proposed change, same ids and features --
  checked), which leaves the O(N m d) cost alone.
* ``semantic``: the semantic codebook search (``SemanticCodebook.nearest`` through ``forward``,
  d = 48, inference) on N tokens for K in {1024, 4096, 16384}: a chunked N x K matmul + argmax,
  linear in K by design; reported with its FLOP rate (2 N K d).
* ``encode``: ``SemHiTok.encode`` of the tiny-width model (the ``tiny`` preset's widths) as the
  resolution grows at batch 1, and as the batch grows at 64 px.

Every series reports ``tokens_per_s`` (or ``images_per_s``) and ``time_vs_base``: the median
time relative to the series' first row (its ``reference``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from . import Context, Row
from .harness import alternate, median, peak_mib, save_figure

NAME = "scaling"
USES_LIMIT = True
PIX_DIM, SEM_DIM = 8, 48
K_SERIES = (1024, 4096, 16384)
M_SERIES = (4, 8, 12, 16)
M_AT_K, K_AT_M = 12, 16384


def _sghc_gather_first(q, z: torch.Tensor, sem_ids: torch.Tensor):
    """``SubCodebookQuantizer.forward`` (usage counts and losses included) with
    ``normalized()[sem]`` replaced by ``normalize(codebooks[sem])``: only the N x m gathered
    candidates are normalised, not all K x m codes."""
    z = F.normalize(z.to(q.codebooks.dtype), dim=-1)
    flat, sem = z.reshape(-1, q.dim), sem_ids.reshape(-1)
    candidates = F.normalize(q.codebooks[sem], dim=-1)
    scores = torch.bmm(candidates.detach(), flat.detach().unsqueeze(-1)).squeeze(-1)
    pix = scores.argmax(-1)
    quantized = candidates.gather(1, pix.view(-1, 1, 1).expand(-1, 1, q.dim)).squeeze(1)
    q.usage.update(sem * q.sub_size + pix)
    losses = {
        "codebook": q.codebook_weight * F.mse_loss(quantized, flat.detach()),
        "commitment": q.commitment_weight * F.mse_loss(flat, quantized.detach()),
    }
    return quantized.view_as(z), pix.view(sem_ids.shape), losses


def sghc_rows(ctx: Context, tokens: int, repeats: int) -> list[Row]:
    from semhitok_plugin.sghc import SubCodebookQuantizer

    shapes = [(k, M_AT_K) for k in K_SERIES] + [(K_AT_M, m) for m in M_SERIES if m != M_AT_K]
    ops, same = {}, {}
    for k, m in shapes:
        torch.manual_seed(0)
        q = SubCodebookQuantizer(k, m, PIX_DIM).to(ctx.device).eval()
        z = torch.randn(tokens, PIX_DIM, device=ctx.device)
        sem = torch.randint(0, k, (tokens,), device=ctx.device)
        with torch.no_grad():
            shipped = q(z, sem)
            quantized, pix, losses = _sghc_gather_first(q, z, sem)
        same[(k, m)] = bool(
            torch.equal(shipped.ids, pix)
            and torch.equal(shipped.quantized, quantized)
            and all(torch.equal(shipped.losses[n], losses[n]) for n in losses)
        )
        ops[("sghc", k, m)] = torch.no_grad()(lambda q=q, z=z, sem=sem: q(z, sem))
        ops[("sghc-gather-first", k, m)] = torch.no_grad()(
            lambda q=q, z=z, sem=sem: _sghc_gather_first(q, z, sem)
        )
    named = {f"{kind}/K={k}/m={m}": op for (kind, k, m), op in ops.items()}
    times = {name: median(t) for name, t in alternate(named, repeats, ctx.device).items()}
    rows = []
    for kind in ("sghc", "sghc-gather-first"):
        for series, members in (
            ("K", [(k, M_AT_K) for k in K_SERIES]),
            ("m", [(K_AT_M, m) for m in M_SERIES]),
        ):
            base = f"{kind}/K={members[0][0]}/m={members[0][1]}"
            for k, m in members:
                name = f"{kind}/K={k}/m={m}"
                rows.append(
                    Row(
                        case=NAME,
                        name=f"{name} ({series} series)",
                        params={
                            "series": f"{kind} vs {series}",
                            "K": k,
                            "m": m,
                            "d": PIX_DIM,
                            "tokens": tokens,
                            "same_as_shipped": same[(k, m)],
                        },
                        metrics={
                            "ms": times[name] * 1e3,
                            "tokens_per_s": tokens / times[name],
                            "time_vs_base": times[name] / times[base],
                        },
                        reference=None if name == base else f"{base} ({series} series)",
                    )
                )
    return rows


def semantic_rows(ctx: Context, tokens: int, repeats: int) -> list[Row]:
    from semhitok_plugin.semantic_codebook import SemanticCodebook

    ops = {}
    for k in K_SERIES:
        torch.manual_seed(0)
        cb = SemanticCodebook(k, SEM_DIM, kmeans_init=False, dead_code_patience=0)
        cb = cb.to(ctx.device).eval()
        z = torch.randn(tokens, SEM_DIM, device=ctx.device)
        ops[f"semantic/K={k}"] = torch.no_grad()(lambda cb=cb, z=z: cb(z))
    times = {name: median(t) for name, t in alternate(ops, repeats, ctx.device).items()}
    base = f"semantic/K={K_SERIES[0]}"
    rows = []
    for k in K_SERIES:
        name = f"semantic/K={k}"
        flops = 2 * tokens * k * SEM_DIM
        metrics = {
            "ms": times[name] * 1e3,
            "tokens_per_s": tokens / times[name],
            "time_vs_base": times[name] / times[base],
            "gflop_per_s": flops / times[name] / 1e9,
        }
        if ctx.peak_flops > 0:
            metrics["fraction_of_limit"] = flops / times[name] / ctx.peak_flops
        rows.append(
            Row(
                case=NAME,
                name=name,
                params={"series": "semantic vs K", "K": k, "d": SEM_DIM, "tokens": tokens},
                metrics=metrics,
                reference=None if name == base else base,
            )
        )
    return rows


def _tiny_model(image_size: int, device: torch.device):
    from semhitok_plugin import SemHiTok, get_preset

    config = dataclasses.replace(get_preset("tiny"), image_size=image_size)
    torch.manual_seed(0)
    return SemHiTok(config).to(device).eval()


def encode_rows(ctx: Context, repeats: int) -> list[Row]:
    sizes = (64, 128) if ctx.quick else (64, 128, 256, 512)
    batches = (1, 4) if ctx.quick else (1, 4, 16, 64)
    shapes = [(s, 1) for s in sizes] + [(64, b) for b in batches if b != 1]
    ops, tokens = {}, {}
    models = {s: _tiny_model(s, ctx.device) for s in sizes}
    for size, batch in shapes:
        torch.manual_seed(1)
        images = torch.rand(batch, 3, size, size, device=ctx.device) * 2 - 1
        name = f"encode/{size}px/batch={batch}"
        ops[name] = lambda m=models[size], x=images: m.encode(x)
        h, w = models[size].grid_size
        tokens[name] = batch * h * w
    times = {name: median(t) for name, t in alternate(ops, repeats, ctx.device).items()}
    peaks = {name: peak_mib(op, ctx.device) for name, op in ops.items()}
    rows = []
    for series, members in (
        ("resolution", [(s, 1) for s in sizes]),
        ("batch", [(64, b) for b in batches]),
    ):
        base = f"encode/{members[0][0]}px/batch={members[0][1]}"
        for size, batch in members:
            name = f"encode/{size}px/batch={batch}"
            t = times[name]
            rows.append(
                Row(
                    case=NAME,
                    name=f"{name} ({series} series)",
                    params={
                        "series": f"encode vs {series}",
                        "preset": "tiny",
                        "image_size": size,
                        "batch": batch,
                        "tokens": tokens[name],
                    },
                    metrics={
                        "ms": t * 1e3,
                        "images_per_s": batch / t,
                        "tokens_per_s": tokens[name] / t,
                        "time_vs_base": t / times[base],
                        "peak_mib": peaks[name],
                    },
                    reference=None if name == base else f"{base} ({series} series)",
                )
            )
    return rows


def run(ctx: Context) -> list[Row]:
    repeats = max(ctx.repeats, 5) if ctx.quick else max(ctx.repeats, 10)  # each op is ms-short
    quantizer_tokens = 4096 if ctx.quick else 64 * 256
    return (
        sghc_rows(ctx, quantizer_tokens, repeats)
        + semantic_rows(ctx, quantizer_tokens, repeats)
        + encode_rows(ctx, repeats)
    )


def plot(rows: list[Row], directory: Path) -> list[Path]:
    """Time relative to each series' first point: SGHC vs K and vs m (as shipped and gathering
    first), the semantic search vs K, encode vs resolution and vs batch."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    panels = (
        (axes[0], "K", ("sghc vs K", "sghc-gather-first vs K", "semantic vs K"), "K (codes)"),
        (axes[1], "m", ("sghc vs m", "sghc-gather-first vs m"), "m (codes per sub-codebook)"),
        (axes[2], None, ("encode vs resolution", "encode vs batch"), "x / first x"),
    )
    for ax, key, series, xlabel in panels:
        for i, name in enumerate(series):
            sel = [r for r in rows if r.params.get("series") == name]
            if not sel:
                continue
            if key is None:  # encode: resolution or batch, relative to the first point
                field = "image_size" if name.endswith("resolution") else "batch"
                xs = [r.params[field] / sel[0].params[field] for r in sel]
            else:
                xs = [r.params[key] for r in sel]
            ys = [r.metrics["time_vs_base"] for r in sel]
            ax.plot(xs, ys, "-o", color=f"C{i}", label=name)
        yscale = "log" if key == "K" else "linear"  # the semantic search spans 30x
        ax.set(xscale="log", yscale=yscale, xlabel=xlabel, ylabel="time / first point")
        ticks = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("cost vs K (m = 12)")
    axes[1].set_title("SGHC cost vs m (K = 16384)")
    axes[2].set_title("tiny-width encode")
    return [save_figure(fig, directory / "scaling.png")]


__all__ = ["K_SERIES", "M_SERIES", "NAME", "plot", "run"]
