"""The ``semhitok-qwen`` command line: build, train, chat with and sample images from the unified
MLLM (a Qwen2/Qwen2.5 LM extended by SemHiTok's image ids).

MODEL is a directory written by ``semhitok-qwen init`` or by training (a checkpoint holds the
text tokenizer and, under ``semhitok/``, the image tokenizer).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from semhitok_plugin.cli import (
    USER_ERRORS,
    batched,
    pick_device,
    positive_int,
    print_user_error,
)
from semhitok_plugin.config import ConfigError
from semhitok_plugin.images import ImageReadError
from semhitok_plugin.token_files import write_tokens
from semhitok_plugin.visualize import grid

from .build import build_unified, load_unified, parse_dtype, save_unified
from .generation import chat, generate_image
from .model import IMAGE_HEADS


def cmd_init(args: argparse.Namespace) -> int:
    model, processor = build_unified(
        args.qwen,
        args.tokenizer,
        semantic_fraction=args.semantic_fraction,
        unconditional_prompt=args.unconditional_prompt,
        torch_dtype=parse_dtype(args.dtype),
        image_head=args.image_head,
    )
    save_unified(model, processor, args.output)
    vocab = model.image_vocab
    print(
        f"wrote {args.output}: {model.config.text_vocab_size} text ids + {vocab.size} image ids "
        f"(image token id = {vocab.offset} + flat id)"
    )
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from .data import write_sample_jsonl

    print(f"wrote {write_sample_jsonl(args.output)} (and the photos it names)")
    return 0


def _load(args: argparse.Namespace):
    return load_unified(
        args.model,
        image_tokenizer=args.image_tokenizer,
        device=pick_device(args.device),
        torch_dtype=parse_dtype(args.dtype),
    )


def cmd_generate(args: argparse.Namespace) -> int:
    model, processor = _load(args)
    args.output.mkdir(parents=True, exist_ok=True)
    ids, images = [], []
    for start, prompts in enumerate(batched(iter(args.prompt), args.batch_size)):
        seed = None if args.seed is None else args.seed + start
        out = generate_image(
            model,
            processor,
            prompts,
            cfg_scale=args.cfg_scale,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=seed,
        )
        ids.append(out.ids)
        images += out.images
    names = [f"{i:03d}.png" for i in range(len(images))]
    for name, image in zip(names, images, strict=True):
        image.save(args.output / name)
    write_tokens(args.output / "tokens.npz", torch.cat(ids), names, processor.image_tokenizer)
    grid([images]).save(args.output / "grid.png")
    print(f"wrote {len(images)} images, grid.png and tokens.npz to {args.output}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model, processor = _load(args)
    content = "<image>\n" * len(args.image) + args.prompt
    (answer,) = chat(
        model,
        processor,
        [[{"role": "user", "content": content}]],
        [args.image],
        max_new_tokens=args.max_new_tokens,
    )
    print(answer)
    return 0


def _metric_sources(args: argparse.Namespace):
    from .eval_gen import metric_sources

    return metric_sources(
        reference=args.reference,
        inception_weights=args.inception_weights,
        random_backbones=args.random_backbones,
        fid_dims=args.fid_dims,
        clip_model=args.clip_model,
        clip_weights=args.clip_weights,
        vqa_model=args.vqa_model,
    )


def _evaluate(args: argparse.Namespace, sources, device) -> None:
    from .eval_gen import METRICS, evaluate_folder

    metrics = evaluate_folder(
        args.output,
        sources,
        device=device,
        batch_size=args.metrics_batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.output / METRICS}")


def cmd_eval_gen(args: argparse.Namespace) -> int:
    from .eval_gen import MANIFEST, Sampling, distributed, generate_folder, read_prompts

    prompts = read_prompts(args.prompts)
    sources = _metric_sources(args)  # every path checked before the model loads
    sampling = Sampling(
        cfg_scale=args.cfg_scale,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    run = {"model": args.model, "image_tokenizer": args.image_tokenizer, "dtype": args.dtype}
    with distributed(args.device) as ranks:
        model, processor = load_unified(
            args.model,
            image_tokenizer=args.image_tokenizer,
            device=ranks.device,
            torch_dtype=parse_dtype(args.dtype),
        )
        written = generate_folder(
            model,
            processor,
            prompts,
            args.output,
            sampling,
            run=run,
            limit=args.limit,
            ranks=ranks,
            progress=not args.no_progress,
        )
        if ranks.rank == 0:
            print(f"wrote {written} images to {args.output / 'images'}; {args.output / MANIFEST}")
            if sources.any:
                del model, processor
                _evaluate(args, sources, ranks.device)
    return 0


def cmd_eval_gen_metrics(args: argparse.Namespace) -> int:
    sources = _metric_sources(args)
    if not sources.any:
        raise ConfigError("nothing to compute: give --reference, --clip-model and/or --vqa-model")
    _evaluate(args, sources, pick_device(args.device))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from .train import add_arguments as add_train_arguments

    parser = argparse.ArgumentParser(prog="semhitok-qwen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="extend a Qwen2/Qwen2.5 checkpoint by SemHiTok's image ids")
    p.add_argument("--qwen", required=True, help="Qwen2/Qwen2.5 hub id or directory")
    p.add_argument(
        "--tokenizer", required=True, help="trained SemHiTok directory or hub id (or a preset)"
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument(
        "--semantic-fraction",
        type=float,
        default=0.5,
        help="share of the LLM width the Dual-MLP gives the semantic features",
    )
    p.add_argument(
        "--unconditional-prompt",
        default="",
        help="text that replaces a text-to-image prompt under CFG dropout and at sampling time",
    )
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument(
        "--image-head",
        choices=IMAGE_HEADS,
        default="flat",
        help="image ids scored by K·m head rows (flat) or as p(sem)·p(pix|sem) (factorised)",
    )
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser(
        "sample-data", help="write a small mixed JSONL data set about the bundled photos"
    )
    p.add_argument("-o", "--output", type=Path, default=Path("qwen-data"))
    p.set_defaults(fn=cmd_sample_data)

    def with_model(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-m", "--model", required=True, help="unified MLLM directory")
        p.add_argument("--image-tokenizer", help="SemHiTok override (default: MODEL/semhitok)")
        p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
        p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
        return p

    p = with_model(sub.add_parser("generate", help="text -> images (PNG, grid, tokens.npz)"))
    p.add_argument("prompt", nargs="+", help="one image per prompt")
    p.add_argument("-o", "--output", type=Path, default=Path("generated"))
    p.add_argument("--cfg-scale", type=float, default=4.0, help="1 disables guidance")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, help="fixes the samples (batch i uses seed + i)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    p.set_defaults(fn=cmd_generate)

    p = with_model(sub.add_parser("chat", help="answer a question about images (greedy)"))
    p.add_argument("prompt")
    p.add_argument("--image", type=Path, action="append", default=[], help="repeatable")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.set_defaults(fn=cmd_chat)

    def with_metrics(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        m = p.add_argument_group("metrics (docs/generation-eval.md)")
        m.add_argument(
            "--reference",
            help="FID reference images (MJHQ-30K: mjhq30k_imgs, one subfolder per category)",
        )
        m.add_argument(
            "--inception-weights",
            help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: torch hub's cache)",
        )
        m.add_argument(
            "--random-backbones",
            action="store_true",
            help="random FID Inception: smoke tests only, FID not comparable",
        )
        m.add_argument(
            "--fid-dims", type=int, default=2048, help="Inception feature width (2048 to compare)"
        )
        m.add_argument("--clip-model", help="open_clip model name, or a local open_clip folder")
        m.add_argument("--clip-weights", help="local checkpoint of a named --clip-model")
        m.add_argument(
            "--vqa-model",
            help="VQAScore scorer: a semhitok-qwen or transformers image-text-to-text folder",
        )
        m.add_argument("--metrics-batch-size", type=positive_int, default=16)
        m.add_argument("--num-workers", type=int, default=4, help="image reading processes (FID)")
        p.add_argument("--no-progress", action="store_true")
        return p

    p = with_metrics(
        with_model(
            sub.add_parser(
                "eval-gen",
                help="sample a benchmark's prompts (resumable, torchrun-sharded), then score them",
            )
        )
    )
    p.add_argument(
        "--prompts",
        type=Path,
        required=True,
        help="MJHQ-30K meta_data.json, GenAI-Bench genai_image.json, or JSON/JSONL with 'prompt'",
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--cfg-scale", type=float, default=4.0, help="the paper gives none; 1 = off")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0, help="batch b is sampled with seed + b")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts sampled together")
    p.add_argument("--limit", type=positive_int, help="only the first N prompts' images")
    p.set_defaults(fn=cmd_eval_gen)

    p = with_metrics(
        sub.add_parser("eval-gen-metrics", help="FID, CLIP score, VQAScore of an eval-gen folder")
    )
    p.add_argument("output", type=Path, help="a folder written by eval-gen")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(fn=cmd_eval_gen_metrics)

    p = sub.add_parser("train", help="pretrain or finetune on JSONL data (HF Trainer)")
    add_train_arguments(p)
    p.set_defaults(fn=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (*USER_ERRORS, ImageReadError) as err:
        print_user_error(err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
