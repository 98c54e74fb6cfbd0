"""The ``semhitok`` command line: tokenize, train, evaluate, inspect, and the demo job.

MODEL is a preset name (random weights from ``--seed``; teacher weights from the preset or
``--teacher-weights``), a directory written by ``save_pretrained``, or a hub repo id. Token files
and token sets are described in :mod:`semhitok_plugin.token_files`. Images are given as files,
folders (searched recursively) or ``.txt`` / ``.jsonl`` lists, as for ``eval-recon --data``, and
``encode`` also reads WebDataset tar shards. Unreadable images are reported by name and make the
exit status 1; the other images are still processed. Encoding keeps nothing per image but its
ids, shows a progress bar on stderr and ends with a line counting encoded and failed images.

Under torchrun (``torchrun --nproc_per_node G -m semhitok_plugin.cli encode INPUTS -o DIR``)
``encode`` writes a sharded token set to DIR instead of one file, each rank on its own device,
resumable by running the same command again (:mod:`semhitok_plugin.sharded_encode`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoint import CheckpointWriteError
from .config import ConfigError
from .distributed import launched, process_group
from .hub import WeightsNotFoundError, resolve_file
from .ids import TokenIdError
from .images import to_pil
from .model import CheckpointMismatchError, SemHiTok, load_model, resolve_config
from .plugins import available_presets
from .sharded_encode import (
    DEFAULT_SHARD_SIZE,
    PRECISIONS,
    Chunk,
    EncodedBatch,
    encode_chunks,
    encode_set,
    file_count,
    plan_chunks,
    resolve_precision,
)
from .token_files import TokenFileError, output_names, read_tokens, write_tokens
from .visualize import grid, token_map

# Errors that describe the user's input, not a bug: main() prints their one-line message (naming
# the field or file and what would be accepted) instead of a traceback. Anything else is a bug and
# keeps its traceback.
USER_ERRORS = (
    CheckpointWriteError,  # names the file and the previous, still loadable checkpoint
    ConfigError,  # config values, unknown keys, data sources, JSONL lists
    FileNotFoundError,  # missing inputs, and WeightsNotFoundError
    IsADirectoryError,  # a folder given where a file is written or read
    NotADirectoryError,  # a file given where a folder is expected
    PermissionError,
    CheckpointMismatchError,
    TokenIdError,
    TokenFileError,
)


# -- helpers ---------------------------------------------------------------------------------------
def print_user_error(err: Exception) -> None:
    """``error: <message>`` on stderr, always one line, the whole answer to a user mistake; the
    Qwen CLI reports its errors the same way."""
    print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)


def pick_device(name: str | None) -> torch.device:
    """The named device, else CUDA when present, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _model(args: argparse.Namespace, device: torch.device | None = None) -> SemHiTok:
    model = load_model(args.model, teacher_weights=args.teacher_weights, seed=args.seed)
    return model.to(device or pick_device(args.device))


def _report_unreadable(failures: list[str]) -> Callable[[str, str], None]:
    def report(name: str, reason: str) -> None:
        tqdm.write(f"error: cannot read image {name!r}: {reason}", file=sys.stderr)  # own line
        failures.append(name)

    return report


def batched(items: Iterator, batch_size: int) -> Iterator[list]:
    """Lists of ``batch_size`` items (the last may be shorter); itertools.batched is 3.12+."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _image_names(chunks: list[Chunk], what: str) -> list[str]:
    """The names of the images of ``chunks``, for ``what``, which needs them before encoding:
    a tar's members are only known once read, so tar shards are refused."""
    if file_count(chunks) is None:
        raise ConfigError(f"{what} takes image files, folders or lists, not tar shards")
    return [str(path) for chunk in chunks for path in chunk.files]


def _encode_files(
    model: SemHiTok,
    chunks: list[Chunk],
    failures: list[str],
    *,
    batch_size: int,
    num_workers: int = 0,
    precision: str = "fp32",
) -> Iterator[EncodedBatch]:
    """The batches of one process's pass (:func:`sharded_encode.encode_chunks`), then one line
    on stderr with the counts and the rate."""
    total = file_count(chunks)
    start, done = time.perf_counter(), 0
    for batch in encode_chunks(
        model,
        list(enumerate(chunks)),
        batch_size=batch_size,
        num_workers=num_workers,
        precision=precision,
        report=_report_unreadable(failures),
        progress=total is None or total >= 2 * batch_size,
    ):
        yield batch
        done += len(batch.names)
    _print_counts(done, len(failures), time.perf_counter() - start)


def _print_counts(done: int, failed: int, seconds: float, suffix: str = "") -> None:
    print(
        f"encoded {done} of {done + failed} images in {seconds:.1f} s "
        f"({done / max(seconds, 1e-9):.1f} images/s){suffix}, {failed} failed",
        file=sys.stderr,
    )


