"""Training the unified MLLM (paper §4.1): pretrain, then finetune, the LLM and its Dual-MLP
adapter with one next-token loss over text and image ids.

Runs through the HF :class:`~transformers.Trainer`, so the usual launchers work unchanged:
``python -m``, ``torchrun``, ``accelerate launch`` and ``deepspeed`` (``--deepspeed zero2`` or
``zero3`` picks the ZeRO configs shipped in ``semhitok_plugin/configs/deepspeed``, which the LLaVA
scripts share).

A stage is a YAML file (``semhitok_qwen/configs/{pretrain,finetune}.yaml``): ``max_length``,
``cfg_dropout`` and ``trainer`` (TrainingArguments fields); ``--config`` merges a YAML file over
it and flags override both. Every checkpoint (``OUTPUT/checkpoint-N``) and the final model
(``OUTPUT``) hold the processor too (tokenizer + ``semhitok/``), so each loads with
:func:`~semhitok_qwen.load_unified` and ``--resume`` continues from the newest complete
one. ``OUTPUT/metrics.jsonl`` gets every log line, including the loss on text targets and on
image targets separately (accumulated on the device, read back only at log steps) and the
samples dropped by the data (:mod:`.data`).

Images are tokenized with the checkpoint's SemHiTok on the CPU, in the dataloader workers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.checkpoint import checkpoint
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled

import semhitok_plugin
from semhitok_plugin.checkpoint import truncate_metrics
from semhitok_plugin.cli import print_user_error
from semhitok_plugin.config import Bounds, ConfigError, from_plain

from .data import SKIP_REASONS, Collator, UnifiedDataset, read_jsonl
from .model import ImageVocabulary
from .processor import IGNORE_INDEX

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent / "configs"  # the stages
DEEPSPEED_CONFIGS = Path(semhitok_plugin.__file__).resolve().parent / "configs" / "deepspeed"
STAGES = ("pretrain", "finetune")
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DONE = "trainer_state.json"  # the Trainer writes it last into a checkpoint


@dataclass
class StageConfig:
    max_length: Annotated[int, Bounds(ge=2)] = 2048  # a prompt token and a target
    cfg_dropout: Annotated[float, Bounds(ge=0, le=1)] = 0.1
    trainer: dict[str, Any] = field(default_factory=dict)  # TrainingArguments fields


def load_stage_config(stage: str, override: str | Path | None = None) -> StageConfig:
    """The shipped config of ``stage``, with the YAML file ``override`` merged over it
    (``trainer`` key by key, everything else replaced)."""

    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    data = yaml.safe_load((CONFIGS / f"{stage}.yaml").read_text())
    if override is not None:
        if not Path(override).is_file():
            raise FileNotFoundError(f"config file {str(override)!r} does not exist")
        extra = yaml.safe_load(Path(override).read_text()) or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{override} must hold a mapping")
        data = {**data, **extra, "trainer": {**data["trainer"], **extra.get("trainer", {})}}
    config = from_plain(StageConfig, data, f"stage {stage!r}")
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(config.trainer) - known)
    if unknown:
        raise ConfigError(f"trainer has keys that are not TrainingArguments fields: {unknown}")
    return config


# -- the trainer -----------------------------------------------------------------------------------
LOSS_CHUNK = 512  # positions per cross-entropy chunk


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position next-token cross-entropy (0 where unlabelled) and its targets.

    Computed in fp32 over chunks of positions, each recomputed in backward (checkpointing):
    only one chunk's fp32 log-softmax over the 348,544-entry vocabulary exists at a time,
    instead of a float copy of all the logits kept for backward (23 GB at 8 × 2048 tokens)."""
    targets = labels[:, 1:]
    logits = logits[:, :-1]
    pieces = [
        checkpoint(
            _cross_entropy,
            logits[:, s : s + LOSS_CHUNK],
            targets[:, s : s + LOSS_CHUNK],
            use_reentrant=False,
        )
        if logits.requires_grad
        else _cross_entropy(logits[:, s : s + LOSS_CHUNK], targets[:, s : s + LOSS_CHUNK])
        for s in range(0, targets.shape[1], LOSS_CHUNK)
    ]
    return torch.cat(pieces, dim=1), targets


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    losses = F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return losses.view_as(targets)


