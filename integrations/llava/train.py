"""``semhitok-llava-train``: LLaVA's own ``train()`` with SemHiTok installed first.

Takes every flag of ``llava/train/train.py`` unchanged, plus ``--attn_implementation``:
LLaVA's ``train_mem.py`` hard-codes ``flash_attention_2``, which needs CUDA and the flash-attn
package; ``auto`` (the default) uses it when both are there and PyTorch SDPA otherwise (CPU).

    semhitok-llava-train --model_name_or_path lmsys/vicuna-7b-v1.5 --vision_tower semhitok ...
    deepspeed --module semhitok_llava.train --deepspeed zero2.json ...
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

import torch

from .compat import check_transformers_for_training, name_image_errors
from .install import launcher_args

ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")


def attention_implementation(choice: str) -> str:
    if choice != "auto":
        return choice
    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if flash else "sdpa"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="semhitok-llava-train",
        add_help=False,
        description="LLaVA-v1.5 training with --vision_tower semhitok[:preset|dir|hub-id] and "
        "--mm_projector_type dual_mlp2x_gelu; every other flag is LLaVA's (listed below).",
    )
    parser.add_argument("--attn_implementation", choices=ATTENTION, default="auto")
    ours, rest = launcher_args(parser, argv)
    check_transformers_for_training()
    import llava.train.train as llava_train

    name_image_errors(llava_train)
    attention = attention_implementation(ours.attn_implementation)
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *rest]  # LLaVA parses sys.argv itself
    try:
        llava_train.train(attn_implementation=attention)
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    main()