def _device(model: SemHiTok) -> torch.device:
    return next(model.parameters()).device


SHOWN_FAILURES = 10  # each failure was already named as it happened


def _exit_status(failures: list[str], done: int) -> int:
    if failures:
        more = len(failures) - SHOWN_FAILURES
        listed = f"{failures[:SHOWN_FAILURES]}" + (f" and {more} more" if more > 0 else "")
        print(f"{len(failures)} of {len(failures) + done} images failed: {listed}", file=sys.stderr)
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
    sharded = launched()
    # a bad list fails before the model is built
    chunks = plan_chunks(args.images, args.shard_size if sharded else None)
    if sharded:
        return _encode_set(args, chunks)
    png_names = _png_names(_image_names(chunks, "--token-maps")) if args.token_maps else {}
    model, failures = _model(args), []
    precision = resolve_precision(args.precision, _device(model), sharded=False)
    parts: list[np.ndarray] = []  # the ids: the only per-image state
    names: list[str] = []
    for batch in _encode_files(
        model,
        chunks,
        failures,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        precision=precision,
    ):
        if batch.out is None:
            continue
        parts.append(batch.out.flat_ids.cpu().numpy().astype(np.int32))
        names += batch.names
        if args.token_maps:
            pngs = [png_names[n] for n in batch.names]
            _save_token_maps(args.token_maps, pngs, batch.crops, batch.out.sem_ids, model)
    if names:
        path = write_tokens(
            args.output or Path("tokens.npz"),
            torch.from_numpy(np.concatenate(parts)),
            names,
            model,
            precision=None if precision == "fp32" else precision,  # fp32: the file as always
        )
        print(f"wrote {len(names)} token maps of {model.grid_size} to {path}")
    return _exit_status(failures, len(names))


def _encode_set(args: argparse.Namespace, chunks: list[Chunk]) -> int:
    """This rank's part of ``encode`` under torchrun: a sharded token set in ``args.output``."""
    if args.token_maps:
        raise ConfigError("--token-maps is for a single token file (a run without torchrun)")
    output = args.output or Path("tokens")
    if output.suffix == ".npz":
        raise ConfigError(
            f"-o {output}: under torchrun encode writes a token set, a directory; give a "
            "name without .npz (a run without torchrun writes one .npz file)"
        )
    with process_group(args.device) as (launch, device):
        model, failures = _model(args, device), []
        result = encode_set(
            model,
            chunks,
            output,
            launch=launch,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            precision=resolve_precision(args.precision, device, sharded=True),
            report=_report_unreadable(failures),
            progress=launch.rank == 0,
        )
    if launch.rank != 0:
        return 0  # rank 0 reports for the set
    kept = f"; {result.kept} shards kept from an earlier run" if result.kept else ""
    ranks = f" on {launch.world_size} rank{'s' if launch.world_size > 1 else ''}"
    _print_counts(result.encoded, result.failed, result.seconds, ranks + kept)
    index = result.index
    print(
        f"wrote {len(index.images)} token maps of {index.source.grid} in "
        f"{len(index.shards)} shards to {output} (index {index.path})"
    )
    return _exit_status([name for name, _ in index.failures], len(index.images))


def _save_token_maps(directory: Path, pngs, crops, sem_ids, model: SemHiTok) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for png, crop, ids in zip(pngs, crops, sem_ids, strict=True):
        token_map(ids, model.config.image_size, Image.fromarray(crop.numpy())).save(directory / png)


def _png_names(names: Sequence[str], reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """One distinct output PNG name per input image (``token_files.output_names``): two inputs
    with the same stem in different folders, or one named like a ``reserved`` file, do not
    overwrite each other."""
    return dict(zip(names, output_names(list(names), reserved), strict=True))


def cmd_decode(args: argparse.Namespace) -> int:
    model = _model(args)
    ids, files = read_tokens(args.tokens, model, allow_other_model=args.allow_other_model)
    names = output_names(files)
    device = next(model.parameters()).device
    args.output.mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(ids), args.batch_size), unit="batch", disable=len(ids) < 64):
        images = to_pil(model.decode(ids[start : start + args.batch_size].to(device)))
        for name, img in zip(names[start : start + args.batch_size], images, strict=True):
            img.save(args.output / name)
    print(f"wrote {len(ids)} images to {args.output}")
    return 0


GRID_ROWS = 16  # grid.png shows the first images only: one row each would grow without bound


