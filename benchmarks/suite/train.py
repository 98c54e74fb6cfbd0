"""``Trainer.train_step`` time per image and peak memory, per preset and stage.

Every variant is a real ``semhitok_plugin.training.Trainer``, built from a ``TrainConfig`` and
stepped on one fixed batch of random images in [-1, 1]: ``train_step([{"images": ...}])``, then
the previous step's flags read, as the training loop does. So a step is exactly the trainer's:
forward under its autocast (bf16 on CUDA), losses, backward, gradient clipping, the on-device
non-finite check, the optimizer. Weights are random (a preset with ``teacher.weights = None``,
saved once as the ``init`` of stages 2 and 3; the semantic codebook marked initialised, since
stage 1's k-means is a one-off); the data stream the trainer opens is given one placeholder image
and never read.

Variants (``TrainConfig`` overrides on top of ``BASE``, each its own Trainer), timed in alternating
rounds, median, every ratio against ``plain`` of the same stage:

* ``plain``: the trainer's defaults (fused AdamW, no EMA, discriminator not yet on), without the
  perceptual loss, so that its FLOPs are the tokenizer's alone.
* ``checkpointing``: ``grad_checkpointing=True``.
* ``unfused``: ``optim.fused=False`` (AdamW's default implementation; skipping a non-finite step
  then reads the flag on the host).
* ``compile``: ``compile=True``; on CUDA always, on CPU outside quick mode (CPU compilation takes
  minutes). ``compile_s`` is the first step's time less the median step; inductor's on-disk
  cache makes it far shorter in a second run on the same machine.
* ``+lpips`` (stages ``pixel`` and ``decoder``): ``losses.perceptual_weight=1`` (LPIPS-VGG16,
  random trunk: same cost), which every real stage-2/3 step pays.

Not a variant but a part, timed in the same rounds: ``frozen-inputs`` (stages ``pixel`` and
``decoder``), the forward of everything upstream of the trained modules -- the semantic branch
(teacher, projection, K-code search) in stage 2, the whole encoder (``model.encode``) in stage 3.
Stage 2 never changes a semantic id and stage 3 no id at all, so with fixed crops these outputs
could be computed once per image and cached; ``share_of_step`` (its time over ``plain``'s) is
what such a cache would save. The paper recipes crop at random, where a cache cannot hit.

On CUDA every variant also counts the host<->device synchronisations of one ``train_step``
(``host_syncs``): the step is meant to queue its work without waiting.

Metrics: ``step_ms``, ``ms_per_image``, ``images_per_s``, ``peak_mib`` (what a step needs beyond
the resident weights and optimizer state: ``harness.peak_mib``), ``state_mib``, ``speedup``
(plain time / variant time) and ``memory_vs_plain``; with the limit case's peak, the achieved
fraction of it from the analytic count (``flops.py``: forward FLOPs, x3 for the parts trained by
gradient, recomputation and LPIPS not counted). ``ctx.extra["train"][preset][stage]`` receives
the plain images/s for the data case. The Trainer runs on CUDA whenever torch sees a GPU, so on
such a machine the case runs with ``--device cuda`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import PRESETS, Context, Row, Skip
from .harness import (
    alternate,
    autocast,
    host_syncs,
    median,
    peak_mib,
    save_figure,
    tensor_mib,
    timed,
)

if TYPE_CHECKING:
    from semhitok_plugin.training import TrainConfig, Trainer

NAME = "train"
USES_LIMIT = True
STAGES = ("semantic", "pixel", "decoder")
PERCEPTUAL = ("pixel", "decoder")  # stages whose real step adds LPIPS
FROZEN_INPUTS = "frozen-inputs"
# TrainConfig overrides (dotted keys): BASE for every variant, then the variant's own.
BASE: dict[str, Any] = {"losses.perceptual_weight": 0.0, "losses.random_lpips": True}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "checkpointing": {"grad_checkpointing": True},
    "unfused": {"optim.fused": False},
    "compile": {"compile": True},
    "+lpips": {"losses.perceptual_weight": 1.0},
}


def _names_of(known: tuple[str, ...]):
    """An argparse type: comma-separated names, each one of ``known``."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; known: {', '.join(known)}")
        return names

    return parse


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--stages",
        type=_names_of(STAGES),
        default=STAGES,
        help=f"comma-separated (default {','.join(STAGES)})",
    )
    group.add_argument(
        "--variants",
        type=_names_of(tuple(VARIANTS)),
        help=f"only these of {','.join(VARIANTS)} (plain is always measured, as every ratio's "
        "reference)",
    )


