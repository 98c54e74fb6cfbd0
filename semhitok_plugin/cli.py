"""The ``semhitok`` command line: tokenize, train, evaluate, inspect, and the demo job.

MODEL is a preset name (random weights from ``--seed``; teacher weights from the preset or
``--teacher-weights``), a directory written by ``save_pretrained``, or a hub repo id.
Token files are ``.npz`` with ``flat_ids`` (N, h, w) int32, ``grid``, ``vocab_size``, ``model``
and ``files``. Unreadable images are reported by name and make the exit status 1; the other
images are still processed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import ConfigError
from .hub import WeightsNotFoundError, resolve_file
from .ids import TokenIdError
from .images import ImageReadError, center_crop, load_image, to_pil, to_tensor
from .model import CheckpointMismatchError, SemHiTok, load_model, resolve_config
from .plugins import available_presets
from .visualize import grid, token_map


class TokenFileError(ValueError):
    """A token file that is malformed or belongs to another tokenizer."""


USER_ERRORS = (
    ConfigError,
    FileNotFoundError,  # missing inputs, and WeightsNotFoundError
    CheckpointMismatchError,
    TokenIdError,
    TokenFileError,
)


# -- helpers ---------------------------------------------------------------------------------------
def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _model(args: argparse.Namespace) -> SemHiTok:
    model = load_model(args.model, teacher_weights=args.teacher_weights, seed=args.seed)
    return model.to(_device(args.device))


def _read_images(paths: Sequence[Path], size: int, failures: list[str]):
    for path in paths:
        try:
            yield path, center_crop(load_image(path), size)
        except ImageReadError as err:
            print(f"error: {err}", file=sys.stderr)
            failures.append(str(path))


def _batches(items: Iterator, batch_size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_files(model: SemHiTok, paths: Sequence[Path], batch_size: int, failures: list[str]):
    """Yield (paths, PIL crops, TokenizerOutput) per batch, with a progress bar."""
    device = next(model.parameters()).device
    images = _read_images(paths, model.config.image_size, failures)
    with tqdm(total=len(paths), unit="img", disable=len(paths) < 2 * batch_size) as bar:
        for batch in _batches(images, batch_size):
            names, crops = zip(*batch, strict=True)
            yield names, crops, model.encode(to_tensor(list(crops)).to(device))
            bar.update(len(batch))


def _exit_status(failures: list[str], done: int) -> int:
    if failures:
        print(
            f"{len(failures)} of {len(failures) + done} images failed: {failures}", file=sys.stderr
        )
    return 1 if failures else 0


# -- commands --------------------------------------------------------------------------------------
def cmd_presets(args: argparse.Namespace) -> int:
    print(f"{'preset':30} {'image':>5} {'grid':>7} {'K':>6} {'m':>3} {'vocab':>8}  teacher")
    for name, cfg in sorted(available_presets().items()):
        h, w = cfg.grid_size
        print(
            f"{name:30} {cfg.image_size:>5} {f'{h}x{w}':>7} {cfg.semantic.codebook_size:>6} "
            f"{cfg.pixel.sub_codebook_size:>3} {cfg.vocab_size:>8}  {cfg.teacher.model_name}"
        )
    return 0


def _teacher_status(model: SemHiTok, kind: str) -> str:
    spec = model.config.teacher.weights
    if kind != "preset":
        return "stored in the checkpoint"
    if not spec:
        return "none (random initialisation by design)"
    try:
        path = resolve_file(
            spec, model.teacher.backbone.weight_files, what="", option="", local_only=True
        )
        return f"{spec} -> {path}"
    except WeightsNotFoundError:
        return f"{spec}: not available locally (offline) -- architecture built without weights"


def cmd_info(args: argparse.Namespace) -> int:
    config, kind = resolve_config(args.model)
    with torch.device("meta"):  # sizes only: no allocation, no weights, no network
        model = SemHiTok(config, load_teacher_weights=False)
    h, w = config.grid_size
    parts = ["teacher", "semantic_proj", "semantic_decoder", "pixel_encoder", "pixel_decoder"]
    rows = {
        "model": f"{args.model} [{kind}]",
        "image size": f"{config.image_size} px (canvas {config.canvas_size} px)",
        "tokens": f"{h}x{w} = {h * w} per image",
        "vocab size": f"{config.vocab_size:,} = K {config.semantic.codebook_size:,} x m "
        f"{config.pixel.sub_codebook_size}",
        "code dims": f"semantic {config.semantic.code_dim}, pixel {config.pixel.code_dim}",
        "decoder input": f"{config.pixel.concat} concat",
        "teacher": f"{config.teacher.backend}:{config.teacher.model_name} "
        f"(layer {config.teacher.feature_layer}, {model.teacher.embed_dim}-d)",
        "teacher weights": _teacher_status(model, kind),
    }
    rows.update({f"params {p}": f"{_count(getattr(model, p)) / 1e6:.1f} M" for p in parts})
    rows["params total"] = f"{_count(model) / 1e6:.1f} M"
    for key, value in rows.items():
        print(f"{key:24} {value}")
    return 0


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) + sum(
        b.numel() for n, b in module.named_buffers() if n.endswith("codebook")
    )


def cmd_encode(args: argparse.Namespace) -> int:
    model, failures = _model(args), []
    names, ids = [], []
    for batch_names, crops, out in _encode_files(model, args.images, args.batch_size, failures):
        names += [str(n) for n in batch_names]
        ids.append(out.flat_ids.cpu())
        if args.token_maps:
            _save_token_maps(args.token_maps, batch_names, crops, out.sem_ids, model)
    if ids:
        _write_tokens(args.output, torch.cat(ids), names, model)
        print(f"wrote {len(names)} token maps of {model.grid_size} to {args.output}")
    return _exit_status(failures, len(names))


def _save_token_maps(directory: Path, names, crops, sem_ids, model: SemHiTok) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, crop, ids in zip(names, crops, sem_ids, strict=True):
        token_map(ids, model.config.image_size, crop).save(directory / f"{Path(name).stem}.png")


def _write_tokens(path: Path, flat_ids: torch.Tensor, names: list[str], model: SemHiTok) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        flat_ids=flat_ids.numpy().astype(np.int32),  # vocab > 65,535: never 16-bit
        grid=np.array(model.grid_size, dtype=np.int32),
        vocab_size=np.int64(model.vocab_size),
        model=np.str_(model.name_or_path),
        files=np.array(names, dtype=np.str_),
    )


def read_tokens(path: Path, model: SemHiTok) -> tuple[torch.Tensor, list[str]]:
    """Flat ids (N, h, w) and file names from a token file, checked against ``model``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, grid_hw, vocab = data["flat_ids"], tuple(data["grid"]), int(data["vocab_size"])
            source = str(data["model"]) if "model" in data else "?"
            files = [str(f) for f in data["files"]] if "files" in data else []
    except (OSError, KeyError, ValueError) as err:
        raise TokenFileError(f"{path} is not a SemHiTok token file: {err}") from err
    if not np.issubdtype(ids.dtype, np.integer):
        raise TokenFileError(f"{path}: flat_ids must be integers, got {ids.dtype}")
    if vocab != model.vocab_size or grid_hw != model.grid_size:
        raise TokenFileError(
            f"{path} holds ids of a tokenizer with vocab {vocab} and grid {grid_hw} (model "
            f"{source!r}); this model has vocab {model.vocab_size} and grid {model.grid_size}"
        )
    files = files if len(files) == len(ids) else [f"{i:05d}" for i in range(len(ids))]
    return torch.from_numpy(ids.astype(np.int64)), files


