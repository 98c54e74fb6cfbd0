"""Images at the edges of the library: files and PIL images <-> tensors in [-1, 1].

Everything inside the library works on float NCHW tensors in [-1, 1]; this module converts once,
applying EXIF orientation, compositing transparency on white, and resizing the shorter side then
centre-cropping to the tokenizer's square input (the ImageNet-val protocol of LlamaGen et al.).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)


class ImageReadError(OSError):
    """A file that cannot be decoded as an image."""


def load_image(path: str | Path) -> Image.Image:
    """An RGB image from ``path``; raises :class:`ImageReadError` naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {str(path)!r}: {err}") from err


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) and crop the centre square."""
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Same-size RGB PIL images -> (B, 3, H, W) float in [-1, 1]."""
    arrays = np.stack([np.asarray(img, dtype=np.float32) for img in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images (rounded, clamped)."""
    arrays = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in arrays.permute(0, 2, 3, 1).cpu().numpy()]
