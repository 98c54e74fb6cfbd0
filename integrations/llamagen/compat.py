"""What the ``semhitok_llamagen.run`` launcher adapts in LlamaGen at run time (no file changes).

Each shim answers one measured mismatch (FoundationVision/LlamaGen at 5a50452d):

* **int32 code files.** Our extractor stores ids as int32 (196,607 > 65,535, and half the size
  of int64); LlamaGen's ``dataset/imagenet.py`` ``CustomDataset.__getitem__`` returns the file's
  dtype and ``autoregressive/models/gpt.py`` feeds it to ``F.cross_entropy`` as targets, which
  needs int64 ("expected target dtype to be Long"). The reader is wrapped to return int64.
* **Dataset length.** ``CustomDataset`` lists ``range(1281167)`` files (ImageNet-1k train,
  hard-coded); it is set to the number of code files actually present, so subsets and other
  datasets train.
* **Grid choices.** Every script restricts ``--downsample-size`` to [8, 16] and ``--image-size``
  to a few sizes; the 384 px preset tokenizes with a /14 teacher (27 × 27 tokens), so those two
  options lose their ``choices`` (their types and defaults stay).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os

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


def patch_code_dataset() -> bool:
    """int64 codes and labels, and the real file count, from LlamaGen's ``CustomDataset``;
    False when this LlamaGen has no ``dataset.imagenet`` (nothing to patch)."""
    try:
        module = importlib.import_module("dataset.imagenet")
    except ImportError:
        return False
    cls = module.CustomDataset
    if getattr(cls, "_semhitok", False):
        return True
    init, getitem = cls.__init__, cls.__getitem__

    @functools.wraps(init)
    def __init__(self, feature_dir, label_dir):
        init(self, feature_dir, label_dir)
        count = sum(name.endswith(".npy") for name in os.listdir(feature_dir))
        self.feature_files = [f"{i}.npy" for i in range(count)]
        self.label_files = [f"{i}.npy" for i in range(count)]

    @functools.wraps(getitem)
    def __getitem__(self, index):
        features, labels = getitem(self, index)
        return features.long(), labels.long()

    cls.__init__, cls.__getitem__, cls._semhitok = __init__, __getitem__, True
    return True


__all__ = ["patch_code_dataset", "relax_grid_choices"]
