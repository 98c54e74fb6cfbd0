"""Train: step time per image and peak memory of the three training stages, per preset.

Each step is the trainer's own (``semhitok_plugin.training.Trainer.train_step`` without data
loading, EMA or discriminator): ``model(images, stage=...)`` under the trainer's autocast (bf16
on CUDA), backward, gradient clipping at the trainer's default norm, AdamW with the trainer's
default hyper-parameters over ``model.freeze_for(stage)``, ``zero_grad(set_to_none=True)``.
Random weights (``teacher.weights = None``: the cost is the same) and random images in [-1, 1].

Variants, measured side by side on one model per stage (one AdamW per implementation, shared by
the variants that use it, to hold fewer optimizer states), in alternating rounds, median
reported, every ratio against ``plain`` of the same stage:

* ``plain``: as the trainer runs by default (AdamW's default implementation for the device).
* ``checkpointing``: ``gradient_checkpointing = True`` on every module that has the flag (the
  ``TokenTransformer`` stacks), as ``TrainConfig.grad_checkpointing`` sets it.
* ``foreach`` / ``fused``: AdamW(foreach=True) / AdamW(fused=True) (fused runs on CPU too
  since torch 2.4).
* ``compile``: ``torch.compile(model)`` as ``TrainConfig.compile`` wraps it; on CUDA always, on
  CPU only outside quick mode (CPU compilation takes minutes). ``compile_s`` is the first
  call's time less the median compiled step; inductor's on-disk cache makes it far shorter in
  a second run on the same machine (tiny decoder stage on the 2-core CPU: 37 s cold, 3 s warm).
* ``+lpips`` (stages ``pixel`` and ``decoder``): plain plus the trainer's perceptual loss
  (LPIPS-VGG16, random trunk: same cost), which every real stage-2/3 step pays.

Not a variant but a part, timed in the same rounds: ``frozen-inputs`` (stages ``pixel`` and
``decoder``), the forward of everything upstream of the trained modules -- the semantic branch
(teacher, projection, K-code search) in stage 2, the whole encoder (``model.encode``) in stage 3.
Stage 2 never changes a semantic id and stage 3 no id at all, so with fixed crops these outputs
could be computed once per image and cached; ``share_of_step`` (its time over ``plain``'s) is
what such a cache would save. The paper recipes crop at random (a new crop every epoch), where a
cache cannot hit, so the trainer has none; the row says what it would be worth.

On CUDA the ``plain`` row also counts the host<->device synchronisations of one step
(``torch.cuda.set_sync_debug_mode``): the step is meant to queue its work without waiting.

Metrics: ``step_ms``, ``ms_per_image``, ``images_per_s``, ``peak_mib`` (what a step needs beyond
the resident weights and optimizer state: see ``_harness.peak_mib``), ``speedup``
(plain time / variant time) and ``memory_vs_plain``; with the limit case's peak, the achieved
fraction of it from the analytic count (``flops.py``: forward FLOPs, x3 for the parts trained by
gradient, recomputation and LPIPS not counted). ``ctx.extra["train"][preset][stage]`` receives
the plain images/s for the data case.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import Context, Row
from ._harness import alternate, median, peak_mib, save_figure, tensor_mib, timed

NAME = "train"
STAGES = ("semantic", "pixel", "decoder")
PERCEPTUAL = ("pixel", "decoder")  # stages whose real step adds LPIPS
FROZEN_INPUTS = "frozen-inputs"


def batch_size(ctx: Context) -> int:
    if ctx.extra.get("batches"):  # the runner's --batches: the largest one
        return int(max(ctx.extra["batches"]))
    if ctx.quick:
        return 4
    return 32 if ctx.device.type == "cuda" else 8


def build_model(preset: str, device: torch.device) -> nn.Module:
    from semhitok_plugin import SemHiTok, get_preset

    config = get_preset(preset)
    config.teacher.weights = None  # random teacher: same cost, no download
    torch.manual_seed(0)
    model = SemHiTok(config).to(device).train()
    # Stage 1 would run k-means on its first batch: a one-off, not part of a step's cost.
    model.semantic_codebook.initialized.fill_(True)
    return model


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """What ``Trainer.__init__`` does for ``grad_checkpointing``."""
    for module in model.modules():
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = enabled


def step_flops(model: nn.Module, stage: str) -> int:
    """Useful FLOPs of one training step per image: forward of every part the stage runs, x3
    (forward + backward) for the parts it trains by gradient."""
    from .flops import tokenizer_flops

    parts = tokenizer_flops(model.config, model)
    frozen = ["teacher", "semantic_proj", "semantic_search"]
    trained = {
        "semantic": ["semantic_proj", "semantic_decoder"],
        "pixel": ["pixel_encoder", "sghc", "pixel_decoder"],
        "decoder": ["pixel_decoder"],
    }[stage]
    if stage == "semantic":
        frozen = ["teacher", "semantic_search"]
    elif stage == "decoder":
        frozen += ["pixel_encoder", "sghc"]
    return sum(parts[k] for k in frozen) + 3 * sum(parts[k] for k in trained)


@dataclass
class Variant:
    name: str
    optimizer: dict  # extra AdamW keyword arguments
    checkpointing: bool = False
    compile: bool = False
    lpips: bool = False


def variants(ctx: Context, stage: str) -> list[Variant]:
    out = [
        Variant("plain", {}),
        Variant("checkpointing", {}, checkpointing=True),
        Variant("foreach", {"foreach": True}),
        Variant("fused", {"fused": True}),
    ]
    if ctx.device.type == "cuda" or not ctx.quick:
        out.append(Variant("compile", {}, compile=True))
    if stage in PERCEPTUAL:
        out.append(Variant("+lpips", {}, lpips=True))
    chosen = ctx.extra.get("variants")
    return [v for v in out if v.name in chosen] if chosen else out


_LPIPS: dict[str, nn.Module] = {}


def _lpips(device: torch.device) -> nn.Module:
    if str(device) not in _LPIPS:
        from semhitok_plugin.evaluation import load_lpips

        _LPIPS[str(device)] = load_lpips(random=True, device=device)
    return _LPIPS[str(device)]


class TrainStep:
    """One optimizer step of ``stage`` on fixed images, as the trainer takes it."""

    def __init__(
        self, model, net, params, stage, images, variant: Variant, lpips, ctx, opt=None
    ) -> None:
        from semhitok_plugin.training import LossConfig, OptimConfig

        self.model, self.net, self.params, self.stage = model, net, params, stage
        self.images, self.variant, self.lpips = images, variant, lpips
        o = OptimConfig()
        self.clip = o.grad_clip
        self.perceptual_weight = LossConfig().perceptual_weight
        self.opt = opt or torch.optim.AdamW(
            params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **variant.optimizer
        )
        bf16 = ctx.device.type == "cuda" and ctx.dtype == torch.bfloat16
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if bf16
            else contextlib.nullcontext
        )

    def __call__(self) -> None:
        set_checkpointing(self.model, self.variant.checkpointing)
        with self.autocast():
            losses = self.net(self.images, stage=self.stage)
            loss = losses["loss"]
            if self.variant.lpips:
                recon = losses["reconstruction"].float()
                loss = loss + self.perceptual_weight * self.lpips(recon, self.images).mean()
        loss.backward()
        if self.clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class FrozenInputs:
    """The forward upstream of ``stage``'s trained modules: what a per-image cache could replace."""

    def __init__(self, model: nn.Module, stage: str, images: torch.Tensor, autocast) -> None:
        self.model, self.stage, self.images, self.autocast = model, stage, images, autocast

    @torch.no_grad()
    def __call__(self) -> None:
        m = self.model
        with self.autocast():
            if self.stage == "decoder":
                m.encode(self.images)
            else:  # the semantic branch of SemHiTok.forward, through its public submodules
                m.semantic_codebook(m.semantic_proj(m.teacher(self.images)))


