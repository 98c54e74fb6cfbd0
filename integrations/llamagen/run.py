"""Run a LlamaGen script with SemHiTok registered: ``python -m semhitok_llamagen.run SCRIPT ARGS``.

From the root of a LlamaGen checkout (LlamaGen imports its packages from there)::

    torchrun --nproc_per_node 8 -m semhitok_llamagen.run autoregressive/train/train_c2i.py ...
    python -m semhitok_llamagen.run autoregressive/sample/sample_c2i.py --vq-model SemHiTok-16 ...

The script runs unchanged as ``__main__`` after :func:`~semhitok_llamagen.register.register`
has added the SemHiTok entries to ``VQ_models`` and the shims of :mod:`.compat` are in place
(int64 codes from int32 files, the real dataset length, ``--downsample-size 14``, the GPT's
vocabulary from ``--codebook-size`` in the text-to-image samplers).

Launcher options go before the script: ``--semhitok-head factorised`` (with
``--semhitok-sub-codebook-size M``, default 12, and ``--semhitok-head-rank R``) gives every GPT
the factorised semantic -> pixel head and embedding (:mod:`.factorised`); use the same options
for training and sampling.
"""

from __future__ import annotations

import os
import runpy
import sys

from .compat import default_gpt_vocab, relax_grid_choices, use_code_dataset
from .factorised import take_head_options, use_factorised_head
from .register import register


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    head, argv = take_head_options(argv)
    if not argv:
        sys.exit("error: no LlamaGen script after the launcher options")
    script, *args = argv
    if not os.path.isfile(script):
        sys.exit(f"error: no LlamaGen script {script!r} (run from the LlamaGen checkout's root)")
    sys.path.insert(0, os.getcwd())  # LlamaGen's `from tokenizer... / autoregressive...` imports
    register()
    relax_grid_choices()
    use_code_dataset()
    if (vocab := flag_value(args, "--codebook-size")) is not None:
        default_gpt_vocab(int(vocab))
    if head is not None:
        use_factorised_head(head)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag V`` or ``--flag=V``), the last one winning."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


if __name__ == "__main__":
    main()
