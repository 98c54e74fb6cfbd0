"""Putting SemHiTok into LlamaGen's ``VQ_models`` (``tokenizer/tokenizer_image/vq_model.py``).

Every LlamaGen script looks its tokenizer up as ``VQ_models[args.vq_model]`` (and lists the keys
as the ``--vq-model`` choices), so adding our factories to that very dict, before the script
runs, is all the integration needs: no LlamaGen file changes. Besides the presets of
:data:`~semhitok_llamagen.vq_model.VQ_PRESETS`, ``SEMHITOK_LLAMAGEN_MODELS="name=spec,..."``
names trained tokenizers (a directory or hub id whose config.json describes the architecture).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from .vq_model import VQ_models, vq_model_factory

LLAMAGEN_VQ_MODULE = "tokenizer.tokenizer_image.vq_model"
MODELS_ENV = "SEMHITOK_LLAMAGEN_MODELS"


class LlamaGenNotFoundError(ImportError):
    """LlamaGen is not importable (it is not on PyPI: a checkout must be on the path)."""


def llamagen_vq_models() -> dict:
    """LlamaGen's own ``VQ_models`` dict."""
    try:
        module = importlib.import_module(LLAMAGEN_VQ_MODULE)
    except ImportError as err:
        raise LlamaGenNotFoundError(
            f"cannot import LlamaGen's {LLAMAGEN_VQ_MODULE} ({err}): LlamaGen is not on PyPI; "
            "clone https://github.com/FoundationVision/LlamaGen and run from its root or put it "
            "on PYTHONPATH"
        ) from err
    return module.VQ_models


def env_models() -> dict[str, str]:
    """``name -> spec`` pairs from ``$SEMHITOK_LLAMAGEN_MODELS``."""
    pairs = [p for p in os.environ.get(MODELS_ENV, "").split(",") if p.strip()]
    if bad := [p for p in pairs if "=" not in p]:
        raise ValueError(f"{MODELS_ENV} entries must be name=spec, got {bad}")
    return dict(p.strip().split("=", 1) for p in pairs)


def register(extra: Mapping[str, str] | None = None) -> list[str]:
    """Add the SemHiTok VQ models (presets, ``$SEMHITOK_LLAMAGEN_MODELS``, ``extra``) to
    LlamaGen's ``VQ_models``; return the names added."""
    target = llamagen_vq_models()
    added = dict(VQ_models)
    added.update({name: vq_model_factory(spec) for name, spec in env_models().items()})
    added.update({name: vq_model_factory(spec) for name, spec in (extra or {}).items()})
    target.update(added)
    return sorted(added)


__all__ = ["LlamaGenNotFoundError", "llamagen_vq_models", "register"]