class UnifiedTrainer(Trainer):
    """The HF Trainer with the loss of each batch split into text and image targets for the log.

    The loss is the mean over a micro-batch's labelled tokens, as the model's own loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_vocab: ImageVocabulary = self.model.image_vocab
        # text loss sum, text targets, image loss sum, image targets, then SKIP_REASONS counts
        self._window: torch.Tensor | None = None
        self.skipped_total = dict.fromkeys(SKIP_REASONS, 0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``num_items_in_batch`` is unused: the loss stays a per-micro-batch mean."""
        skipped, labels = inputs.pop("skipped", None), inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        if self.model.factorised:  # first level (text + K) here, the pixel level added below
            labels, pixel = self.model.image_targets(outputs.hidden_states[-1], labels)
        losses, targets = token_losses(outputs.logits, labels)
        if self.model.factorised:
            losses = losses + pixel
        labelled = targets != IGNORE_INDEX
        loss = losses.sum() / labelled.sum().clamp(min=1)
        if model.training:
            self._accumulate(losses.detach(), targets, labelled, skipped)
        return (loss, outputs) if return_outputs else loss

    def _accumulate(self, losses, targets, labelled, skipped) -> None:
        image = self.image_vocab.contains(targets)
        text = labelled & ~image
        stats = torch.stack(
            [(losses * text).sum(), text.sum(), (losses * image).sum(), image.sum()]
        )
        if skipped is not None:
            stats = torch.cat([stats, skipped.to(stats)])
        self._window = stats if self._window is None else self._window + stats

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._window is not None:  # a training log step, on every rank
            text_sum, text_n, image_sum, image_n, *skipped = self.accelerator.reduce(
                self._window, "sum"
            ).tolist()
            self._window = None
            if text_n:
                logs["text_loss"] = text_sum / text_n
            if image_n:
                logs["image_loss"] = image_sum / image_n
            for reason, count in zip(SKIP_REASONS, skipped, strict=False):
                logs[f"skipped_{reason}"] = int(count)
                self.skipped_total[reason] += int(count)
        super().log(logs, *args, **kwargs)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Lets the (weights-only) ``torch.load`` of transformers 4.46 read the numpy RNG state
        in a checkpoint's ``rng_state.pth``; newer transformers allow the same globals."""
        with _numpy_array_globals():
            super()._load_rng_state(checkpoint)


def _numpy_array_globals():
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        return contextlib.nullcontext()
    # numpy's legacy RNG state is a uint32 array; its pickle names numpy's array constructor
    builder = np.zeros(0).__reduce__()[0]  # numpy._core... since numpy 2, numpy.core before
    return allow([np.ndarray, np.dtype, type(np.dtype(np.uint32)), builder])


class MetricsJsonl(TrainerCallback):
    """Every log line as JSON in ``OUTPUT/metrics.jsonl`` (lines past a resumed step removed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            truncate_metrics(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")


# -- from arguments to a trainer ---------------------------------------------------------------
FLAGS = {  # command-line option -> TrainingArguments field
    "max_steps": "max_steps",
    "epochs": "num_train_epochs",
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "bf16": "bf16",
    "gradient_checkpointing": "gradient_checkpointing",
    "save_steps": "save_steps",
    "logging_steps": "logging_steps",
    "seed": "seed",
    "num_workers": "dataloader_num_workers",
    "report_to": "report_to",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``semhitok-qwen train``."""
    parser.add_argument("--model", required=True, help="unified checkpoint (save_unified output)")
    parser.add_argument("--data", required=True, nargs="+", help="training JSONL file(s)")
    parser.add_argument("--stage", choices=STAGES, default="pretrain", help="shipped stage config")
    parser.add_argument("--config", help="YAML merged over the stage config")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from a checkpoint folder; alone: the newest one in --output-dir",
    )
    parser.add_argument("--deepspeed", help="DeepSpeed JSON file, or zero2 / zero3 (shipped)")
    parser.add_argument("--max-steps", type=int, help="overrides --epochs when > 0")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int, help="per device")
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None
    )
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--logging-steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int, help="dataloader workers")
    parser.add_argument("--report-to", nargs="+", help="none, tensorboard, wandb, ...")
    parser.add_argument("--cfg-dropout", type=float, help="P(text condition -> unconditional)")
    parser.add_argument("--max-length", type=int, help="tokens per sample")