def batch_size(ctx: Context) -> int:
    if ctx.batches:  # the runner's --batches: the largest one
        return max(ctx.batches)
    if ctx.quick:
        return 4
    return 32 if ctx.device.type == "cuda" else 8


def variants(ctx: Context, stage: str) -> list[str]:
    out = ["plain", "checkpointing", "unfused"]
    if ctx.device.type == "cuda" or not ctx.quick:
        out.append("compile")
    if stage in PERCEPTUAL:
        out.append("+lpips")
    chosen = ctx.options.get("variants")
    return [v for v in out if v == "plain" or v in chosen] if chosen else out


def build_model(preset: str) -> nn.Module:
    """A random ``preset`` tokenizer on the CPU, its semantic codebook marked initialised."""
    from semhitok_plugin import SemHiTok, get_preset

    config = get_preset(preset)
    config.teacher.weights = None  # random teacher: same cost, no download
    torch.manual_seed(0)
    model = SemHiTok(config)
    model.semantic_codebook.initialized.fill_(True)
    return model


@contextlib.contextmanager
def workspace(preset: str) -> Iterator[Path]:
    """A temporary folder with what a Trainer needs besides its config: ``init`` (the random
    ``preset`` checkpoint) and ``data`` (one placeholder image for the stream it opens)."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="semhitok-bench-train-") as tmp:
        root = Path(tmp)
        build_model(preset).save_pretrained(root / "init")
        (root / "data").mkdir()
        Image.new("RGB", (8, 8)).save(root / "data" / "placeholder.png")
        yield root


def trainer_config(
    ctx: Context, work: Path, preset: str, stage: str, variant: str, batch: int
) -> TrainConfig:
    """The ``TrainConfig`` of one variant: the trainer's defaults, ``BASE`` and its overrides."""
    from semhitok_plugin import get_preset
    from semhitok_plugin.training import TrainConfig

    config: dict[str, Any] = {
        "stage": stage,
        "model": preset,
        "output_dir": str(work / "run"),
        "data": {"source": str(work / "data"), "image_size": get_preset(preset).image_size},
        "batch_size": batch,
        "precision": "bf16" if ctx.dtype == torch.bfloat16 else "fp32",
    }
    if stage == "semantic":
        config["model_overrides"] = {"teacher": {"weights": None}}
    else:
        config["init"] = str(work / "init")
    for key, value in (BASE | VARIANTS[variant]).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TrainConfig.load_dict(config)


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


class Step:
    """One ``Trainer.train_step`` on a fixed batch, then the previous step's flags read (what
    the training loop does after each step); ``skipped`` counts non-finite steps."""

    def __init__(self, trainer: Trainer, images: torch.Tensor) -> None:
        self.trainer, self.batches, self.skipped = trainer, [{"images": images}], 0

    def train_step(self) -> None:
        self.trainer.train_step(self.batches)

    def __call__(self) -> None:
        self.train_step()
        self.skipped += sum(1 for _, flagged in self.trainer.flags.pop(keep=1) if flagged)


class FrozenInputs:
    """The forward upstream of ``stage``'s trained modules: what a per-image cache could replace."""

    def __init__(self, model: nn.Module, stage: str, images: torch.Tensor, ctx: Context) -> None:
        self.model, self.stage, self.images, self.ctx = model, stage, images, ctx

    @torch.no_grad()
    def __call__(self) -> None:
        m = self.model
        with autocast(self.ctx):
            if self.stage == "decoder":
                m.encode(self.images)
            else:  # the semantic branch of SemHiTok.forward, through its public submodules
                m.semantic_codebook(m.semantic_proj(m.teacher(self.images)))


