"""Installing SemHiTok into LLaVA: :func:`register` patches the names LLaVA builds with.

``llava/model/llava_arch.py`` imports ``build_vision_tower`` and ``build_vision_projector`` *by
name*, so they are replaced there (patching the builder modules would change nothing). The
replacements handle ``semhitok[:spec]`` towers and the ``dual_mlp2x_gelu`` projector and hand
everything else to LLaVA's originals. ``initialize_vision_modules`` is wrapped so the tower's
identity is written into the model config that LLaVA saves, and so a finetune refuses a
``--pretrain_mm_mlp_adapter`` trained on another tokenizer.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semhitok_plugin import CheckpointMismatchError
from semhitok_plugin.plugins import activate

from .compat import import_llava, llava_model_classes, patch_generation
from .projector import DUAL_MLP, DualMLPProjector
from .tower import RECORD_KEY, SemHiTokVisionTower, is_semhitok_tower

_PATCHED = "__semhitok_patched__"


def register() -> None:
    """Make LLaVA build SemHiTok towers and Dual-MLP projectors (idempotent)."""
    arch = import_llava()
    if not getattr(arch.build_vision_tower, _PATCHED, False):
        arch.build_vision_tower = _patched(_build_tower, arch.build_vision_tower)
        arch.build_vision_projector = _patched(_build_projector, arch.build_vision_projector)
        init = arch.LlavaMetaModel.initialize_vision_modules
        arch.LlavaMetaModel.initialize_vision_modules = _patched(_initialize_vision_modules, init)
    for model_class in llava_model_classes():
        patch_generation(model_class)
        _ignore_saved_tower_weights(model_class)


def launcher_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """For a launcher wrapping a LLaVA entry point: split ``argv`` into our flags and LLaVA's
    (with ``--help``, print ours before LLaVA prints its own), then install SemHiTok into LLaVA
    through the ``semhitok`` entry points."""
    ours, rest = parser.parse_known_args(argv)
    if {"-h", "--help"} & set(rest):
        parser.print_help()
        print("\nLLaVA's flags:")
    activate("llava")
    return ours, rest


TOWER_WEIGHTS = r"vision_tower\.tokenizer\."


def _ignore_saved_tower_weights(model_class: type) -> None:
    """LLaVA saves the tower's weights with the model (as it does CLIP's) but rebuilds the tower
    from its spec on load; the tokenizer's weights in the checkpoint are unused by design, so
    transformers need not list every one of them as unexpected."""
    ignored = list(getattr(model_class, "_keys_to_ignore_on_load_unexpected", None) or [])
    if TOWER_WEIGHTS not in ignored:
        model_class._keys_to_ignore_on_load_unexpected = [*ignored, TOWER_WEIGHTS]


def _patched(replacement, original):
    """A function (so it binds as a method) calling ``replacement(original, ...)``."""

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        return replacement(original, *args, **kwargs)

    setattr(wrapper, _PATCHED, True)
    return wrapper


def _build_tower(original, vision_tower_cfg: Any, **kwargs):
    name = getattr(vision_tower_cfg, "mm_vision_tower", None) or getattr(
        vision_tower_cfg, "vision_tower", None
    )
    if is_semhitok_tower(name):
        return SemHiTokVisionTower(name, args=vision_tower_cfg, **kwargs)
    return original(vision_tower_cfg, **kwargs)


def _build_projector(original, config: Any, delay_load: bool = False, **kwargs):
    if getattr(config, "mm_projector_type", "linear") == DUAL_MLP:
        return DualMLPProjector.from_config(config)
    return original(config, delay_load=delay_load, **kwargs)


def _initialize_vision_modules(original, self, model_args: Any, fsdp: Any = None):
    tower_name = getattr(model_args, "vision_tower", None)
    adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
    original(self, model_args, fsdp=fsdp)
    if is_semhitok_tower(tower_name):
        tower = self.get_vision_tower()
        tower.record_in(self.config)
        if adapter:
            _check_adapter_tower(Path(adapter), getattr(self.config, RECORD_KEY))


def _check_adapter_tower(adapter: Path, record: dict) -> None:
    """Refuse a pretrained projector whose run recorded a different tokenizer."""
    config_file = adapter.parent / "config.json"
    if not config_file.is_file():
        return  # LLaVA's own adapters carry no config; nothing to compare
    pretrained = json.loads(config_file.read_text()).get(RECORD_KEY)
    if pretrained and pretrained["sha256"] != record["sha256"]:
        raise CheckpointMismatchError(
            f"--pretrain_mm_mlp_adapter {adapter} was trained on SemHiTok "
            f"{pretrained['spec']!r} (sha256 {pretrained['sha256'][:12]}…), but this run's tower "
            f"is {record['spec']!r} (sha256 {record['sha256'][:12]}…)"
        )
