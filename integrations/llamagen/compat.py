"""What the ``semhitok_llamagen.run`` launcher adapts in LlamaGen at run time (no file changes).

Each shim answers one measured mismatch (FoundationVision/LlamaGen at 5a50452d):

* **int32 code files, dataset length.** Our extractor stores ids as int32 (196,607 > 65,535,
  and half the size of int64); LlamaGen's ``dataset/imagenet.py`` ``CustomDataset`` returns the
  file's dtype, which ``autoregressive/models/gpt.py`` feeds to ``F.cross_entropy`` as targets
  (int64 only: "expected target dtype to be Long"), and lists ``range(1281167)`` files
  (ImageNet-1k train, hard-coded). ``dataset.build.build_imagenet_code`` is pointed at
  :func:`semhitok_llamagen.dataset.build_imagenet_code`: the same directories and read rule,
  int64 out, the length read from disk.
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


def use_code_dataset() -> bool:
    """Make LlamaGen's ``build_dataset`` build :class:`~semhitok_llamagen.dataset.CodeDataset`;
    False when this LlamaGen has no ``dataset.build`` (nothing to swap)."""
    try:
        build = importlib.import_module("dataset.build")
    except ImportError:
        return False
    build.build_imagenet_code = build_imagenet_code
    return True


__all__ = ["relax_grid_choices", "use_code_dataset"]
