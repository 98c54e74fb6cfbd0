"""SemHiTok as a drop-in VQ model for LlamaGen-style AR generators (``semhitok_llamagen``).

``SemHiTokVQModel`` meets LlamaGen's ``VQModel`` contract; :func:`register` adds the SemHiTok
entries to LlamaGen's ``VQ_models`` (LlamaGen must be importable: a checkout on the path);
``python -m semhitok_llamagen.run SCRIPT ARGS`` runs a LlamaGen script with them registered.
"""

from .register import LlamaGenNotFoundError, register
from .vq_model import VQ_PRESETS, SemHiTokVQModel, VQ_models, vq_model_factory

__all__ = [
    "VQ_PRESETS",
    "LlamaGenNotFoundError",
    "SemHiTokVQModel",
    "VQ_models",
    "register",
    "vq_model_factory",
]
