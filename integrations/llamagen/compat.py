"""What the ``semhitok_llamagen.run`` launcher adapts in LlamaGen at run time (no file changes).

Each shim answers one measured mismatch (FoundationVision/LlamaGen at 5a50452d):

* **int32 code files, dataset length.** Our extractor stores ids as int32 (196,607 > 65,535,
  and half the size of int64); LlamaGen's ``dataset/imagenet.py`` ``CustomDataset`` returns the
  file's dtype, which ``autoregressive/models/gpt.py`` feeds to ``F.cross_entropy`` as targets
  (int64 only: "expected target dtype to be Long"), and lists ``range(1281167)`` files
  (ImageNet-1k train, hard-coded). ``dataset.build.build_imagenet_code`` is pointed at
  :func:`semhitok_llamagen.dataset.build_imagenet_code`: the same directories and read rule,
  int64 out, the length read from disk.
* **Text-to-image GPT vocabulary.** ``autoregressive/sample/sample_t2i.py`` (and ``_ddp``)
  build ``GPT_models[...](block_size=..., cls_token_num=..., model_type=...)`` without
  ``vocab_size``, so the GPT gets ``ModelArgs.vocab_size = 16384`` and a 196,608-id checkpoint
  fails to load; when the command line has ``--codebook-size``, the GPT factories default
  ``vocab_size`` to it (a value a script passes itself still wins).
* **Grid choices.** Every script restricts ``--downsample-size`` to [8, 16] and ``--image-size``
  to a few sizes; the 384 px preset tokenizes with a /14 teacher (27 × 27 tokens), so those two
  options lose their ``choices`` (their types and defaults stay).
"""

from __future__ import annotations

import argparse
import functools
import importlib

from .dataset import build_imagenet_code

UNRESTRICTED = ("--downsample-size", "--image-size")


def relax_grid_choices() -> None:
    """Let ``--downsample-size 14`` and any ``--image-size`` through LlamaGen's argparse."""
    original = argparse._ActionsContainer.add_argument
    if getattr(original, "_semhitok", False):
        return

    @functools.wraps(original)
    def add_argument(self, *names, **kwargs):
        if any(name in UNRESTRICTED for name in names):
            kwargs.pop("choices", None)
        return original(self, *names, **kwargs)

    add_argument._semhitok = True
    argparse._ActionsContainer.add_argument = add_argument


def use_code_dataset() -> None:
    """Make LlamaGen's ``build_dataset`` build :class:`~semhitok_llamagen.dataset.CodeDataset`
    (nothing to do in a LlamaGen without ``dataset.build``)."""
    try:
        build = importlib.import_module("dataset.build")
    except ImportError:
        return
    build.build_imagenet_code = build_imagenet_code


def default_gpt_vocab(vocab_size: int) -> None:
    """``GPT_models[name](...)`` builds a ``vocab_size``-id GPT unless told otherwise."""
    try:
        gpt = importlib.import_module("autoregressive.models.gpt")
    except ImportError:
        return
    for name, factory in list(gpt.GPT_models.items()):
        if not getattr(factory, "_semhitok", False):
            gpt.GPT_models[name] = _defaulting_vocab(factory, vocab_size)


def _defaulting_vocab(factory, vocab_size: int):
    @functools.wraps(factory)
    def build(**kwargs):
        kwargs.setdefault("vocab_size", vocab_size)
        return factory(**kwargs)

    build._semhitok = True
    return build


__all__ = ["default_gpt_vocab", "relax_grid_choices", "use_code_dataset"]
