"""Write a SemHiTok model as a LlamaGen ``--vq-ckpt``: ``{"model": state_dict}``, tensors only.

    python -m semhitok_llamagen.export --model /ckpt/semhitok-l16-256/final -o semhitok-16.pt

LlamaGen's scripts read it with ``torch.load(path, map_location="cpu")["model"]`` (weights-only
loading works: the file holds plain tensors) and load it strictly into the ``VQ_models`` entry
named by ``--vq-model``; the command prints the flags that entry needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from semhitok_plugin import SemHiTokConfig, get_preset, load_model

from .vq_model import VQ_PRESETS, SemHiTokVQModel


def export(model_spec: str, output: Path) -> SemHiTokVQModel:
    vq = SemHiTokVQModel(load_model(model_spec), model_spec)
    state = {k: v.detach().cpu().contiguous() for k, v in vq.state_dict().items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, output)
    return vq


def llamagen_flags(vq: SemHiTokVQModel, name: str, checkpoint: Path) -> dict[str, str]:
    """The flags each kind of LlamaGen script needs for this tokenizer (argparse rejects the
    others: only the trainers take --vocab-size, only the samplers the VQ flags)."""
    config = vq.tokenizer.config
    grid = f"--image-size {config.image_size} --downsample-size {config.teacher.patch_size}"
    return {
        "train_c2i.py": f"--vocab-size {vq.codebook_size} {grid}",
        "sample_c2i*.py": (
            f"--vq-model {name} --vq-ckpt {checkpoint} --codebook-size {vq.codebook_size} "
            f"--codebook-embed-dim {vq.embed_dim} {grid}"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semhitok_llamagen.export", description=__doc__)
    parser.add_argument("--model", required=True, help="SemHiTok directory, hub id or preset")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    vq = export(args.model, args.output)
    config = vq.tokenizer.config
    names = [
        n for n, p in VQ_PRESETS.items() if _architecture(get_preset(p)) == _architecture(config)
    ]
    name = names[0] if names else "my-semhitok"
    print(f"wrote {args.output}")
    if not names:
        print(f"name it for LlamaGen: export SEMHITOK_LLAMAGEN_MODELS={name}={args.model}")
    for script, flags in llamagen_flags(vq, name, args.output).items():
        print(f"{script}: {flags}")
    return 0


def _architecture(config: SemHiTokConfig) -> dict:
    """A config without the teacher's weight source (the weights come from the checkpoint)."""
    data = config.to_dict()
    data["teacher"].pop("weights", None)
    return data


if __name__ == "__main__":
    sys.exit(main())