def host_syncs(step, device: torch.device) -> int:
    """Synchronisations one call of ``step`` makes (CUDA only; -1 elsewhere)."""
    if device.type != "cuda":
        return -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure_stage(
    ctx: Context, preset: str, stage: str, model: nn.Module, chosen: list[Variant], repeats: int
) -> list[Row]:
    batch = batch_size(ctx)
    size = model.config.image_size
    torch.manual_seed(1)
    images = torch.rand(batch, 3, size, size, device=ctx.device) * 2 - 1
    params = model.freeze_for(stage)
    lpips = _lpips(ctx.device) if any(v.lpips for v in chosen) else None
    compiled = None
    steps: dict[str, TrainStep] = {}
    compile_s: dict[str, float] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}  # one per implementation: less memory
    for v in chosen:
        net = model
        if v.compile:
            if compiled is None:
                compiled = torch.compile(model)
            net = compiled
        key = repr(sorted(v.optimizer.items()))
        steps[v.name] = TrainStep(
            model, net, params, stage, images, v, lpips, ctx, opt=optimizers.get(key)
        )
        optimizers[key] = steps[v.name].opt
        if v.compile:
            try:
                compile_s[v.name] = timed(steps[v.name], ctx.device)  # compilation + one step
            except Exception as err:  # no compiler toolchain, unsupported op: report and go on
                print(f"train: {preset}/{stage}: torch.compile failed: {err}", file=sys.stderr)
                del steps[v.name]
    ops: dict = dict(steps)
    if stage in PERCEPTUAL:
        ops[FROZEN_INPUTS] = FrozenInputs(model, stage, images, steps["plain"].autocast)
    times = alternate(ops, repeats, ctx.device)
    peaks = {name: peak_mib(step, ctx.device) for name, step in steps.items()}
    syncs = host_syncs(steps["plain"], ctx.device)
    set_checkpointing(model, False)
    try:
        flops = step_flops(model, stage)
    except (ImportError, NotImplementedError):
        flops = 0

    plain_s, plain_mib = median(times["plain"]), peaks["plain"]
    where = {"preset": preset, "stage": stage, "batch": batch, "image_size": size}
    where["device"] = str(ctx.device)
    rows = []
    for name, step in steps.items():
        step_s = median(times[name])
        metrics = {
            "step_ms": step_s * 1e3,
            "ms_per_image": step_s * 1e3 / batch,
            "images_per_s": batch / step_s,
            "peak_mib": peaks[name],
            "state_mib": tensor_mib(
                list(params) + [t for s in step.opt.state.values() for t in s.values() if t.dim()]
            ),
        }
        if flops and not step.variant.lpips:
            metrics["gflop_per_s"] = flops * batch / step_s / 1e9
            if ctx.peak_flops > 0:
                metrics["fraction_of_limit"] = flops * batch / step_s / ctx.peak_flops
        if name in compile_s:
            metrics["compile_s"] = max(compile_s[name] - step_s, 0.0)
        if name == "plain" and syncs >= 0:
            metrics["host_syncs"] = syncs
        if name != "plain":
            metrics["speedup"] = plain_s / step_s
            metrics["memory_vs_plain"] = peaks[name] / plain_mib if plain_mib > 0 else float("nan")
        rows.append(
            Row(
                case=NAME,
                name=f"{preset}/{stage}/{name}",
                params=where
                | {
                    "variant": name,
                    "trainable_params_m": sum(p.numel() for p in params) / 1e6,
                    "repeats": len(times[name]),
                },
                metrics=metrics,
                reference=None if name == "plain" else f"{preset}/{stage}/plain",
            )
        )
    if FROZEN_INPUTS in times:
        part_s = median(times[FROZEN_INPUTS])
        rows.append(
            Row(
                case=NAME,
                name=f"{preset}/{stage}/{FROZEN_INPUTS}",
                params=where | {"variant": FROZEN_INPUTS, "repeats": len(times[FROZEN_INPUTS])},
                metrics={"ms_per_image": part_s * 1e3 / batch, "share_of_step": part_s / plain_s},
                reference=f"{preset}/{stage}/plain",
            )
        )
    summary = {"images_per_s": batch / plain_s, "batch": batch}
    if "+lpips" in times:
        summary["images_per_s_lpips"] = batch / median(times["+lpips"])
    ctx.extra.setdefault("train", {}).setdefault(preset, {})[stage] = summary
    return rows


