"""The frozen text-aligned teacher (SigLIP by default) whose patch features SemHiTok distils.

A *backend* builds an architecture from its own registry with random weights (never touching the
network) and maps a checkpoint's keys onto it; :class:`FrozenTeacher` adds what every backend
shares: input normalisation, freezing, and weight loading through :mod:`semhitok_plugin.hub`.
Backends are registered through the ``semhitok_teacher_backends`` plugin hook.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .config import ConfigError, TeacherConfig
from .hub import load_state_dict, resolve_file
from .plugins import hookimpl, teacher_backend

TEACHER_WEIGHTS_OPTION = "--teacher-weights PATH (CLI) or TeacherConfig.weights"


class TeacherBackbone(nn.Module):
    """Interface of a teacher backend: images (already normalised) -> patch tokens (B, L, D)."""

    #: File names looked up in a weights directory or hub repo, in order of preference.
    weight_files: ClassVar[tuple[str, ...]] = ()
    embed_dim: int
    patch_size: int

    def __init__(self, config: TeacherConfig, canvas_size: int) -> None:
        super().__init__()
        self.config = config

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(self.adapt_state_dict(state))

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state


def _timm_tokens(model: nn.Module, config: TeacherConfig, x: torch.Tensor) -> torch.Tensor:
    (tokens,) = model.forward_intermediates(
        x,
        indices=[config.feature_layer],
        norm=config.feature_norm,
        output_fmt="NLC",
        intermediates_only=True,
        stop_early=True,
    )
    return tokens


class TimmTeacher(TeacherBackbone):
    """Any timm ViT (``vit_large_patch16_siglip_256``, ``vit_so400m_patch14_siglip_384``, ...)."""

    weight_files = ("model.safetensors", "pytorch_model.bin")

    def __init__(self, config: TeacherConfig, canvas_size: int) -> None:
        import timm

        super().__init__(config, canvas_size)
        self.module = timm.create_model(
            config.model_name, pretrained=False, img_size=canvas_size, **config.model_kwargs
        )
        self.embed_dim = self.module.embed_dim
        self.patch_size = self.module.patch_embed.patch_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _timm_tokens(self.module, self.config, x)


class OpenClipTeacher(TeacherBackbone):
    """The image tower of an open_clip model (its text tower is dropped)."""

    weight_files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

    def __init__(self, config: TeacherConfig, canvas_size: int) -> None:
        import open_clip

        super().__init__(config, canvas_size)
        clip = open_clip.create_model(
            config.model_name, pretrained=None, force_image_size=canvas_size, **config.model_kwargs
        )
        self.module = clip.visual
        trunk = getattr(self.module, "trunk", None)  # SigLIP towers wrap a timm ViT
        self.embed_dim = trunk.embed_dim if trunk is not None else self.module.transformer.width
        patch = trunk.patch_embed.patch_size if trunk is not None else self.module.patch_size
        self.patch_size = patch[0]

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not any(k.startswith("visual.") for k in state):
            return state
        return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trunk = getattr(self.module, "trunk", None)
        if trunk is not None:
            return _timm_tokens(trunk, self.config, x)
        out = self.module.forward_intermediates(
            x,
            indices=[self.config.feature_layer],
            normalize_intermediates=self.config.feature_norm,
            intermediates_only=True,
            output_fmt="NLC",
            stop_early=True,
        )
        return out["image_intermediates"][0]


class FrozenTeacher(nn.Module):
    """A teacher backbone that never trains: always in eval mode, no gradients, no EMA drift."""

    def __init__(self, config: TeacherConfig, canvas_size: int, *, load_weights: bool = True):
        super().__init__()
        self.config = config
        self.backbone = teacher_backend(config.backend)(config, canvas_size)
        if self.backbone.patch_size != config.patch_size:
            raise ConfigError(
                f"teacher {config.model_name!r} has patch size {self.backbone.patch_size}, "
                f"config says teacher.patch_size={config.patch_size}"
            )
        # [-1, 1] -> [0, 1] -> the teacher's own normalisation, folded into one affine map.
        mean, std = torch.tensor(config.mean), torch.tensor(config.std)
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)
        if load_weights and config.weights:
            self.load_weights(config.weights)

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def load_weights(self, spec: str, *, local_only: bool = False) -> None:
        path = resolve_file(
            spec,
            self.backbone.weight_files,
            what=f"teacher weights for {self.config.model_name}",
            option=TEACHER_WEIGHTS_OPTION,
            local_only=local_only,
        )
        self.backbone.load_weights(load_state_dict(path))

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features (B, L, D) of images in [-1, 1]."""
        return self.backbone(images * self.scale + self.shift)


@hookimpl
def semhitok_teacher_backends() -> dict[str, type[TeacherBackbone]]:
    return {"timm": TimmTeacher, "open_clip": OpenClipTeacher}
