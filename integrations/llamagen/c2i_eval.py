"""ImageNet class-to-image evaluation of a LlamaGen GPT trained on SemHiTok codes.

Sampling is LlamaGen's own ``autoregressive/sample/sample_c2i_ddp.py`` run through
:mod:`semhitok_llamagen.run`; the metrics are LlamaGen's ``evaluations/c2i/evaluator.py`` (ADM's
TensorFlow evaluator: IS, FID, sFID, precision, recall) on two ``.npz`` files. From the root of a
LlamaGen checkout::

    python -m semhitok_llamagen.c2i_eval gpt-weights results/.../0400000.pt -o gpt-b.pt --ema
    python -m semhitok_llamagen.c2i_eval sample --vq-model SemHiTok-16 --vq-ckpt semhitok-16.pt \\
        --gpt-model GPT-B --gpt-ckpt gpt-b.pt --nproc-per-node 8 -- --cfg-scale 2.0
    python evaluations/c2i/evaluator.py VIRTUAL_imagenet256_labeled.npz samples/<run>.npz

What the sampler needs (read from FoundationVision/LlamaGen at 5a50452d):

* ``--image-size``/``--downsample-size`` outside LlamaGen's choices for the 384 px tokenizer
  (27 x 27 tokens at /14): the launcher relaxes them; ``--image-size-eval 256`` resizes to the
  256 px reference batch, as LlamaGen does for its 384 px models.
* The GPT is built with ``vocab_size=args.codebook_size``, so ``--codebook-size K·m`` is all the
  vocabulary needs; ``--codebook-embed-dim`` only shapes ``decode_code``'s unused channel entry.
* ``train_c2i.py`` saves ``{"model", "optimizer", "steps", "args": argparse.Namespace, "ema"?}`` and
  the sampler reads it with ``torch.load(path, map_location="cpu")``: since torch 2.6 that means
  ``weights_only=True``, which refuses the Namespace, and it reads ``"model"``, never ``"ema"``.
  ``gpt-weights`` writes ``{"model": tensors}`` from either.
* CUDA and NCCL (the script asserts them). It writes ``<sample-dir>/<run>/{i:06d}.png`` and
  ``<sample-dir>/<run>.npz`` (``arr_0``, uint8 ``(N, H, W, 3)``, stacked in memory: 9.8 GB for
  50,000 images at 256 px).

``npz`` writes the same ``arr_0`` from any folder of equally sized images (our own samples, or a run
whose final stacking step died), one image in memory at a time.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from semhitok_plugin.data import image_files
from semhitok_plugin.images import load_image
from semhitok_plugin.model import resolve_config

from .register import env_models
from .vq_model import VQ_PRESETS

SAMPLER = "autoregressive/sample/sample_c2i_ddp.py"
EVALUATOR = "evaluations/c2i/evaluator.py"
REFERENCE_BATCH = "VIRTUAL_imagenet256_labeled.npz"  # ADM's ImageNet 256 reference (evaluator)
EVAL_SIZE = 256


# -- folder -> npz ---------------------------------------------------------------------------------
def write_npz(folder: str | Path, output: str | Path, num: int | None = None) -> tuple[int, ...]:
    """``output`` (``.npz``) holding ``arr_0``: uint8 ``(N, H, W, 3)`` of the first ``num`` images
    of ``folder`` (all by default) in file-name order, laid out as LlamaGen's
    ``create_npz_from_sample_folder`` writes it and ADM's evaluator reads it; written atomically.
    Returns the array's shape."""
    paths = [p for p in image_files(folder) if p.parent == Path(folder)]
    if num is not None:
        if len(paths) < num:
            raise ValueError(f"{folder} holds {len(paths)} images, fewer than --num {num}")
        paths = paths[:num]
    if not paths:
        raise ValueError(f"{folder} holds no images")
    first = _pixels(paths[0])
    shape = (len(paths), *first.shape)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
    output = Path(output)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        # np.savez's layout (an uncompressed zip member "arr_0.npy"), streamed image by image
        with (
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
            zf.open("arr_0.npy", "w", force_zip64=True) as f,
        ):
            np.lib.format.write_array_header_1_0(f, {**header, "shape": shape})
            for path in paths:
                pixels = first if path == paths[0] else _pixels(path)
                if pixels.shape != first.shape:
                    raise ValueError(f"{path} is {pixels.shape}, {paths[0]} is {first.shape}")
                f.write(pixels.tobytes())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return shape