def cmd_reconstruct(args: argparse.Namespace) -> int:
    chunks = plan_chunks(args.images)  # a bad list fails before the model is built
    png_names = _png_names(_image_names(chunks, "reconstruct"), reserved=("grid",))
    model, failures = _model(args), []
    args.output.mkdir(parents=True, exist_ok=True)
    rows, done = [], 0
    for batch in _encode_files(model, chunks, failures, batch_size=args.batch_size):
        if batch.out is None:
            continue
        out = batch.out
        recons = to_pil(model.decode_features(out.sem_features, out.pix_features).clamp(-1, 1))
        crops = [Image.fromarray(c.numpy()) for c in batch.crops]
        for name, crop, recon, ids in zip(batch.names, crops, recons, out.sem_ids, strict=True):
            recon.save(args.output / png_names[name])
            if len(rows) < GRID_ROWS:
                rows.append([crop, recon, token_map(ids, model.config.image_size, crop)])
        done += len(batch.names)
    if rows:
        grid(rows).save(args.output / "grid.png")
        print(
            f"wrote {done} reconstructions and grid.png (first {len(rows)}: input | "
            f"reconstruction | semantic tokens) to {args.output}"
        )
    return _exit_status(failures, done)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small tokenizer on the bundled sample photos, evaluate it, write every output."""
    from .demo import latest_picture, run_demo

    out: Path = args.output
    summary = run_demo(out, steps_scale=args.steps_scale)
    m, unseen = summary["heldout_metrics"], summary["unseen"]
    stage2 = out / "stage2"
    print(
        f"\nsemantic cosine {m['semantic']['cosine']:.3f}, flat codes used "
        f"{m['usage']['flat']['used']:.1%} on the held-out tiles ({summary['minutes']:.1f} min)"
    )
    columns = {
        f"held-out tiles ({m['images']})": (m, summary["baselines"]),
        f"unseen photos ({unseen['metrics']['images']})": (unseen["metrics"], unseen["baselines"]),
    }
    print(comparison_table(columns))
    print(
        f"tokenizer:            {summary['tokenizer']}\n"
        f"metrics JSON:         {out / 'summary.json'} (training: {stage2 / 'metrics.jsonl'})\n"
        f"reconstruction grid:  {latest_picture(stage2 / 'images', 'recon')}\n"
        f"semantic token map:   {latest_picture(stage2 / 'images', 'tokens')}"
    )
    return 0


def comparison_table(columns: dict[str, tuple[dict, dict]]) -> str:
    """PSNR / SSIM of the tokenizer and its equal-bit baselines, one column pair per image set:
    ``{title: (tokenizer metrics, evaluate_baselines result)}``."""
    first = next(iter(columns.values()))[1]
    labels = {"tokenizer": f"tokenizer ({first['bits_per_image']:.0f} bits)"}
    if "thumbnail" in first:
        t = first["thumbnail"]
        labels["thumbnail"] = (
            f"thumbnail {t['side']}x{t['side']}, {t['levels']} levels ({t['bits']} bits)"
        )
    if "kmeans" in first:
        k = first["kmeans"]
        labels["kmeans"] = (
            f"k-means, {k['centroids']} x {k['patch']} px patches ({k['bits']:.0f} bits)"
        )
    width = max(map(len, labels.values()))
    cell = max(16, *map(len, columns))  # "PSNR (dB)   SSIM" is 16
    lines = [" " * width + "".join(f" | {title:>{cell}}" for title in columns)]
    lines.append(" " * width + f" | {'PSNR (dB)   SSIM':>{cell}}" * len(columns))
    for key, label in labels.items():
        cells = []
        for metrics, baselines in columns.values():
            row = metrics if key == "tokenizer" else baselines[key]
            cells.append(f" | {row['psnr']:>{cell - 7}.2f}  {row['ssim']:5.3f}")
        lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from .training import TrainConfig, TrainingDiverged, train

    try:
        cfg = TrainConfig.load(args.config, args.set)
    except yaml.YAMLError as err:  # the syntax of the file or of a --set value
        problem = _yaml_problem(err)
        raise ConfigError(f"invalid YAML in {args.config} or a --set value: {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{args.config} is not a YAML text file ({err.reason})") from None
    try:
        final = train(cfg, resume=args.resume)
    except TrainingDiverged as err:  # its message names the last good checkpoint
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"tokenizer: {final}\nmetrics:   {Path(cfg.output_dir) / 'metrics.jsonl'}\n"
        f"pictures:  {Path(cfg.output_dir) / 'images'}"
    )
    return 0


def _yaml_problem(err: Exception) -> str:
    """What the YAML parser objects to and where, on one line (its message spans several)."""
    mark = getattr(err, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{getattr(err, 'problem', None) or err}{at}"


def cmd_eval_recon(args: argparse.Namespace) -> int:
    from .data import DataConfig, eval_batches
    from .evaluation import (
        evaluate_baselines,
        evaluate_reconstruction,
        fit_patch_kmeans,
        load_metric_backbones,
        semantic_fidelity,
    )

    model = _model(args)
    device = next(model.parameters()).device
    crop = "adm" if args.protocol == "llamagen" else "center"
    data = DataConfig(source=args.data, image_size=model.config.image_size, crop=crop)
    backbones = load_metric_backbones(
        inception_weights=args.inception_weights,
        lpips_weights=args.lpips_weights,
        random_backbones=args.random_backbones,
        device=device,
    )
    metrics = evaluate_reconstruction(
        model, eval_batches(data, args.batch_size), backbones, device=device, npz_dir=args.npz_dir
    )
    metrics["protocol"] = args.protocol
    metrics["semantic"] = semantic_fidelity(
        model, eval_batches(data, args.batch_size), device=device
    )
    kmeans = None
    if args.baseline_train:
        train = replace(data, source=args.baseline_train, crop="random", scale=args.baseline_scale)
        kmeans = fit_patch_kmeans(model, train, crops=args.baseline_crops)
    metrics["baselines"] = evaluate_baselines(
        model, eval_batches(data, args.batch_size), backbones, kmeans=kmeans, device=device
    )
    metrics["model"], metrics["data"] = args.model, args.data
    text = json.dumps(metrics, indent=2)
    print(text)
    print(comparison_table({args.data: (metrics, metrics["baselines"])}), file=sys.stderr)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}")
    return 0


IMAGES_HELP = "image files, folders (searched recursively) or .txt/.jsonl lists of images"


def positive_int(text: str) -> int:
    """An argparse type for counts that cannot be zero: a batch of zero images is a mistake,
    not an empty run (the Qwen CLI uses it too)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _area_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be MIN,MAX, got {text!r}") from None
    if not 0 < low <= high <= 1:
        raise argparse.ArgumentTypeError(f"must satisfy 0 < MIN <= MAX <= 1, got {text!r}")
    return low, high


