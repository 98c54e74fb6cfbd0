"""``SemHiTok``: the tokenizer that composes the teacher, both codebooks and the ViTs (Fig. 3a).

Semantic branch (stage 1): frozen teacher -> MLP projection -> :class:`SemanticCodebook` ->
semantic decoder (distillation target: the teacher's features).
Pixel branch (stages 2-3): ViT pixel encoder -> :class:`SubCodebookQuantizer` guided by the
semantic ids -> ViT pixel decoder on the concatenated quantised features.

Stage 2 never runs the semantic branch with gradients or EMA updates, so it cannot change a
semantic id or an understanding feature (the paper's "non-conflicting extension").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from .config import SemHiTokConfig
from .hub import WeightsNotFoundError, is_hub_id, resolve_file
from .ids import TokenIdError, check_ids, merge_ids, split_ids
from .semantic_codebook import QuantizerOutput, SemanticCodebook
from .sghc import SubCodebookQuantizer
from .teacher import FrozenTeacher
from .vit import PixelDecoder, PixelEncoder, TokenTransformer

STAGES = ("semantic", "pixel", "decoder")
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class CheckpointMismatchError(ValueError):
    """The weights in a checkpoint do not fit the architecture its config describes."""


@dataclass
class TokenizerOutput:
    sem_ids: torch.Tensor  # (B, h, w) long, in [0, K)
    pix_ids: torch.Tensor  # (B, h, w) long, in [0, m)
    flat_ids: torch.Tensor  # (B, h, w) long, in [0, K*m)
    sem_features: torch.Tensor  # (B, h*w, semantic code dim): quantised, l2-normalised
    pix_features: torch.Tensor  # (B, h*w, pixel code dim): quantised, l2-normalised


@dataclass(frozen=True)
class StageOutput:
    """The losses of one training stage (:meth:`SemHiTok.forward`)."""

    loss: torch.Tensor  # what the optimizer minimises: the sum of ``terms``
    terms: dict[str, torch.Tensor]  # each weighted term by name, for logging
    reconstruction: torch.Tensor | None = None  # pixel stages: decoded images, (B, 3, S, S)

    def with_term(self, name: str, value: torch.Tensor) -> StageOutput:
        """This output with one more term (a loss the trainer computes, e.g. perceptual)."""
        return dataclasses.replace(self, loss=self.loss + value, terms={**self.terms, name: value})

    def scalars(self) -> dict[str, torch.Tensor]:
        """``loss`` then every term: what a step logs and checks for non-finite values."""
        return {"loss": self.loss, **self.terms}


class SemHiTok(nn.Module):
    def __init__(self, config: SemHiTokConfig, *, load_teacher_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        self.name_or_path = ""
        sem, pix = config.semantic, config.pixel
        grid, patch = config.grid_size, config.teacher.patch_size
        num_tokens = grid[0] * grid[1]
        self.teacher = FrozenTeacher(
            config.teacher, config.canvas_size, load_weights=load_teacher_weights
        )
        width = self.teacher.embed_dim
        self.semantic_proj = Mlp(width, hidden_features=width, out_features=sem.code_dim)
        self.semantic_codebook = SemanticCodebook(
            sem.codebook_size,
            sem.code_dim,
            quantizer=sem.quantizer,
            l2_norm=sem.l2_norm,
            decay=sem.ema_decay,
            commitment_weight=sem.commitment_weight,
            kmeans_init=sem.kmeans_init,
            kmeans_iters=sem.kmeans_iters,
            dead_code_patience=sem.dead_code_patience,
            chunk_size=sem.chunk_size,
        )
        self.semantic_decoder = TokenTransformer(sem.code_dim, sem.decoder, num_tokens, width)
        self.pixel_encoder = PixelEncoder(pix.encoder, patch, grid, pix.code_dim)
        self.pixel_quantizer = SubCodebookQuantizer(
            sem.codebook_size,
            pix.sub_codebook_size,
            pix.code_dim,
            commitment_weight=pix.commitment_weight,
            codebook_weight=pix.codebook_weight,
            data_init=pix.data_init,
            dead_code_patience=pix.dead_code_patience,
        )
        self.pixel_decoder = PixelDecoder(
            pix.decoder, pix.concat, sem.code_dim, pix.code_dim, patch, grid
        )

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.config.grid_size

    @property
    def sub_codebook_size(self) -> int:
        return self.config.pixel.sub_codebook_size

    @property
    def codebook_size(self) -> int:
        return self.config.semantic.codebook_size

    # -- image plumbing ------------------------------------------------------------------------
    def to_canvas(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1], checked and resized to the teacher's input size."""
        size, canvas = self.config.image_size, self.config.canvas_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
            raise ValueError(
                f"expected images of shape (B, 3, {size}, {size}) in [-1, 1], "
                f"got {tuple(images.shape)}"
            )
        if canvas == size:
            return images
        return F.interpolate(images, size=canvas, mode="bicubic", antialias=True)

    def _from_canvas(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.shape[-1] != size:
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True)
        return images

    # -- branches ------------------------------------------------------------------------------
    def distill(
        self, canvas: torch.Tensor, *, update: bool = False
    ) -> tuple[torch.Tensor, QuantizerOutput]:
        """The teacher's features of images on the canvas (:meth:`to_canvas`), the target of the
        distillation, and their semantic quantisation; ``update=True`` applies one EMA step."""
        features = self.teacher(canvas)
        return features, self.semantic_codebook(self.semantic_proj(features), update=update)

    def _grid(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.view(ids.shape[0], *self.grid_size)

    # -- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        """Tokenize images (B, 3, S, S) in [-1, 1]."""
        x = self.to_canvas(images)
        _, sem = self.distill(x)
        pix = self.pixel_quantizer(self.pixel_encoder(x), sem.ids)
        flat = merge_ids(sem.ids, pix.ids, self.codebook_size, self.sub_codebook_size)
        return TokenizerOutput(
            self._grid(sem.ids), self._grid(pix.ids), self._grid(flat), sem.quantized, pix.quantized
        )

    def _check_grid(self, ids: torch.Tensor, name: str) -> None:
        """Refuse ids not laid out as (B, h, w) or (B, h*w): a (B, 4, 16) map holds as many ids
        as an 8x8 one, but it is not this tokenizer's grid."""
        h, w = self.grid_size
        if not isinstance(ids, torch.Tensor):
            raise TokenIdError(f"{name} must be a torch tensor, got {type(ids).__name__}")
        if ids.shape[1:] not in ((h, w), (h * w,)):
            raise TokenIdError(
                f"{name} must have shape (B, {h}, {w}) or (B, {h * w}) for this tokenizer, "
                f"got {tuple(ids.shape)}"
            )

    def embed_ids(self, flat_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantised (semantic, pixel) features (B, h*w, dim) of flat ids (B, h, w) or (B, h*w)."""
        self._check_grid(flat_ids, "flat_ids")
        # split before flattening, so an error's index is in the caller's layout
        sem_ids, pix_ids = split_ids(flat_ids, self.codebook_size, self.sub_codebook_size)
        sem_ids, pix_ids = sem_ids.flatten(1), pix_ids.flatten(1)
        sem = self.semantic_codebook.lookup(sem_ids)
        return sem, self.pixel_quantizer.lookup(sem_ids, pix_ids)

    def decode_features(self, sem: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from quantised features; differentiable (used in training)."""
        return self._from_canvas(self.pixel_decoder(sem, pix))

    @torch.no_grad()
    def decode(self, flat_ids: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] from flat ids in [0, vocab_size)."""
        return self.decode_features(*self.embed_ids(flat_ids)).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        out = self.encode(images)
        return self.decode_features(out.sem_features, out.pix_features).clamp(-1, 1)

    @torch.no_grad()
    def semantic_features(self, sem_ids: torch.Tensor) -> torch.Tensor:
        """Decoded semantic features (B, h*w, teacher dim): the understanding features."""
        self._check_grid(sem_ids, "sem_ids")
        check_ids(sem_ids, self.codebook_size, "sem_ids")
        return self.semantic_decoder(self.semantic_codebook.lookup(sem_ids.flatten(1)))

    # -- training ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, stage: str = "pixel") -> StageOutput:
        """The losses of one training stage.

        ``semantic``: cosine distillation + commitment, with one EMA codebook update in training
        mode. ``pixel`` / ``decoder``: reconstruction + SGHC codebook/commitment losses, with the
        semantic branch run without gradients or updates, and the decoded images for the
        perceptual and adversarial losses the trainer adds.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        x = self.to_canvas(images)
        if stage == "semantic":
            target, sem = self.distill(x, update=self.training)
            cosine = F.cosine_similarity(self.semantic_decoder(sem.quantized), target, -1)
            distill = 1 - cosine.mean()
            terms = {"distill": distill, **sem.losses}
            return StageOutput(distill + sum(sem.losses.values()), terms)
        with torch.no_grad():
            _, sem = self.distill(x)
        with torch.set_grad_enabled(stage == "pixel" and torch.is_grad_enabled()):
            update = stage == "pixel" and self.training
            pix = self.pixel_quantizer(self.pixel_encoder(x), sem.ids, update=update)
        recon = self.pixel_decoder(sem.quantized, pix.quantized)
        loss_fn = F.l1_loss if self.config.pixel.recon_loss == "l1" else F.mse_loss
        terms = {"recon": loss_fn(recon, x), **pix.losses}
        return StageOutput(sum(terms.values()), terms, self._from_canvas(recon))

    @staticmethod
    def stage_module_names(stage: str) -> tuple[str, ...]:
        """Submodules trained in ``stage`` (an EMA semantic codebook has no parameters: it
        learns in the forward; the ``vanilla`` and ``norm`` ones learn by gradient)."""
        names = {
            "semantic": ("semantic_proj", "semantic_codebook", "semantic_decoder"),
            "pixel": ("pixel_encoder", "pixel_quantizer", "pixel_decoder"),
            "decoder": ("pixel_decoder",),
        }
        if stage not in names:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return names[stage]

    def freeze_for(self, stage: str) -> list[nn.Parameter]:
        """Make only ``stage``'s modules trainable; returns their parameters for the optimizer."""
        self.requires_grad_(False)
        params = []
        for name in self.stage_module_names(stage):
            module = getattr(self, name)
            module.requires_grad_(True)
            params.extend(module.parameters())
        return params

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (every weight, the teacher's too)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls, spec: str | Path, *, map_location: str = "cpu") -> SemHiTok:
        """Load from a directory written by :meth:`save_pretrained` or a hub repo id.

        The architecture is built from ``config.json`` alone (no network), and every weight,
        the teacher's included, comes from the checkpoint.
        """
        from safetensors.torch import load_file

        option = "a directory written by save_pretrained, or a hub repo id"
        files = [
            resolve_file(str(spec), [name], what=f"SemHiTok {name}", option=option)
            for name in (CONFIG_NAME, WEIGHTS_NAME)
        ]
        model = cls(SemHiTokConfig.load(files[0]), load_teacher_weights=False)
        state = load_file(str(files[1]), device=map_location)
        check_state_dict(model, state, files[1])
        model.load_state_dict(state)
        model.name_or_path = str(spec)
        return model.eval()


def check_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: Path | str,
    architecture: str = "its config.json",
) -> None:
    """Raise :class:`CheckpointMismatchError` naming missing, unexpected and misshapen tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (
        ("shape mismatch", shapes),
        ("missing", missing),
        ("unexpected", unexpected),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {'; '.join(items[:5])}{more}")
    raise CheckpointMismatchError(
        f"weights in {source} do not match the architecture of {architecture} — "
        + " | ".join(parts)
    )


def _preset(spec: str) -> SemHiTokConfig | None:
    """The preset ``spec`` names, unless a directory of that name exists: a checkpoint on disk
    wins, so the config and the weights of a spec always come from the same place."""
    from .plugins import available_presets

    return None if Path(spec).expanduser().is_dir() else available_presets().get(spec)


def resolve_config(spec: str) -> tuple[SemHiTokConfig, str]:
    """The config of a preset, a ``save_pretrained`` directory (or its ``config.json``) or a hub
    repo id, without weights.

    Returns it with a description of where it came from ("preset" or "checkpoint (<dir>)").
    """
    preset = _preset(spec)
    if preset is not None:
        return preset, "preset"
    option = "a preset name, a save_pretrained directory or a hub repo id"
    path = resolve_file(spec, [CONFIG_NAME], what="SemHiTok config", option=option)
    return SemHiTokConfig.load(path), f"checkpoint ({path.parent})"


def load_model(spec: str, *, teacher_weights: str | None = None, seed: int = 0) -> SemHiTok:
    """A tokenizer from a preset name, a local directory or a hub repo id.

    A preset builds a fresh model (random weights from ``seed``, teacher weights from
    ``teacher_weights`` or the preset's default); directories and hub ids load a checkpoint.
    """
    from .plugins import available_presets

    config = _preset(spec)
    if config is not None:
        if teacher_weights:
            config.teacher.weights = teacher_weights
        torch.manual_seed(seed)
        model = SemHiTok(config)
        model.name_or_path = spec
        return model.eval()
    if Path(spec).expanduser().is_dir() or is_hub_id(spec):
        return SemHiTok.from_pretrained(spec)
    raise WeightsNotFoundError(
        f"model {spec!r} is not a preset ({', '.join(sorted(available_presets()))}), an existing "
        "directory, or a hub repo id"
    )


__all__ = [
    "STAGES",
    "CheckpointMismatchError",
    "SemHiTok",
    "StageOutput",
    "TokenizerOutput",
    "check_state_dict",
    "load_model",
    "resolve_config",
]
