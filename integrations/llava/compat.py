"""Shims that let ``llava-torch`` 1.2.2 (written for transformers 4.36.2) run on the
transformers this project pins (4.46.3, which lmms-eval also accepts), and report its failures.

Each shim is small, idempotent and fixes one measured breakage:

* ``generate`` passes ``cache_position`` (and, where the forward signature allows it,
  ``num_logits_to_keep``) to the model's forward since 4.38; LLaVA's ``forward`` has a fixed
  signature. The shim drops exactly these generation-only kwargs: LLaVA's forward builds
  ``inputs_embeds`` itself and Llama recomputes the cache position from the KV cache, so cached
  and uncached decoding give the same tokens (tested).
* ``model_vqa_loader`` calls ``generate`` without an ``attention_mask``; LLaVA's ``generate`` then
  passes ``attention_mask=None`` on, which transformers >= 4.38 tries to extend
  (``'NoneType' object has no attribute 'new_ones'``). The shim supplies the all-ones mask that
  transformers would have built for an unpadded prompt.
* ``llava/model/__init__.py`` wraps its imports in a bare ``except: pass``, so a broken install
  shows up later as "cannot import name LlavaLlamaForCausalLM". :func:`import_llava` imports the
  real modules and raises their actual error.
* LLaVA's data loaders open images as ``Image.open(path).convert("RGB")``; a truncated file fails
  inside ``convert`` without naming it. :class:`NamingImageModule` stands in for ``PIL.Image`` in
  those modules and raises :class:`~semhitok_plugin.images.ImageReadError` with the path.

Outside the tested range LLaVA's *training* breaks for reasons a shim should not paper over
(4.52: ``LLaVATrainer._get_train_sampler`` signature; 4.53: ``ALL_LAYERNORM_LAYERS`` removed), so
:func:`check_transformers_for_training` names the supported range instead.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

import PIL.Image
import torch
import transformers
from packaging.version import Version

from semhitok_plugin.images import DECODE_ERRORS, ImageReadError

GENERATION_ONLY_KWARGS = ("cache_position", "num_logits_to_keep")
TESTED = "4.46.3"
TRAINING_BREAKS = "4.52"  # measured: LLaVATrainer._get_train_sampler() signature
_SHIMMED = "__semhitok_shim__"


class LlavaImportError(ImportError):
    """LLaVA is missing or broken; the message carries the underlying import error."""


def import_llava() -> ModuleType:
    """Import LLaVA's model classes, raising the real error that ``llava.model`` swallows."""
    try:
        importlib.import_module("llava.model.language_model.llava_llama")
        return importlib.import_module("llava.model.llava_arch")
    except Exception as err:
        cause = _swallowed_import_error() or err
        raise LlavaImportError(
            f"LLaVA cannot be imported: {type(cause).__name__}: {cause}. Install it with "
            "`bash scripts/setup.sh llava` (llava-torch is installed without its dependencies)"
        ) from cause


def _swallowed_import_error() -> Exception | None:
    """Import LLaVA's Llama model with ``llava/__init__.py`` (which needs the swallowed import)
    left unexecuted, so the error ``llava/model/__init__.py`` hides surfaces; then restore."""

    def loaded() -> dict[str, ModuleType]:  # (None entries are import blockers: keep them)
        return {n: m for n, m in sys.modules.items() if n.split(".")[0] == "llava" and m}

    saved = loaded()
    spec = saved["llava"].__spec__ if "llava" in saved else importlib.util.find_spec("llava")
    if spec is None:
        return ModuleNotFoundError("No module named 'llava'")
    try:
        for name in saved:
            del sys.modules[name]
        sys.modules["llava"] = importlib.util.module_from_spec(spec)
        importlib.import_module("llava.model.language_model.llava_llama")
        return None
    except Exception as err:
        return err
    finally:
        for name in loaded():
            del sys.modules[name]
        sys.modules.update(saved)


def check_transformers_for_training() -> None:
    version = Version(transformers.__version__)
    if version >= Version(TRAINING_BREAKS):
        raise RuntimeError(
            f"transformers {version}: LLaVA 1.2.2's trainer fails from {TRAINING_BREAKS} on "
            f"(LLaVATrainer._get_train_sampler signature). Install transformers=={TESTED}, "
            "the version semhitok-plugin[llava] pins and tests."
        )


def _drop_generation_kwargs(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        for name in GENERATION_ONLY_KWARGS:
            kwargs.pop(name, None)
        return forward(self, *args, **kwargs)

    setattr(wrapper, _SHIMMED, True)
    return wrapper


def _default_attention_mask(generate):
    @functools.wraps(generate)
    def wrapper(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        if kwargs.get("attention_mask") is None and isinstance(inputs, torch.Tensor):
            kwargs["attention_mask"] = torch.ones_like(inputs)
        return generate(self, inputs, *args, **kwargs)

    setattr(wrapper, _SHIMMED, True)
    return wrapper


def patch_generation(model_class: type) -> None:
    """Apply the two ``generate`` shims to a LLaVA causal-LM class (idempotent)."""
    if not getattr(model_class.forward, _SHIMMED, False):
        model_class.forward = _drop_generation_kwargs(model_class.forward)
    if not getattr(model_class.generate, _SHIMMED, False):
        model_class.generate = _default_attention_mask(model_class.generate)


def llava_model_classes() -> list[type]:
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM

    return [LlavaLlamaForCausalLM, LlavaMistralForCausalLM]


class NamingImageModule(ModuleType):
    """``PIL.Image`` whose ``open`` decodes at once and names the file it cannot decode."""

    def __init__(self) -> None:
        super().__init__("PIL.Image")

    def __getattr__(self, name: str) -> Any:
        return getattr(PIL.Image, name)

    @staticmethod
    def open(fp, *args, **kwargs) -> PIL.Image.Image:
        try:
            image = PIL.Image.open(fp, *args, **kwargs)
            image.load()
            return image
        except DECODE_ERRORS as err:
            raise ImageReadError(f"cannot decode image {str(fp)!r}: {err}") from err


def name_image_errors(module: ModuleType) -> None:
    """Make ``module``'s ``Image.open`` name undecodable files (idempotent)."""
    if getattr(module, "Image", None) is PIL.Image:
        module.Image = NamingImageModule()