def measure_stage(
    ctx: Context, work: Path, preset: str, stage: str, chosen: list[str], repeats: int
) -> list[Row]:
    """Rows of ``chosen`` variants (``plain`` first) of one stage, from a ``workspace``."""
    from semhitok_plugin.training import Trainer

    batch = batch_size(ctx)
    steps: dict[str, Step] = {}
    first_s: dict[str, float] = {}
    for name in chosen:
        trainer = Trainer(trainer_config(ctx, work, preset, stage, name, batch))
        if trainer.device.type != ctx.device.type:
            raise Skip(f"the trainer runs on {trainer.device} here; use --device cuda")
        trainer.model.semantic_codebook.initialized.fill_(True)  # stage 1: no k-means
        if not steps:
            size = trainer.model.config.image_size
            gen = torch.Generator().manual_seed(1)
            images = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(ctx.device)
        steps[name] = Step(trainer, images)
        try:
            first_s[name] = timed(steps[name], ctx.device)  # compilation + one step for compile
        except Exception as err:  # no compiler toolchain, unsupported op: report and go on
            if name != "compile":
                raise
            print(f"train: {preset}/{stage}: torch.compile failed: {err}", file=sys.stderr)
            del steps[name]
    plain = steps["plain"].trainer
    ops: dict = dict(steps)
    if stage in PERCEPTUAL:
        ops[FROZEN_INPUTS] = FrozenInputs(plain.model, stage, images, ctx)
    times = alternate(ops, repeats, ctx.device)
    peaks = {name: peak_mib(step, ctx.device) for name, step in steps.items()}
    syncs = {name: host_syncs(step.train_step, ctx.device) for name, step in steps.items()}
    try:
        flops = step_flops(plain.model, stage)
    except (ImportError, NotImplementedError):
        flops = 0

    plain_s, plain_mib = median(times["plain"]), peaks["plain"]
    where = {"preset": preset, "stage": stage, "batch": batch, "image_size": images.shape[-1]}
    where["device"] = str(ctx.device)
    rows = []
    for name, step in steps.items():
        step_s = median(times[name])
        opt_state = [t for s in step.trainer.opt.state.values() for t in s.values() if t.dim()]
        metrics = {
            "step_ms": step_s * 1e3,
            "ms_per_image": step_s * 1e3 / batch,
            "images_per_s": batch / step_s,
            "peak_mib": peaks[name],
            "state_mib": tensor_mib(list(step.trainer.params) + opt_state),
        }
        if flops and name != "+lpips":
            metrics["gflop_per_s"] = flops * batch / step_s / 1e9
            if ctx.peak_flops > 0:
                metrics["fraction_of_limit"] = flops * batch / step_s / ctx.peak_flops
        if name == "compile":
            metrics["compile_s"] = max(first_s[name] - step_s, 0.0)
        if syncs[name] >= 0:
            metrics["host_syncs"] = float(syncs[name])
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
                    "overrides": BASE | VARIANTS[name],
                    "trainable_params_m": sum(p.numel() for p in step.trainer.params) / 1e6,
                    "repeats": len(times[name]),
                    "skipped_steps": step.skipped,
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
    stages = ctx.options.get("stages", STAGES)
    rows = []
    for preset in ctx.presets_or(PRESETS):
        start = time.perf_counter()
        with workspace(preset) as work:
            for stage in stages:
                rows += measure_stage(ctx, work, preset, stage, variants(ctx, stage), repeats)
        print(f"train: {preset} done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
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


__all__ = [
    "NAME",
    "STAGES",
    "VARIANTS",
    "add_arguments",
    "batch_size",
    "build_model",
    "measure_stage",
    "plot",
    "run",
    "step_flops",
    "workspace",
]