def cmd_decode(args: argparse.Namespace) -> int:
    model = _model(args)
    ids, files = read_tokens(args.tokens, model)
    device = next(model.parameters()).device
    args.output.mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(ids), args.batch_size), unit="batch", disable=len(ids) < 64):
        images = to_pil(model.decode(ids[start : start + args.batch_size].to(device)))
        for name, img in zip(files[start : start + args.batch_size], images, strict=True):
            img.save(args.output / f"{Path(name).stem}.png")
    print(f"wrote {len(ids)} images to {args.output}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    model, failures = _model(args), []
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for names, crops, out in _encode_files(model, args.images, args.batch_size, failures):
        recons = to_pil(model.decode_features(out.sem_features, out.pix_features).clamp(-1, 1))
        for name, crop, recon, ids in zip(names, crops, recons, out.sem_ids, strict=True):
            recon.save(args.output / f"{Path(name).stem}.png")
            rows.append([crop, recon, token_map(ids, model.config.image_size, crop)])
    if rows:
        grid(rows).save(args.output / "grid.png")
        print(
            f"wrote {len(rows)} reconstructions and grid.png (input | reconstruction | "
            f"semantic tokens) to {args.output}"
        )
    return _exit_status(failures, len(rows))


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small tokenizer on the bundled sample photos, evaluate it, write every output."""
    from .demo import latest_picture, run_demo

    out: Path = args.output
    summary = run_demo(out, steps_scale=args.steps_scale)
    m = summary["heldout_metrics"]
    stage2 = out / "stage2"
    print(
        f"\nheld-out tiles: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, semantic cosine "
        f"{m['semantic']['cosine']:.3f}, flat codes used {m['usage']['flat']['used']:.1%} "
        f"({summary['minutes']:.1f} min)\n"
        f"tokenizer:            {summary['tokenizer']}\n"
        f"metrics JSON:         {out / 'summary.json'} (training: {stage2 / 'metrics.jsonl'})\n"
        f"reconstruction grid:  {latest_picture(stage2 / 'images', 'recon')}\n"
        f"semantic token map:   {latest_picture(stage2 / 'images', 'tokens')}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig.load(args.config, args.set)
    final = train(cfg, resume=args.resume)
    print(
        f"tokenizer: {final}\nmetrics:   {Path(cfg.output_dir) / 'metrics.jsonl'}\n"
        f"pictures:  {Path(cfg.output_dir) / 'images'}"
    )
    return 0


def cmd_eval_recon(args: argparse.Namespace) -> int:
    from .data import DataConfig, eval_batches
    from .evaluation import evaluate_reconstruction, load_metric_backbones, semantic_fidelity

    model = _model(args)
    device = next(model.parameters()).device
    data = DataConfig(source=args.data, image_size=model.config.image_size, crop="center")
    backbones = load_metric_backbones(
        inception_weights=args.inception_weights,
        lpips_weights=args.lpips_weights,
        random_backbones=args.random_backbones,
        device=device,
    )
    metrics = evaluate_reconstruction(
        model, eval_batches(data, args.batch_size), backbones, device=device
    )
    metrics["semantic"] = semantic_fidelity(
        model, eval_batches(data, args.batch_size), device=device
    )
    metrics["model"], metrics["data"] = args.model, args.data
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}")
    return 0


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semhitok", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_model(p: argparse.ArgumentParser, batch: bool = True) -> argparse.ArgumentParser:
        p.add_argument("-m", "--model", default="tiny", help="preset, directory or hub id")
        p.add_argument(
            "--teacher-weights", help="local file/dir or hub id of teacher weights (presets only)"
        )
        p.add_argument("--seed", type=int, default=0, help="init seed for preset models")
        p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
        if batch:
            p.add_argument("--batch-size", type=int, default=16)
        return p

    sub.add_parser("presets", help="list the registered presets").set_defaults(fn=cmd_presets)
    p = sub.add_parser("info", help="sizes, vocabulary and parameters of a model")
    p.add_argument("model", help="preset, directory or hub id")
    p.set_defaults(fn=cmd_info)

    p = with_model(sub.add_parser("encode", help="images -> token file (.npz, int32 ids)"))
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("tokens.npz"))
    p.add_argument("--token-maps", type=Path, help="also write semantic token maps (PNG) here")
    p.set_defaults(fn=cmd_encode)

    p = with_model(sub.add_parser("decode", help="token file -> images (PNG)"))
    p.add_argument("tokens", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("decoded"))
    p.set_defaults(fn=cmd_decode)

    p = with_model(sub.add_parser("reconstruct", help="images -> reconstructions + grid.png"))
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("reconstructions"))
    p.set_defaults(fn=cmd_reconstruct)

    p = sub.add_parser("train", help="train one stage from a YAML config")
    p.add_argument(
        "config", type=Path, help="a YAML file, or a shipped config such as siglip-l16-256/stage1"
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)",
    )
    p.set_defaults(fn=cmd_train)

    p = with_model(sub.add_parser("eval-recon", help="rFID, PSNR, SSIM, LPIPS, codebook usage"))
    p.add_argument("--data", required=True, help="image folder, file list or tar shards")
    p.add_argument("-o", "--output", type=Path, help="also write the metrics JSON here")
    p.add_argument("--inception-weights", help="pt_inception-2015-12-05 FID weights file")
    p.add_argument("--lpips-weights", help="torchvision VGG16 weights file for LPIPS")
    p.add_argument(
        "--random-backbones",
        action="store_true",
        help="random Inception/VGG: smoke tests only, numbers not comparable",
    )
    p.set_defaults(fn=cmd_eval_recon)

    p = sub.add_parser("demo", help="the main job: train on the bundled photos, evaluate, show")
    p.add_argument("-o", "--output", type=Path, default=Path("outputs/demo"))
    p.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="multiply every stage's step count (e.g. 0.05 for a smoke run)",
    )
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