def _pixels(path: Path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(load_image(path, as_stored=True), dtype=np.uint8))


# -- GPT checkpoint --------------------------------------------------------------------------------
def gpt_weights(checkpoint: str | Path, output: str | Path, *, ema: bool = False) -> int:
    """Write ``{"model": state_dict}`` (tensors only) from a LlamaGen training checkpoint, taking
    its EMA weights with ``ema``; return the number of tensors. The checkpoint's
    ``argparse.Namespace`` is the one non-tensor object allowed while unpickling."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    key = "ema" if ema else "model"
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(key), dict):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{checkpoint} has no {key!r} weights (it holds {keys})")
    state = {k: v.contiguous() for k, v in ckpt[key].items()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        torch.save({"model": state}, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return len(state)


# -- sampling --------------------------------------------------------------------------------------
def sampler_flags(vq_model: str) -> list[str]:
    """LlamaGen sampler flags that a SemHiTok ``--vq-model`` entry (a preset name or a
    ``$SEMHITOK_LLAMAGEN_MODELS`` name) dictates."""
    specs = {**VQ_PRESETS, **env_models()}
    if vq_model not in specs:
        raise ValueError(
            f"--vq-model {vq_model!r} is not a SemHiTok entry ({', '.join(sorted(specs))}; more "
            "through SEMHITOK_LLAMAGEN_MODELS=name=spec)"
        )
    config, _ = resolve_config(specs[vq_model])
    vocab = config.semantic.codebook_size * config.pixel.sub_codebook_size
    embed = config.semantic.code_dim + config.pixel.code_dim
    return [
        "--vq-model", vq_model,
        "--codebook-size", str(vocab),
        "--codebook-embed-dim", str(embed),
        "--image-size", str(config.image_size),
        "--downsample-size", str(config.teacher.patch_size),
        "--image-size-eval", str(EVAL_SIZE),
    ]  # fmt: skip


def sample_command(
    *,
    vq_model: str,
    vq_ckpt: str,
    gpt_model: str,
    gpt_ckpt: str,
    nproc_per_node: int,
    num_samples: int = 50_000,
    sample_dir: str = "samples",
    extra: Sequence[str] = (),
) -> list[str]:
    """torchrun running LlamaGen's DDP sampler through our launcher; ``extra`` (``--cfg-scale``,
    ``--top-k``, ``--per-proc-batch-size`` ...) is passed on, after our flags, so it wins. The
    launcher's own ``--semhitok-*`` options in ``extra`` (a factorised head: the same as in
    training) go before the script, where the launcher reads them."""
    launcher, sampler = [], []
    args = iter(extra)
    for arg in args:
        if arg.startswith("--semhitok-"):
            launcher += [arg] if "=" in arg else [arg, next(args, "")]
        else:
            sampler.append(arg)
    return [
        "torchrun", f"--nproc_per_node={nproc_per_node}",
        "-m", "semhitok_llamagen.run", *launcher, SAMPLER,
        *sampler_flags(vq_model),
        "--vq-ckpt", vq_ckpt,
        "--gpt-model", gpt_model,
        "--gpt-ckpt", gpt_ckpt,
        "--num-fid-samples", str(num_samples),
        "--sample-dir", sample_dir,
        *sampler,
    ]  # fmt: skip


def check_sampling_inputs(vq_ckpt: str, gpt_ckpt: str, *, from_fsdp: bool = False) -> None:
    """Fail before torchrun starts: LlamaGen's sampler in the working directory, both checkpoints
    on disk, and a GPT checkpoint the sampler can load (weights-only, with a ``"model"`` entry)."""
    if not Path(SAMPLER).is_file():
        raise FileNotFoundError(f"no {SAMPLER} here: run from the root of a LlamaGen checkout")
    for option, path in (("--vq-ckpt", vq_ckpt), ("--gpt-ckpt", gpt_ckpt)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path} does not exist")
    convert = f"python -m semhitok_llamagen.c2i_eval gpt-weights {gpt_ckpt} -o GPT.pt [--ema]"
    try:  # mmap: only the pickle is read, not the tensors
        ckpt = torch.load(gpt_ckpt, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"the sampler cannot load --gpt-ckpt {gpt_ckpt} with torch's weights-only default "
            f"(a training checkpoint holds argparse.Namespace): convert it with {convert}"
        ) from err
    if not from_fsdp and not (isinstance(ckpt, dict) and "model" in ckpt):
        raise ValueError(f"--gpt-ckpt {gpt_ckpt} has no 'model' entry: convert it with {convert}")


def evaluator_command(samples_npz: str | Path) -> str:
    return f"python {EVALUATOR} {REFERENCE_BATCH} {shlex.quote(str(samples_npz))}"


# -- command line ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semhitok_llamagen.c2i_eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Then: {evaluator_command('samples/<run>.npz')}",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("npz", help="folder of samples -> .npz for LlamaGen's evaluator")
    p.add_argument("folder", type=Path)
    p.add_argument("-o", "--output", type=Path, help="default: FOLDER.npz")
    p.add_argument("--num", type=int, help="the first N images (default: all)")

    p = sub.add_parser("gpt-weights", help="LlamaGen training checkpoint -> sampler --gpt-ckpt")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--ema", action="store_true", help="take the EMA weights (trained with --ema)")

    p = sub.add_parser("sample", help="LlamaGen's DDP sampler with SemHiTok, under torchrun")
    p.add_argument("--vq-model", required=True, help="a SemHiTok VQ_models name, e.g. SemHiTok-16")
    p.add_argument("--vq-ckpt", required=True, help="written by python -m semhitok_llamagen.export")
    p.add_argument("--gpt-model", required=True, help="GPT-B, GPT-L, ...")
    p.add_argument("--gpt-ckpt", required=True, help="written by gpt-weights")
    p.add_argument("--nproc-per-node", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=50_000)
    p.add_argument("--sample-dir", default="samples")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then more sampler flags")
    args = parser.parse_args(argv)

    try:
        if args.command == "npz":
            output = args.output or args.folder.with_suffix(".npz")
            shape = write_npz(args.folder, output, args.num)
            print(f"wrote {output}: arr_0 uint8 {shape}\nthen: {evaluator_command(output)}")
        elif args.command == "gpt-weights":
            count = gpt_weights(args.checkpoint, args.output, ema=args.ema)
            print(f"wrote {args.output}: {count} tensors ({'ema' if args.ema else 'model'})")
        else:
            return _sample(args)
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)
        return 2
    return 0


def _sample(args: argparse.Namespace) -> int:
    extra = [a for a in args.extra if a != "--"]
    command = sample_command(
        vq_model=args.vq_model,
        vq_ckpt=args.vq_ckpt,
        gpt_model=args.gpt_model,
        gpt_ckpt=args.gpt_ckpt,
        nproc_per_node=args.nproc_per_node,
        num_samples=args.num_samples,
        sample_dir=args.sample_dir,
        extra=extra,
    )
    print(shlex.join(command))
    if args.dry_run:
        return 0
    check_sampling_inputs(args.vq_ckpt, args.gpt_ckpt, from_fsdp="--from-fsdp" in extra)
    done = subprocess.run(command, check=False)
    if done.returncode == 0:
        runs = sorted(Path(args.sample_dir).glob("*.npz"), key=lambda p: p.stat().st_mtime)
        if runs:
            print(f"then: {evaluator_command(runs[-1])}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
