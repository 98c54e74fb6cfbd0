"""One trainer for the three stages of the paper's recipe (§3.1-3.2, Table 3).

* ``semantic`` (stage 1): semantic projection + decoder by gradient, the codebook by EMA; the
  teacher is frozen. Loss: cosine distillation + commitment.
* ``pixel`` (stage 2, "PRE"): pixel encoder, SGHC sub-codebooks and pixel decoder; everything
  semantic is frozen and taken from the stage-1 checkpoint. Loss: reconstruction + codebook +
  commitment + LPIPS + PatchGAN hinge (from ``losses.disc_start``, optionally adaptive).
  The discriminator and its optimizer state are exported next to the tokenizer
  (``final/discriminator.pt``); a later stage whose ``init`` has them continues from them, as
  LlamaGen's ``--finetune`` does, and one whose ``init`` has none delays the GAN to
  ``losses.fresh_disc_start`` (a fresh PatchGAN against a trained generator first has to learn
  what real images look like; from step 0 it only injects noise into the generator).
* ``decoder`` (stage 3, "enhance decoder"): only the (usually larger) pixel decoder trains;
  everything else comes from the stage-2 checkpoint.

The same code runs on one CPU and under ``torchrun`` on many GPU nodes (DDP; bf16 autocast on
CUDA; gradient accumulation; an EMA of the trainable weights; optional ``torch.compile`` and
gradient checkpointing). A run writes ``metrics.jsonl``, picture grids, atomic checkpoints
(``--resume`` continues bit-for-bit) and exports the tokenizer with ``save_pretrained``.

Faults, without a host-device sync in the step:

* A step whose loss, any loss term or gradient norm is NaN/inf is skipped on the device: fused
  AdamW's ``found_inf`` (as GradScaler uses it) leaves weights, moments and step counts as they
  were, the EMA moves by zero, the discriminator skips too, and the quantizers' buffers (the
  EMA codebook updated in the forward, usage counts) are put back. Flags are read one step late;
  each skipped step gets a WARNING and a ``bad_step`` record in ``metrics.jsonl`` and still
  counts toward ``max_steps``. ``max_bad_steps`` in a row raise :class:`TrainingDiverged` one
  step later at most, before any further checkpoint is written.
* SIGTERM (preemption) stops the loop at most two steps later (the flag travels, all-reduced,
  with those flags, so every rank stops at the same step), writes a checkpoint and exits with
  status 0 (:class:`TrainingPreempted`); ``--resume`` continues from it.
* A checkpoint write that fails stops the run with ``CheckpointWriteError`` naming the file; the
  previous checkpoint stays loadable. Training on without checkpoints would risk hours of work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .checkpoint import (
    latest_checkpoint,
    latest_checkpoint_or_none,
    load_checkpoint,
    load_discriminator,
    rng_state,
    save_checkpoint,
    save_discriminator,
    set_rng_state,
    truncate_metrics,
)
from .config import (
    Bounds,
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    OneOf,
    PositiveFloat,
    PositiveInt,
    SemHiTokConfig,
    check_fields,
    from_plain,
)
from .data import DataConfig, ImageStream, eval_batches
from .discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from .images import to_pil
from .model import STAGES, SemHiTok, StageOutput, resolve_config
from .visualize import grid, token_map
from .weight_ema import WeightEMA

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
UnitInterval = Annotated[float, Bounds(ge=0, lt=1)]  # decays and Adam's betas
log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """``max_bad_steps`` consecutive steps had a non-finite loss or gradient norm."""


class TrainingPreempted(SystemExit):
    """SIGTERM stopped the run after writing a checkpoint. A ``SystemExit`` with status 0, so
    ``semhitok train`` exits 0 and a scheduler requeues the job (which passes ``--resume``)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(0)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class OptimConfig:
    lr: PositiveFloat = 1e-4
    betas: tuple[UnitInterval, UnitInterval] = (0.9, 0.95)
    weight_decay: NonNegativeFloat = 0.05
    warmup_steps: NonNegativeInt = 0
    schedule: Annotated[str, OneOf(("cosine", "constant"))] = "cosine"
    min_lr_ratio: Annotated[float, Bounds(ge=0, le=1)] = 0.1
    grad_clip: NonNegativeFloat = 1.0  # 0 disables
    # one fused AdamW kernel per step (CPU and CUDA): 1.07-1.20x the training step rate of the
    # default AdamW at the tiny preset on the 2-core CPU (python -m benchmarks train, the
    # ``unfused`` row; benchmarks/results/suite_cpu_train_tiny.json); foreach was 1.03-1.08x
    fused: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class LossConfig:
    perceptual_weight: NonNegativeFloat = 1.0
    adversarial_weight: NonNegativeFloat = 0.5
    disc_start: NonNegativeInt = 20_000  # the discriminator joins after this many steps
    # When ``init`` carries no trained discriminator, the GAN joins at max(disc_start, this)
    # instead. None: disc_start. 20,000 is LlamaGen's --disc-start for a fresh PatchGAN.
    fresh_disc_start: NonNegativeInt | None = None
    adaptive_weight: bool = False  # VQGAN's gradient-norm balance (LlamaGen leaves it off)
    disc_lr: PositiveFloat | None = None  # None: the generator's lr
    disc_channels: PositiveInt = 64
    lpips_weights: str | None = None  # VGG16 weights file; None: torch hub cache
    random_lpips: bool = False  # smoke tests only: random VGG backbone

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class TrainConfig:
    stage: Annotated[str, OneOf(STAGES)]
    data: DataConfig
    output_dir: str
    model: str = "siglip-l16-256"  # stage 1: a preset or config (resolve_config); else unused
    init: str | None = None  # stages 2-3: save_pretrained dir of the previous stage
    # Decoder stage: "inherit" starts the new decoder from every tensor of init's decoder whose
    # name and shape fit (all of it when only depth grows; nothing when the width changes, as
    # ViT-B -> ViT-L), "random" from none (docs/ablation.md compares the two).
    decoder_init: Annotated[str, OneOf(("inherit", "random"))] = "inherit"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    teacher_weights: str | None = None
    eval_data: DataConfig | None = None
    batch_size: PositiveInt = 256  # global, across ranks and accumulation steps
    grad_accum: PositiveInt = 1
    max_steps: PositiveInt = 10_000
    optim: OptimConfig = field(default_factory=OptimConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    precision: Annotated[str, OneOf(("bf16", "fp32"))] = "bf16"  # CPU runs compute in fp32
    compile: bool = False
    grad_checkpointing: bool = False
    ema_decay: UnitInterval = 0.0  # EMA of trainable weights, exported when > 0
    seed: NonNegativeInt = 0
    log_every: PositiveInt = 10
    image_every: PositiveInt = 1000
    checkpoint_every: PositiveInt = 1000
    keep_checkpoints: PositiveInt = 2
    preview_images: PositiveInt = 8
    # Steps with a NaN/inf loss or gradient norm are skipped (no update at all); this many in a
    # row stop the run (TrainingDiverged). 5: a rare bad batch or bf16 overflow passes, while a
    # diverged run stops within a few steps instead of burning its allocation.
    max_bad_steps: Annotated[int, Bounds(ge=1)] = 5

    def __post_init__(self) -> None:
        check_fields(self)
        if self.stage != "semantic" and not self.init:
            raise ConfigError(f"stage {self.stage!r} needs init: the previous stage's checkpoint")

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> TrainConfig:
        """A YAML file, or a shipped config by name (``siglip-l16-256/stage1``), with
        ``key.sub=value`` overrides (values parsed as YAML)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            shipped = SHIPPED_CONFIGS / f"{path}.yaml"
            if not shipped.is_file():
                known = sorted(
                    str(p.relative_to(SHIPPED_CONFIGS))[:-5]
                    for p in SHIPPED_CONFIGS.glob("*/*.yaml")
                )
                raise ConfigError(
                    f"no config file {str(path)!r}; shipped configs: {', '.join(known)}"
                )
            path = shipped
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} is not key=value")
            *parents, leaf = key.split(".")
            node = data
            for depth, part in enumerate(parents, 1):
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    where = ".".join(parents[:depth])
                    raise ConfigError(f"override {item!r}: {where} is a value, not a section")
            node[leaf] = yaml.safe_load(value)
        return cls.load_dict(data, str(path))

    @classmethod
    def load_dict(cls, data: dict[str, Any], where: str = "train config") -> TrainConfig:
        return from_plain(cls, data, where)


# -- the model of a stage ------------------------------------------------------------------------
def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merge(base[key], value) if nested else value
    return out


def _frozen_settings(config: SemHiTokConfig, stage: str) -> dict[str, Any]:
    """The parts of a config that a stage takes from its init checkpoint and must not change."""
    frozen = config.to_dict()
    pixel = frozen.pop("pixel")
    if stage == "decoder":
        frozen["pixel"] = {k: v for k, v in pixel.items() if k not in ("decoder", "recon_loss")}
    return frozen


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        ]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def build_stage_model(cfg: TrainConfig) -> SemHiTok:
    """The model a stage starts from; later stages refuse to change what they freeze."""
    if cfg.stage == "semantic":
        base, _ = resolve_config(cfg.model)
        config = SemHiTokConfig.from_dict(_merge(base.to_dict(), cfg.model_overrides))
        if cfg.teacher_weights:
            config.teacher.weights = cfg.teacher_weights
        return SemHiTok(config)
    base = SemHiTok.from_pretrained(cfg.init)
    config = SemHiTokConfig.from_dict(_merge(base.config.to_dict(), cfg.model_overrides))
    changed = _diff(_frozen_settings(base.config, cfg.stage), _frozen_settings(config, cfg.stage))
    if changed:
        raise ConfigError(
            f"stage {cfg.stage!r} would change settings frozen by {cfg.init}: {'; '.join(changed)}."
            " Frozen parts come from the previous stage; retrain that stage to change them."
        )
    if not bool(base.semantic_codebook.initialized):
        raise ConfigError(f"{cfg.init} has an untrained semantic codebook: run stage 1 first")
    if config == base.config:
        return base
    model = SemHiTok(config, load_teacher_weights=False)
    state = model.state_dict()
    trainable = tuple(f"{name}." for name in model.stage_module_names(cfg.stage))
    fresh = "pixel_decoder." if cfg.stage == "decoder" and cfg.decoder_init == "random" else None
    for key, value in base.state_dict().items():
        if fresh and key.startswith(fresh):
            continue
        if key in state and state[key].shape == value.shape:
            state[key] = value
        elif not key.startswith(trainable):
            raise ConfigError(f"frozen weight {key} does not fit the new architecture")
    model.load_state_dict(state)
    return model


# -- the trainer ---------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world, self.device = _setup_distributed()
        self.out = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        self.model = build_stage_model(cfg).to(self.device).train()
        self.params = self.model.freeze_for(cfg.stage)
        self.frozen_digest = self._frozen_digest()
        for module in self.model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = cfg.grad_checkpointing
        self.net = self._wrap(self.model)
        self.opt = self._optimizer(self.model, self.params, cfg.optim.lr)
        self.ema = WeightEMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.disc = self.disc_module = self.disc_opt = self.lpips = None
        self.disc_start, self.disc_carried = cfg.losses.disc_start, False
        if cfg.stage != "semantic":
            self._build_pixel_losses()
        per_rank, rest = divmod(cfg.batch_size, self.world * cfg.grad_accum)
        if rest or not per_rank:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is not divisible by ranks ({self.world}) x "
                f"grad_accum ({cfg.grad_accum})"
            )
        self.stream = ImageStream(
            cfg.data, per_rank, seed=cfg.seed, rank=self.rank, world_size=self.world
        )
        self.step = 0
        # What the forward updates (EMA codebook, init and restarts of codes, their counters,
        # usage counts): restored after a skipped step.
        quantizers = (self.model.semantic_codebook, self.model.pixel_quantizer)
        self.forward_buffers = [t for q in quantizers for t in (*q.buffers(), *q.parameters())]
        self.flags = _StepFlags()
        self.skipped_steps = self.bad_streak = 0
        self.stop_requested = self.stopping = False
        torch.manual_seed(cfg.seed + 1000 * self.rank)

    # -- construction helpers
    def _wrap(self, model: nn.Module) -> nn.Module:
        net = torch.compile(model) if self.cfg.compile else model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers are kept in sync by the quantizers themselves (all-reduced EMA statistics).
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
        return net

    def _optimizer(self, module: nn.Module, params: list[nn.Parameter], lr: float):
        """AdamW with weight decay on weight matrices only: decay pulls every codebook entry,
        used or not, towards the origin (an unused normalised code shrinks until its direction
        is noise) and gives embeddings, biases and norm gains a prior they should not have."""
        o = self.cfg.optim
        fused = o.fused and all(p.device.type in ("cpu", "cuda") for p in params)
        wanted = {id(p) for p in params}
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if id(p) in wanted:
                (no_decay if exempt_from_decay(name, p) else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=lr, betas=o.betas, fused=fused or None
        )

    def _build_pixel_losses(self) -> None:
        losses = self.cfg.losses
        if losses.perceptual_weight > 0:
            from .evaluation import load_lpips

            self.lpips = load_lpips(losses.lpips_weights, random=losses.random_lpips).to(
                self.device
            )
        if losses.adversarial_weight > 0:
            self.disc_module = PatchDiscriminator(losses.disc_channels).to(self.device)
            self.disc = self._wrap(self.disc_module)
            self.disc_opt = self._optimizer(
                self.disc, list(self.disc.parameters()), losses.disc_lr or self.cfg.optim.lr
            )
            carried = load_discriminator(self.cfg.init) if self.cfg.init else None
            if carried is not None:
                self._carry_discriminator(carried)
            elif losses.fresh_disc_start is not None:
                self.disc_start = max(self.disc_start, losses.fresh_disc_start)

    def _carry_discriminator(self, state: dict[str, Any]) -> None:
        """Weights and Adam moments from ``init``; lr and weight decay stay this stage's."""
        if state["disc_channels"] != self.cfg.losses.disc_channels:
            raise ConfigError(
                f"{self.cfg.init} carries a discriminator with disc_channels="
                f"{state['disc_channels']}, this stage asks for {self.cfg.losses.disc_channels}"
            )
        self.disc_module.load_state_dict(state["disc"])
        configured = [dict(g) for g in self.disc_opt.param_groups]
        self.disc_opt.load_state_dict(state["disc_optimizer"])
        for group, mine in zip(self.disc_opt.param_groups, configured, strict=True):
            group["lr"], group["weight_decay"] = mine["lr"], mine["weight_decay"]
        self.disc_carried = True

    def _frozen_digest(self) -> float:
        trainable = {id(p) for p in self.params}
        frozen = [p for p in self.model.parameters() if id(p) not in trainable]
        return float(sum(p.detach().double().sum() for p in frozen))

    # -- schedule and precision
    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return o.lr
        progress = (step - o.warmup_steps) / max(1, self.cfg.max_steps - o.warmup_steps)
        return o.lr * (
            o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.cfg.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # -- one optimisation step
    def train_step(self, batches: list[dict]) -> dict[str, torch.Tensor]:
        """One optimizer step, skipped on the device when anything is non-finite; losses stay
        on the device (read back only when logged, flags one step late)."""
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        disc_on = self.disc is not None and self.step >= self.disc_start
        codebook = self.model.semantic_codebook
        first_update = codebook.init_pending
        before = [b.detach().clone() for b in self.forward_buffers]
        totals, norms = self._backward(batches, disc_on)
        names, flags = self._flags(totals | norms)
        bad = flags[:-1].any()
        self._step(self.opt, bad)
        if disc_on:
            self._step(self.disc_opt, bad)
        with torch.no_grad():
            for buffer, old in zip(self.forward_buffers, before, strict=True):
                buffer.copy_(torch.where(bad, old, buffer))
        if first_update:  # a skipped first step also undid the k-means init: check it again
            codebook.reset_init_check()
        if self.ema:
            self.ema.update(bad.logical_not().float())
        self.step += 1
        self.flags.push(self.step, names, flags)
        return totals

    def _backward(self, batches: list[dict], disc_on: bool) -> tuple[dict, dict]:
        """Gradients of the generator (and discriminator): losses and clipped gradient norms."""
        totals: dict[str, torch.Tensor] = {}
        fakes, reals = [], []
        for i, batch in enumerate(batches):
            images = batch["images"].to(self.device, non_blocking=True)
            sync = i == len(batches) - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.net.no_sync(), self._autocast():
                out = self._generator_losses(images, disc_on)
                (out.loss / len(batches)).backward()
            for key, value in out.scalars().items():
                totals[key] = totals.get(key, 0) + value.detach() / len(batches)
            if disc_on:
                reals.append(images)
                fakes.append(out.reconstruction.detach())
        norms = {"grad_norm": self._grad_norm(self.params)}
        if disc_on:
            totals["disc"] = self._discriminator_backward(reals, fakes)
            norms["disc_grad_norm"] = self._grad_norm(list(self.disc.parameters()))
        return totals, norms

    def _generator_losses(self, images: torch.Tensor, disc_on: bool) -> StageOutput:
        out = self.net(images, stage=self.cfg.stage)
        if self.cfg.stage == "semantic":
            return out
        recon, weights = out.reconstruction, self.cfg.losses
        if self.lpips is not None:
            perceptual = self.lpips(recon.float(), images).mean()
            out = out.with_term("perceptual", weights.perceptual_weight * perceptual)
        if disc_on:
            g_loss = hinge_g_loss(self.disc(recon))
            scale = weights.adversarial_weight
            if weights.adaptive_weight:
                nll = out.terms["recon"] + out.terms.get("perceptual", 0)
                last = self.model.pixel_decoder.transformer.proj_out.weight
                scale = scale * adaptive_weight(nll, g_loss, last)
            out = out.with_term("adversarial", scale * g_loss)
        return out

    def _discriminator_backward(self, reals: list, fakes: list) -> torch.Tensor:
        self.disc_opt.zero_grad(set_to_none=True)  # drop what the generator's loss left here
        total = 0.0
        for i, (real, fake) in enumerate(zip(reals, fakes, strict=True)):
            sync = i == len(reals) - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.disc.no_sync(), self._autocast():
                loss = hinge_d_loss(self.disc(real), self.disc(fake)) / len(reals)
                loss.backward()
            total = total + loss.detach()
        return total

    def _grad_norm(self, params: list[nn.Parameter]) -> torch.Tensor:
        norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(params, self.cfg.optim.grad_clip, norm)
        return norm

    def _flags(self, values: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
        """A non-finite flag per loss and gradient norm, then the SIGTERM flag; summed over
        ranks on the device, so every rank skips (and stops at) the same steps."""
        stop = torch.full((), float(self.stop_requested), device=self.device)
        flags = torch.stack([v.detach().isfinite().logical_not().float() for v in values.values()])
        flags = torch.cat([flags, stop[None]])
        if self.world > 1:
            dist.all_reduce(flags)
        return [*values, "sigterm"], flags > 0

    @staticmethod
    def _step(opt: torch.optim.Optimizer, bad: torch.Tensor) -> None:
        """The update, skipped when ``bad``: fused AdamW honours ``found_inf`` on the device
        (no change to weights, moments or step count); non-fused AdamW ignores it, so that
        path reads the flag on the host (one sync per step)."""
        if opt.defaults["fused"]:
            opt.found_inf = bad.float()
            opt.step()
        elif not bad:
            opt.step()
        opt.zero_grad(set_to_none=True)

    # -- checkpoints
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        prefixes = tuple(f"{n}." for n in self.model.stage_module_names(self.cfg.stage))
        if self.cfg.stage == "semantic":
            prefixes += ("semantic_codebook.",)
        return {k: v for k, v in self.model.state_dict().items() if k.startswith(prefixes)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self._trainable_state(),
            "optimizer": self.opt.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "disc": self.disc.state_dict() if self.disc else None,
            "disc_optimizer": self.disc_opt.state_dict() if self.disc_opt else None,
            "data": self.stream.state_dict(),
            "rng": rng_state(),
            "bad_steps": {"skipped": self.skipped_steps, "streak": self.bad_streak},
            "config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"], strict=False)
        self.opt.load_state_dict(state["optimizer"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        if self.disc:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        self.stream.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        bad = state.get("bad_steps", {"skipped": 0, "streak": 0})  # older checkpoints: none
        self.skipped_steps, self.bad_streak = bad["skipped"], bad["streak"]

    def resume(self) -> bool:
        path = latest_checkpoint(self.out / "checkpoints")
        if path is None:
            return False
        self.load_state_dict(load_checkpoint(path))
        if self.rank == 0:
            truncate_metrics(self.out / "metrics.jsonl", self.step)
            print(f"resumed from {path} at step {self.step}")
        return True

    def save(self) -> Path | None:
        """Checkpoint on rank 0, after reading every pending flag (a run that has just hit
        ``max_bad_steps`` raises here instead of writing)."""
        self._review(keep=0)
        if self.rank != 0:
            return None
        return save_checkpoint(
            self.out / "checkpoints", self.step, self.state_dict(), self.cfg.keep_checkpoints
        )

    # -- faults
    def _review(self, keep: int) -> None:
        """Act on the flags of all steps but the last ``keep``: count and report skipped steps,
        stop after ``max_bad_steps`` in a row, note a SIGTERM."""
        for step, flagged in self.flags.pop(keep):
            if "sigterm" in flagged:
                self.stopping = True
                flagged.remove("sigterm")
            if flagged:
                self._skipped(step, flagged)
            else:
                self.bad_streak = 0

    def _skipped(self, step: int, names: list[str]) -> None:
        self.skipped_steps += 1
        self.bad_streak += 1
        limit = self.cfg.max_bad_steps
        if self.rank == 0:
            log.warning(
                "step %d skipped: non-finite %s (%d in a row; the run stops at max_bad_steps=%d)",
                step,
                ", ".join(names),
                self.bad_streak,
                limit,
            )
        self._write_metrics(
            {
                "step": step,
                "bad_step": True,
                "non_finite": names,
                "consecutive_bad_steps": self.bad_streak,
                "skipped_steps": self.skipped_steps,
            }
        )
        if self.bad_streak >= limit:
            good = latest_checkpoint_or_none(self.out / "checkpoints")
            raise TrainingDiverged(
                f"training diverged: {limit} consecutive steps (max_bad_steps={limit}), steps "
                f"{step - limit + 1}-{step}, had a non-finite loss or gradient (step {step}: "
                f"{', '.join(names)}). Their updates were skipped, so no weights are poisoned, "
                "and no checkpoint is written from here; last good checkpoint: "
                f"{good or 'none (no checkpoint written yet)'}. Check the data, lower optim.lr, "
                "or resume from that checkpoint."
            )

    @contextlib.contextmanager
    def _sigterm_stops_the_run(self) -> Iterator[None]:
        """SIGTERM (cluster preemption) asks the loop to checkpoint and stop; the previous
        handler comes back afterwards. Signals reach only the main thread."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _preempted(self) -> NoReturn:
        path = self.save()
        if self.rank == 0:
            print(
                f"SIGTERM: stopped at step {self.step}, checkpoint {path}; "
                "run again with --resume to continue",
                flush=True,
            )
        raise TrainingPreempted(self.step, path)

    # -- the loop
    def fit(self) -> Path:
        """Train to ``max_steps`` and export. Raises ``TrainingPreempted`` (exit status 0) after
        a SIGTERM checkpoint, ``TrainingDiverged`` after ``max_bad_steps`` skipped steps in a
        row, ``CheckpointWriteError`` when a checkpoint cannot be written."""
        with self._sigterm_stops_the_run():
            self._loop()
            return self.export()

    def _loop(self) -> None:
        cfg, it = self.cfg, iter(self.stream)
        preview = self._preview_batch()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=self.rank != 0, unit="step")
        window_start, window_images = time.perf_counter(), 0
        try:
            while self.step < cfg.max_steps:
                batches = [next(it) for _ in range(cfg.grad_accum)]
                losses = self.train_step(batches)
                self._review(keep=1)  # the previous step's flags: the device is a step ahead
                window_images += sum(len(b["images"]) for b in batches) * self.world
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    rate = window_images / (time.perf_counter() - window_start)
                    self._log({k: float(v) for k, v in losses.items()}, rate, bar)
                    window_start, window_images = time.perf_counter(), 0
                if self.step % cfg.image_every == 0 or self.step == cfg.max_steps:
                    self._write_pictures(preview)
                if self.stopping:
                    self._preempted()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self.save()
                bar.update(1)
        finally:
            bar.close()

    def _log(self, losses: dict[str, float], rate: float, bar: tqdm) -> None:
        self._review(keep=0)
        skipped = torch.tensor(float(self.stream.skipped_total), device=self.device)
        if self.world > 1:
            dist.all_reduce(skipped)
        finite = {k: v if math.isfinite(v) else None for k, v in losses.items()}  # strict JSON
        record = {"step": self.step, "lr": self.lr_at(self.step - 1), **finite}
        record |= {"images_per_s": rate, "skipped_files": int(skipped.item())}
        record |= {"skipped_steps": self.skipped_steps} | self._codebook_stats()
        self._write_metrics(record)
        if self.rank == 0:
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()} | {"img/s": f"{rate:.1f}"})

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _codebook_stats(self) -> dict[str, Any]:
        sem, pix = self.model.semantic_codebook, self.model.pixel_quantizer
        stats = {
            "semantic_used": sem.usage.fraction_used(),
            "semantic_perplexity": sem.usage.perplexity(),
        }
        if self.cfg.stage != "semantic":
            stats |= {
                "flat_used": pix.usage.fraction_used(),
                "flat_perplexity": pix.usage.perplexity(),
            }
        if self.world > 1:  # EMA statistics are all-reduced: the codebooks must agree exactly
            digest = sem.codebook.double().sum().reshape(1)
            digests = [torch.zeros_like(digest) for _ in range(self.world)]
            dist.all_gather(digests, digest)
            stats["codebook_digests"] = [float(d) for d in digests]
            if len(set(stats["codebook_digests"])) != 1:
                raise RuntimeError(
                    f"semantic codebooks diverged across ranks: {stats['codebook_digests']}"
                )
        sem.usage.reset()
        pix.usage.reset()
        return stats

    def _preview_batch(self) -> torch.Tensor:
        source = self.cfg.eval_data or self.cfg.data
        return next(iter(eval_batches(source, self.cfg.preview_images)))["images"]

    @torch.no_grad()
    def _write_pictures(self, images: torch.Tensor) -> None:
        if self.rank != 0:
            return
        model, size = self.model.eval(), self.model.config.image_size
        out = model.encode(images.to(self.device))
        crops = to_pil(images)
        maps = [token_map(ids, size, crop) for ids, crop in zip(out.sem_ids, crops, strict=True)]
        folder = self.out / "images"
        folder.mkdir(parents=True, exist_ok=True)
        grid([crops, maps]).save(folder / f"step_{self.step:08d}_tokens.png")
        if self.cfg.stage != "semantic":
            recons = to_pil(model.decode_features(out.sem_features, out.pix_features).clamp(-1, 1))
            grid([crops, recons, maps]).save(folder / f"step_{self.step:08d}_recon.png")
        model.train()

    def export(self) -> Path:
        """Save the tokenizer (EMA weights when enabled) with ``save_pretrained``."""
        if self._frozen_digest() != self.frozen_digest:
            raise RuntimeError("frozen weights changed during training; refusing to export")
        final = self.out / "final"
        if self.rank == 0:
            with self.ema.applied() if self.ema else contextlib.nullcontext():
                self.model.save_pretrained(final)
            if self.disc_module is not None:
                state = {
                    "disc": self.disc_module.state_dict(),
                    "disc_optimizer": self.disc_opt.state_dict(),
                    "disc_channels": self.cfg.losses.disc_channels,
                }
                save_discriminator(final, state)
        if self.world > 1:
            dist.barrier()
        return final


def exempt_from_decay(name: str, param: nn.Parameter) -> bool:
    """Whether AdamW leaves ``param`` without weight decay: codebooks, embeddings (position,
    class, latent tokens), biases and norm gains, whose decay would shrink them toward zero."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or "codebook" in leaf or leaf in ("pos_embed", "cls_token", "latent")


class _StepFlags:
    """Each step's flags, read on the host one step late: the copy is queued without waiting
    (pinned memory and an event on CUDA), so the host never waits for the step it has just
    queued and the device always has a step of work ahead of it."""

    def __init__(self) -> None:
        self.pending: deque[tuple[int, list[str], torch.Tensor, Any]] = deque()

    def push(self, step: int, names: list[str], flags: torch.Tensor) -> None:
        event = None
        if flags.is_cuda:
            host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            flags = host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self.pending.append((step, names, flags, event))

    def pop(self, keep: int) -> Iterator[tuple[int, list[str]]]:
        """(step, names of the set flags) of every step but the last ``keep``, oldest first."""
        while len(self.pending) > keep:
            step, names, flags, event = self.pending.popleft()
            if event is not None:
                event.synchronize()
            yield step, [n for n, f in zip(names, flags.tolist(), strict=True) if f]


def _setup_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device, from torchrun's environment when present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    trainer = Trainer(cfg)
    trainer.out.mkdir(parents=True, exist_ok=True)
    if trainer.rank == 0:
        (trainer.out / "train_config.json").write_text(
            json.dumps(dataclasses.asdict(cfg), indent=2)
        )
    if resume:
        trainer.resume()
    return trainer.fit()
