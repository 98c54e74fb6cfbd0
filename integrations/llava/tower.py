"""``SemHiTokVisionTower``: SemHiTok in the place of LLaVA's CLIP vision tower.

The tower tokenizes each image and hands LLaVA per-token features built from the *discrete* ids
only (the paper's understanding setting): LLaVA never sees a continuous encoder feature.
``--mm_vision_select_feature`` (LLaVA's flag, whose default is ``patch``) picks them:

* ``patch`` -- the semantic decoder's output for the semantic ids (teacher width: the features
  stage 1 distils towards SigLIP) concatenated with the quantised pixel codes. The paper says the
  LLM gets "the features extracted from SGHC" without naming the semantic ones; these are the
  richest function of the ids, so they are the default.
* ``semantic`` -- the decoded semantic features alone (Tab. 7 row 1, "semantic codebook").
* ``code`` -- the raw quantised semantic and pixel codebook vectors.

``--mm_vision_select_layer`` has no meaning for a discrete tower and is ignored. The tower is
frozen. It meets the duck type of ``llava/model/multimodal_encoder/clip_encoder.py``
(``CLIPVisionTower``): ``is_loaded``, ``load_model``, ``image_processor``, ``hidden_size``,
``num_patches(_per_side)``, ``config.image_size``, ``dtype``, ``device``, ``dummy_feature``.

A LLaVA checkpoint records the tower as ``mm_vision_tower = "semhitok:<spec>"`` plus
``mm_semhitok = {"spec", "config", "sha256"}``: reloading rebuilds the tokenizer from the spec
and refuses it, naming the difference, unless its config and weights digest are the recorded ones.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import CLIPImageProcessor

from semhitok_plugin import (
    CheckpointMismatchError,
    SemHiTok,
    SemHiTokConfig,
    load_model,
    split_ids,
)
from semhitok_plugin.model import resolve_config
from semhitok_plugin.teacher import FrozenTeacher

PREFIX = "semhitok"
DEFAULT_PRESET = "siglip-l16-256"
SELECT_FEATURES = ("patch", "semantic", "code")
RECORD_KEY = "mm_semhitok"


def is_semhitok_tower(name: str | None) -> bool:
    return isinstance(name, str) and (name == PREFIX or name.startswith(PREFIX + ":"))


def tokenizer_spec(name: str) -> str:
    """``semhitok`` -> the default preset; ``semhitok:<preset|dir|hub-id>`` -> what follows."""
    spec = name[len(PREFIX) + 1 :] if name.startswith(PREFIX + ":") else DEFAULT_PRESET
    if not spec:
        raise ValueError(f"empty tokenizer spec in vision tower {name!r}")
    return spec


def feature_dims(config: SemHiTokConfig, select: str) -> tuple[int, int]:
    """(semantic, pixel) widths of the tower's features for ``select``; pixel is 0 if absent."""
    if select not in SELECT_FEATURES:
        raise ValueError(
            f"mm_vision_select_feature={select!r} is not supported by the SemHiTok tower; "
            f"choose one of {SELECT_FEATURES}"
        )
    if select == "code":
        return config.semantic.code_dim, config.pixel.code_dim
    with torch.device("meta"):  # the teacher's width, without allocating or loading it
        width = FrozenTeacher(config.teacher, config.canvas_size, load_weights=False).embed_dim
    return width, (config.pixel.code_dim if select == "patch" else 0)