def _non_negative_int(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


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
            p.add_argument("--batch-size", type=positive_int, default=16)
        return p

    sub.add_parser("presets", help="list the registered presets").set_defaults(fn=cmd_presets)
    p = sub.add_parser("info", help="sizes, vocabulary and parameters of a model")
    p.add_argument("model", help="preset, directory or hub id")
    p.set_defaults(fn=cmd_info)

    p = with_model(sub.add_parser("encode", help="images -> token file (.npz, int32 ids)"))
    p.add_argument("images", nargs="+", type=Path, help=IMAGES_HELP + ", or tar shards")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="token file (default tokens.npz); under torchrun, the token set's directory "
        "(default tokens)",
    )
    p.add_argument("--token-maps", type=Path, help="also write semantic token maps (PNG) here")
    p.add_argument(
        "--num-workers", type=_non_negative_int, default=0, help="image decoding processes"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast for a token set on CUDA, else fp32",
    )
    p.add_argument(
        "--shard-size",
        type=positive_int,
        default=DEFAULT_SHARD_SIZE,
        help="torchrun: image files per shard (each tar is one shard)",
    )
    p.set_defaults(fn=cmd_encode)

    p = with_model(sub.add_parser("decode", help="token file or token set -> images (PNG)"))
    p.add_argument("tokens", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("decoded"))
    p.add_argument(
        "--allow-other-model",
        action="store_true",
        help="decode although the file names another model (the same tokenizer, renamed)",
    )
    p.set_defaults(fn=cmd_decode)

    p = with_model(sub.add_parser("reconstruct", help="images -> reconstructions + grid.png"))
    p.add_argument("images", nargs="+", type=Path, help=IMAGES_HELP)
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
        "--protocol",
        choices=("llamagen", "pytorch-fid"),
        default="llamagen",
        help="llamagen (the paper's): ADM's center_crop_arr preprocessing; pytorch-fid: bicubic "
        "resize + centre crop. rfid is pytorch-fid's Inception in both; see docs/evaluation.md",
    )
    p.add_argument(
        "--npz-dir",
        type=Path,
        help="write inputs.npz and reconstructions.npz (uint8 arr_0) for ADM's TF evaluator",
    )
    p.add_argument(
        "--random-backbones",
        action="store_true",
        help="random Inception/VGG: smoke tests only, numbers not comparable",
    )
    p.add_argument(
        "--baseline-train",
        metavar="DATA",
        help="training images: also report k-means over their token-sized patches with the "
        "tokenizer's vocabulary size (the thumbnail baseline is always reported)",
    )
    p.add_argument(
        "--baseline-scale",
        type=_area_range,
        default=(0.5, 1.0),
        metavar="MIN,MAX",
        help="area range of the random training crops k-means is fitted on (0.5,1.0)",
    )
    p.add_argument(
        "--baseline-crops", type=positive_int, default=2048, help="training crops for k-means"
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
        print_user_error(err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
