"""``encode`` and ``decode`` images/s, peak memory, achieved FLOP/s, and where the time
goes, per preset and batch size.

Each preset is built with random weights (``teacher.weights = None``: same cost, no download).
For every batch size, one set of random images in [-1, 1] is encoded once to get the ids and the
intermediate tensors, then these ops run alternately (one warm-up call each, ``ctx.repeats`` timed
rounds, medians; ``harness.alternate``):

* ``encode`` (images -> ids) and ``decode`` (ids -> images), the public API;
* their parts, each alone on the same inputs as inside ``encode``: the ``teacher`` (images ->
  features), the ``semantic_quantizer`` (projection MLP + K-code search on those features), the
  ``pixel_encoder`` (images -> pixel features) and ``sghc`` (pixel features + semantic ids ->
  pixel ids); and the ``pixel_decoder`` (quantised features -> patches, inside ``decode``).

Shares are part medians over the ``encode`` (or ``decode``) median; ``share_other`` is what is
left (canvas resize, id merging, usage counters, Python) and is negative when the parts, timed
alone, add up to more than the whole -- ``parts_sum`` reports their plain sum, a consistency check.
``quantization_share`` = (semantic quantiser + SGHC) / encode.

Achieved FLOP/s divides the analytic count (:mod:`.flops`) by the median time. The limit is
measured side by side: a short matmul (:func:`.limit.probe`) runs twice in every round, and
``fraction_of_limit`` divides the achieved FLOP/s by the probe's median rate over the same
rounds (``limit_gflop_per_s``); ``fraction_of_run_limit`` divides by ``ctx.peak_flops``, the
``limit`` case's figure from the start of the run. On a machine shared with other work the two
differ; the side-by-side one is the fair ratio. Peak memory is what one call needs beyond
the resident weights and inputs (``harness.peak_mib``: one extra call of each, after the timing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import PRESETS, Context, Row
from .flops import tokenizer_flops
from .harness import alternate, autocast, inference, median, peak_mib, save_figure
from .limit import probe

NAME = "tokenize"
USES_LIMIT = True

ENCODE_PARTS = ("teacher", "semantic_quantizer", "pixel_encoder", "sghc")
DECODE_PARTS = ("pixel_decoder",)
PROBE = "_matmul"
FLOPS_OF = {  # analytic FLOP parts (flops.tokenizer_flops keys) inside each timed op
    "encode": ("encode",),
    "decode": ("decode",),
    "teacher": ("teacher",),
    "semantic_quantizer": ("semantic_proj", "semantic_search"),
    "pixel_encoder": ("pixel_encoder",),
    "sghc": ("sghc",),
    "pixel_decoder": ("pixel_decoder",),
}


def batch_sizes(ctx: Context) -> tuple[int, ...]:
    if ctx.batches:
        return ctx.batches
    if ctx.quick:
        return (1, 8)
    if ctx.device.type == "cuda":
        return (1, 8, 32, 64, 128)
    return (1, 4, 8)


def build(preset: str, device: torch.device):
    from semhitok_plugin import SemHiTok, get_preset

    config = get_preset(preset)
    config.teacher.weights = None  # random teacher: the same cost, no download
    torch.manual_seed(0)
    return config, SemHiTok(config).eval().to(device)


def ops_for(model, images: torch.Tensor, ctx: Context) -> dict:
    """The timed ops on one batch; parts get the tensors they would see inside encode/decode."""
    with torch.no_grad(), autocast(ctx):
        x = model.to_canvas(images)
        features = model.teacher(x)
        sem = model.semantic_codebook(model.semantic_proj(features))
        pix_z = model.pixel_encoder(x)
        pix = model.pixel_quantizer(pix_z, sem.ids)
        flat_ids = model.encode(images).flat_ids

    return {
        name: inference(ctx, fn)
        for name, fn in {
            "encode": lambda: model.encode(images),
            "decode": lambda: model.decode(flat_ids),
            "teacher": lambda: model.teacher(x),
            "semantic_quantizer": lambda: model.semantic_codebook(model.semantic_proj(features)),
            "pixel_encoder": lambda: model.pixel_encoder(x),
            "sghc": lambda: model.pixel_quantizer(pix_z, sem.ids),
            "pixel_decoder": lambda: model.pixel_decoder(sem.quantized, pix.quantized),
        }.items()
    }


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    dtype = str(ctx.dtype).removeprefix("torch.")
    for preset in ctx.presets_or(PRESETS):
        matmul, matmul_flops = probe(ctx)
        config, model = build(preset, ctx.device)
        flops = tokenizer_flops(config, model)
        size, tokens = config.image_size, config.grid_size[0] * config.grid_size[1]
        for batch in batch_sizes(ctx):
            print(f"tokenize {preset} batch {batch}", file=sys.stderr, flush=True)
            gen = torch.Generator().manual_seed(batch)
            images = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(ctx.device)
            ops = ops_for(model, images, ctx)
            # The matmul probe runs twice a round, before the public ops and before the parts,
            # so the limit is sampled through the rounds. Not before every op: it evicts the
            # caches, which slows the next op measurably when that op takes under a millisecond.
            interleaved = {f"{PROBE}0": matmul}
            for name, op in ops.items():
                if name == ENCODE_PARTS[0]:
                    interleaved[f"{PROBE}1"] = matmul
                interleaved[name] = op
            seconds = alternate(interleaved, ctx.repeats, ctx.device)
            timed = {
                name: {"seconds": seconds[name], "median_s": median(seconds[name])} for name in ops
            }
            probe_s = [t for k, ts in seconds.items() if k.startswith(PROBE) for t in ts]
            timed["limit"] = {
                "flops": matmul_flops / median(probe_s),
                "best": matmul_flops / min(probe_s),
            }
            for op in ("encode", "decode"):
                timed[op]["peak_mib"] = peak_mib(ops[op], ctx.device)
            for op, parts in (("encode", ENCODE_PARTS), ("decode", DECODE_PARTS)):
                rows.append(_row(ctx, preset, batch, op, parts, timed, flops, size, tokens, dtype))
        del model
    return rows


def _row(ctx, preset, batch, op, parts, timed, flops, size, tokens, dtype) -> Row:
    seconds = timed[op]["median_s"]
    op_flops = batch * sum(flops[k] for k in FLOPS_OF[op])
    metrics = {
        "images_per_s": batch / seconds,
        "ms_per_image": 1e3 * seconds / batch,
        "peak_mib": timed[op]["peak_mib"],
        "gflop_per_image": op_flops / batch / 1e9,
        "gflop_per_s": op_flops / seconds / 1e9,
    }
    # Against the matmul rate measured in the same rounds (robust to load that comes and goes);
    # ``fraction_of_run_limit`` against the ``limit`` case's figure from the start of the run.
    limit = timed["limit"]["flops"]
    metrics["limit_gflop_per_s"] = limit / 1e9
    metrics["fraction_of_limit"] = op_flops / seconds / limit
    if ctx.peak_flops:
        metrics["fraction_of_run_limit"] = op_flops / seconds / ctx.peak_flops
    # The fastest round (and fastest probe): the least disturbed by other load on a shared
    # machine. ``spread`` (slowest / fastest round) says how disturbed the run was.
    best = min(timed[op]["seconds"])
    metrics["images_per_s_best"] = batch / best
    metrics["fraction_of_limit_best"] = op_flops / best / timed["limit"]["best"]
    metrics["spread"] = max(timed[op]["seconds"]) / best
    shares = {part: timed[part]["median_s"] / seconds for part in parts}
    for part, share in shares.items():
        metrics[f"share_{part}"] = share
    metrics["share_other"] = 1.0 - sum(shares.values())
    metrics["parts_sum"] = sum(shares.values())
    # The same sum from each op's fastest round: robust to load that hits one op's rounds only.
    metrics["parts_sum_best"] = sum(min(timed[p]["seconds"]) for p in parts) / best
    if op == "encode":
        metrics["quantization_share"] = shares["semantic_quantizer"] + shares["sghc"]
    for part in parts:  # how close each big part alone runs to the limit
        if part in ("teacher", "pixel_encoder", "pixel_decoder"):
            part_flops = batch * sum(flops[k] for k in FLOPS_OF[part])
            metrics[f"fraction_of_limit_{part}"] = part_flops / timed[part]["median_s"] / limit
    params = {
        "preset": preset,
        "op": op,
        "batch": batch,
        "image_size": size,
        "tokens": tokens,
        "device": ctx.device.type,
        "dtype": dtype,
        "repeats": ctx.repeats,
        "seconds_per_round": timed[op]["seconds"],
    }
    return Row(NAME, f"{preset} {op} b{batch}", params, metrics)


# ---------------------------------------------------------------------------- plots


def plot(rows: list[Row], directory: Path) -> list[Path]:
    """images/s vs batch per preset; encode/decode time shares as stacked bars."""
    import matplotlib.pyplot as plt

    written = []
    presets = list(dict.fromkeys(r.params["preset"] for r in rows))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, preset in enumerate(presets):
        for op, style in (("encode", "-o"), ("decode", "--s")):
            sel = sorted(
                (r for r in rows if r.params["preset"] == preset and r.params["op"] == op),
                key=lambda r: r.params["batch"],
            )
            ax.plot(
                [r.params["batch"] for r in sel],
                [r.metrics["images_per_s"] for r in sel],
                style,
                color=f"C{i}",
                label=f"{preset} {op}",
            )
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s")
    batches = sorted({r.params["batch"] for r in rows})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_title("Tokenizer throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    written.append(save_figure(fig, directory / "tokenize_throughput.png"))

    # Shares at each preset's largest batch.
    bars = []
    for preset in presets:
        for op, parts in (("encode", ENCODE_PARTS), ("decode", DECODE_PARTS)):
            sel = [r for r in rows if r.params["preset"] == preset and r.params["op"] == op]
            if sel:
                row = max(sel, key=lambda r: r.params["batch"])
                bars.append((f"{preset}\n{op} b{row.params['batch']}", parts, row))
    labels = [*ENCODE_PARTS, *DECODE_PARTS, "other"]
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(bars)), 4.2))
    bottoms = [0.0] * len(bars)
    for j, part in enumerate(labels):
        heights = [max(row.metrics.get(f"share_{part}", 0.0), 0.0) for _, _, row in bars]
        ax.bar(range(len(bars)), heights, bottom=bottoms, color=f"C{j}", label=part)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for i, (_, _, row) in enumerate(bars):  # parts timed alone may add up to more than 1
        top = max(bottoms[i], 1.0) + 0.01
        ax.text(i, top, f"parts {row.metrics['parts_sum']:.2f}", ha="center", va="bottom")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set(ylabel="share of the op's time")
    ax.set_title("Where encode and decode time goes", pad=16)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    written.append(save_figure(fig, directory / "tokenize_shares.png"))
    return written
