"""The entry-point payload that registers ``semhitok_qwen`` with lmms-eval 0.7.3.

lmms-eval loads every entry point of the group ``lmms_eval.models`` while
``lmms_eval/models/__init__.py`` is being imported (``ModelRegistryV2.load_entrypoint_manifests``
in ``models/registry_v2.py``), and accepts a ``ModelManifest``, an iterable of them, or a callable
returning either. A callable is used so that importing this module imports nothing from
lmms-eval: a plain import of ``lmms_eval.models.registry_v2`` here would run lmms-eval's
registry initialisation re-entrantly and lose this very entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "semhitok_qwen"


def semhitok_qwen() -> ModelManifest:
    """The manifest of the simple (``is_simple = True``) model class ``SemHiTokQwen``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID, simple_class_path="semhitok_lmms_eval.model.SemHiTokQwen"
    )
