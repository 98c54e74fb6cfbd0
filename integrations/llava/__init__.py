"""SemHiTok as a LLaVA-v1.5 vision tower with a Dual-MLP projector (``semhitok_llava``).

``register()`` (also reached as ``semhitok_plugin.plugins.activate("llava")`` through the
``semhitok`` entry points) teaches LLaVA ``--vision_tower semhitok[:preset|dir|hub-id]`` and
``--mm_projector_type dual_mlp2x_gelu``; ``semhitok-llava-train`` and ``semhitok-llava-vqa`` run
LLaVA's own training and ``model_vqa_loader`` with it installed. Importing this package imports
neither LLaVA nor transformers.
"""

from .plugin import register

__all__ = ["register"]