def weights_digest(module: nn.Module) -> str:
    """sha256 over every tensor of ``module``'s state dict (names, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def image_processor(config: SemHiTokConfig) -> CLIPImageProcessor:
    """LLaVA's processor interface, producing SemHiTok's input: the shorter side resized
    (bicubic) and the centre square cropped to ``image_size``, scaled to [-1, 1] (mean = std =
    0.5, which is also the grey that ``--image_aspect_ratio pad`` fills with)."""
    size = config.image_size
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )


class SemHiTokVisionTower(nn.Module):
    """A frozen SemHiTok tokenizer that outputs features of its discrete ids (see module doc)."""

    def __init__(
        self,
        vision_tower: str,
        args: Any = None,
        delay_load: bool = False,
        *,
        tokenizer: SemHiTok | None = None,
    ) -> None:
        """``vision_tower`` and ``args`` as LLaVA passes them (model args, or the model config on
        a reload); ``tokenizer`` wraps an in-memory model instead of loading ``vision_tower``."""
        super().__init__()
        self.vision_tower_name = vision_tower
        self.spec = tokenizer_spec(vision_tower)
        self.select_feature = getattr(args, "mm_vision_select_feature", None) or "patch"
        self.record: dict | None = getattr(args, RECORD_KEY, None)
        self.is_loaded = False
        self.tokenizer: SemHiTok | None = None
        self.weights_sha256: str | None = None
        if tokenizer is not None:
            self.tokenizer_config = tokenizer.config
        elif self.record:  # a reload: sizes from the checkpoint, no lookup before load_model
            self.tokenizer_config = SemHiTokConfig.from_dict(self.record["config"])
        else:
            self.tokenizer_config = resolve_config(self.spec)[0]
        self.feature_dims = feature_dims(self.tokenizer_config, self.select_feature)
        self.image_processor = image_processor(self.tokenizer_config)
        if tokenizer is not None:
            self._adopt(tokenizer)
        elif not delay_load:
            self.load_model()

    def load_model(self, device_map: Any = None) -> None:
        if self.is_loaded:
            return
        tokenizer = load_model(self.spec)
        if self.record:
            self._check_record(tokenizer)
        self._adopt(tokenizer)
        device = _device_from_map(device_map)
        if device is not None:
            self.to(device)

    def _adopt(self, tokenizer: SemHiTok) -> None:
        self.weights_sha256 = weights_digest(tokenizer)  # before any cast or use
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.is_loaded = True

    def _check_record(self, tokenizer: SemHiTok) -> None:
        where = f"vision tower {self.vision_tower_name!r}"
        recorded = SemHiTokConfig.from_dict(self.record["config"])
        if tokenizer.config != recorded:
            raise CheckpointMismatchError(
                f"{where}: the tokenizer's config differs from the one this LLaVA checkpoint was "
                f"trained with (recorded in its config.json under {RECORD_KEY!r})"
            )
        digest = weights_digest(tokenizer)
        if digest != self.record["sha256"]:
            raise CheckpointMismatchError(
                f"{where}: the tokenizer's weights (sha256 {digest[:12]}…) are not the ones this "
                f"LLaVA checkpoint was trained with (sha256 {self.record['sha256'][:12]}…)"
            )

    def record_in(self, config: Any) -> None:
        """Write the tokenizer's identity into a LLaVA model config (saved with the model)."""
        setattr(
            config,
            RECORD_KEY,
            {
                "spec": self.spec,
                "config": self.tokenizer_config.to_dict(),
                "sha256": self.weights_sha256,
            },
        )

    # -- LLaVA's tower interface ---------------------------------------------------------------
    @torch.no_grad()
    def forward(self, images: torch.Tensor | list[torch.Tensor]):
        if isinstance(images, list):
            return [self._features(image.unsqueeze(0)) for image in images]
        return self._features(images)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        out = self.tokenizer.encode(images.to(device=self.device, dtype=self.dtype))
        return self.select(out.sem_ids, out.sem_features, out.pix_features).to(images.dtype)

    def features_from_ids(self, flat_ids: torch.Tensor) -> torch.Tensor:
        """The tower's output for flat ids (B, h, w): what ``forward`` gives for those images."""
        tok = self.tokenizer
        sem_ids, _ = split_ids(flat_ids.flatten(1), tok.codebook_size, tok.sub_codebook_size)
        return self.select(sem_ids, *self.tokenizer.embed_ids(flat_ids))

    def select(self, sem_ids: torch.Tensor, sem: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
        if self.select_feature == "code":
            return torch.cat([sem, pix], dim=-1)
        decoded = self.tokenizer.semantic_features(sem_ids.flatten(1))
        return decoded if self.select_feature == "semantic" else torch.cat([decoded, pix], -1)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tokenizer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    @property
    def config(self) -> SemHiTokConfig:
        return self.tokenizer_config

    @property
    def hidden_size(self) -> int:
        return sum(self.feature_dims)

    @property
    def num_patches_per_side(self) -> int:
        return self.tokenizer_config.grid_size[0]

    @property
    def num_patches(self) -> int:
        h, w = self.tokenizer_config.grid_size
        return h * w


def _device_from_map(device_map: Any) -> torch.device | None:
    """The one device a LLaVA ``device_map`` names ("auto": CUDA when present)."""
    if device_map is None:
        return None
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, dict):
        return torch.device(device_map.get("", "cpu"))
    return torch.device(device_map)