def training_arguments(args: argparse.Namespace, config: StageConfig) -> TrainingArguments:
    values = dict(config.trainer)
    values |= {
        field: getattr(args, flag)
        for flag, field in FLAGS.items()
        if getattr(args, flag) is not None
    }
    if values.get("bf16") and not torch.cuda.is_available():
        logger.info("bf16 needs CUDA here; training in fp32")
        values["bf16"] = False
    values.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    return TrainingArguments(
        output_dir=args.output_dir,
        deepspeed=_deepspeed_config(args.deepspeed),
        remove_unused_columns=False,  # the collator's keys are not all forward() arguments
        **values,
    )


def _deepspeed_config(name: str | None) -> str | None:
    if name is None or Path(name).is_file():
        return name
    shipped = DEEPSPEED_CONFIGS / f"{name}.json"
    if not shipped.is_file():
        raise FileNotFoundError(f"DeepSpeed config {name!r} is neither a file nor zero2 / zero3")
    return str(shipped)


def build_trainer(args: argparse.Namespace) -> UnifiedTrainer:
    """Everything ``run`` trains with; inputs are checked before the model loads."""
    from .build import check_unified_checkpoint, load_unified

    config = load_stage_config(args.stage, args.config)
    for name in ("max_length", "cfg_dropout"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    check_unified_checkpoint(args.model)  # before the data is read
    records = read_jsonl(args.data)
    # TrainingArguments first: under ZeRO-3 it makes from_pretrained partition the weights
    train_args = training_arguments(args, config)
    model, processor = load_unified(args.model)
    if is_deepspeed_zero3_enabled():  # DeepSpeed places the partitioned weights, not buffers
        model.image_embed.to(train_args.device)
    dataset = UnifiedDataset(
        records,
        processor,
        max_length=config.max_length,
        cfg_dropout=config.cfg_dropout,
        seed=train_args.seed,
    )
    return UnifiedTrainer(
        model=model.train(),
        args=train_args,
        train_dataset=dataset,
        data_collator=Collator(processor.pad_token_id),
        processing_class=processor,  # saved with every checkpoint and the final model
        callbacks=[MetricsJsonl(Path(args.output_dir) / METRICS_FILE)],
    )


def resume_checkpoint(resume: str | None, output_dir: str | Path) -> str | None:
    """``auto``: the newest complete ``checkpoint-N`` in ``output_dir`` (None if there is none);
    a path: that checkpoint."""
    if resume is None:
        return None
    if resume != "auto":
        if not (Path(resume) / CHECKPOINT_DONE).is_file():
            raise FileNotFoundError(f"{resume} is not a complete training checkpoint")
        return resume
    done = [p for p in Path(output_dir).glob("checkpoint-*") if (p / CHECKPOINT_DONE).is_file()]
    steps = [(int(p.name.split("-")[1]), p) for p in done if p.name.split("-")[1].isdigit()]
    return str(max(steps)[1]) if steps else None


def run(args: argparse.Namespace) -> int:
    trainer = build_trainer(args)
    checkpoint = resume_checkpoint(args.resume, args.output_dir)
    if args.resume and checkpoint is None:
        print(f"no checkpoint in {args.output_dir}: starting from {args.model}")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        skipped = ", ".join(f"{k}: {v}" for k, v in trainer.skipped_total.items())
        print(f"model: {args.output_dir}\nmetrics: {Path(args.output_dir) / METRICS_FILE}")
        print(f"samples skipped ({skipped})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semhitok_qwen.train", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError) as err:
        print_user_error(err)
        return 2
    except yaml.YAMLError as err:  # the stage config's syntax, or a python/* tag it refuses
        print_user_error(ConfigError(f"invalid YAML in {args.config}: {err}"))
        return 2


if __name__ == "__main__":
    sys.exit(main())