def run(ctx: Context) -> list[Row]:
    repeats = 2 if ctx.quick else ctx.repeats
    rows = []
    for preset in ctx.presets:
        start = time.perf_counter()
        model = build_model(preset, ctx.device)
        for stage in STAGES:
            rows += measure_stage(ctx, preset, stage, model, variants(ctx, stage), repeats)
        print(f"train: {preset} done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        del model
    return rows


def plot(rows: list[Row], directory: Path) -> list[Path]:
    """ms per image of every variant, grouped by stage, one panel per preset."""
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r.params["preset"] for r in rows))
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 3.8), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        sel = [r for r in rows if r.params["preset"] == preset]
        names = list(dict.fromkeys(r.params["variant"] for r in sel))
        width = 0.8 / len(names)
        for i, variant in enumerate(names):
            xs, ys = [], []
            for j, stage in enumerate(STAGES):
                row = next((r for r in sel if r.name == f"{preset}/{stage}/{variant}"), None)
                if row:
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    ys.append(row.metrics["ms_per_image"])
            ax.bar(xs, ys, width, label=variant, color=f"C{i}")
        ax.set_xticks(range(len(STAGES)), STAGES)
        ax.set(yscale="log", ylabel="ms per image (step)", title=f"{preset}: training step")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return [save_figure(fig, directory / "train_steps.png")]


__all__ = ["NAME", "STAGES", "TrainStep", "batch_size", "build_model", "plot", "run", "step_flops"]
