"""Images at the edges of the library: files and PIL images <-> tensors in [-1, 1].

Everything inside the library works on float NCHW tensors in [-1, 1]; this module converts once,
applying EXIF orientation, compositing transparency on white, and resizing the shorter side then
centre-cropping to the tokenizer's square input (the ImageNet-val protocol of LlamaGen et al.).

Reading a file is hardened against hostile input, because training sets are scraped:

* Only the formats in :data:`FORMATS` are decoded, whatever the file is called (a PostScript file
  renamed ``.jpg`` is refused, so Pillow never starts Ghostscript for it).
* An image with more than :data:`MAX_PIXELS` pixels is refused from its header, before anything is
  decoded (a 12 KB PNG can declare 100 megapixels). Pillow's own check refuses above
  ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (179 M) whatever :data:`MAX_PIXELS` says.
* Every decoding failure (Pillow raises ``OSError``, ``SyntaxError``, ``TypeError`` ... on broken
  files) becomes :class:`ImageReadError` naming the file, which the loaders skip and count
  (:class:`SkippedImages`).
* Odd but valid files come out as the image a viewer shows: the first frame of an animation,
  16-bit greys scaled to 8 bits (not clipped to white), CMYK JPEGs with the Adobe convention
  Photoshop and libjpeg write, and any transparency (alpha, palette or ``tRNS`` colour)
  composited on :data:`BACKGROUND`.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)
# The formats of data.IMAGE_EXTENSIONS (a camera's multi-picture JPEG opens as JPEG's "MPO").
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Refused above this many pixels: 2**26 = 8192 x 8192 (192 MiB as RGB). Read at each open: assign
# it (forked DataLoader workers inherit that) or set SEMHITOK_MAX_IMAGE_PIXELS before starting.
MAX_PIXELS = int(os.environ.get("SEMHITOK_MAX_IMAGE_PIXELS", 2**26))

DECODE_ERRORS = (
    OSError,
    ValueError,
    TypeError,  # a TIFF tag of the wrong type
    SyntaxError,  # Pillow's "broken PNG file"
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
T = TypeVar("T")
R = TypeVar("R")
_GREY_16_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(OSError):
    """A file that cannot be decoded as an image, or that is refused (too many pixels)."""


def load_image(path: str | Path | IO[bytes], *, as_stored: bool = False) -> Image.Image:
    """An RGB image from ``path`` (a file name or a binary file object); raises
    :class:`ImageReadError` naming the file.

    ``as_stored=True`` skips EXIF rotation, 16-bit scaling and compositing (plain
    ``convert("RGB")``, torchvision ``ImageFolder``'s loader) for callers that must see the pixels
    another tool reads; the format, size and error guards still apply."""
    try:
        with warnings.catch_warnings():  # Pillow warns above its limit; ours refuses below it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=FORMATS)
        with img:
            _check_pixels(img)
            img.load()
            return img.convert("RGB") if as_stored else to_rgb(ImageOps.exif_transpose(img))
    except DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {str(path)!r}: {err}") from err


class SkippedImages:
    """The unreadable images of a pass, skipped and counted so that one bad file never stops it.

    :meth:`read` turns an :class:`ImageReadError` (or one of the caller's own ``errors``) into
    ``None``, records ``(name, reason)`` in :attr:`files` and hands both to ``report``.
    """

    def __init__(
        self,
        *,
        errors: tuple[type[Exception], ...] = (),
        report: Callable[[str, str], None] | None = None,
    ) -> None:
        self.errors = (ImageReadError, *errors)
        self.report = report
        self.files: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.files)

    def read(self, read: Callable[[T], R], item: T, name: str | None = None) -> R | None:
        """``read(item)``, or ``None`` when it fails on a bad image; ``name`` defaults to the
        item as text (a path), the reason is the decoder's own message."""
        try:
            return read(item)
        except self.errors as err:
            name = str(item) if name is None else name
            reason = str(err.__cause__ or err)
            self.files.append((name, reason))
            if self.report is not None:
                self.report(name, reason)
            return None

    def readable(self, items: Iterable[T], read: Callable[[T], R]) -> Iterator[tuple[T, R]]:
        """``(item, read(item))`` of each item that can be read, lazily; the others are skipped."""
        for item in items:
            value = self.read(read, item)
            if value is not None:
                yield item, value


def _check_pixels(img: Image.Image) -> None:
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ValueError(
            f"{width}x{height} = {width * height:,} pixels is over the limit of {MAX_PIXELS:,} "
            "(semhitok_plugin.images.MAX_PIXELS, or SEMHITOK_MAX_IMAGE_PIXELS)"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB: 16-bit greys scaled, transparency composited on BACKGROUND."""
    if img.mode in _GREY_16_BIT:
        img = _grey_to_8_bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _grey_to_8_bit(img: Image.Image) -> Image.Image:
    """A 16-bit grey image (mode "I;16*", or "I" holding 16-bit values as Pillow reads some PNGs
    and TIFFs) scaled to "L"; Pillow's own conversion clips everything above 255 to white. A
    transparent grey (PNG ``tRNS``) becomes an alpha channel ("LA"): after scaling, 257
    neighbouring 16-bit values share its 8-bit level, so the key cannot be carried over."""
    values = np.asarray(img)
    grey = (values.astype(np.float64).clip(0, 65535) / 257).round().astype(np.uint8)
    key = img.info.get("transparency")
    if not isinstance(key, int):
        return Image.fromarray(grey)
    alpha = np.where(values == key, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey, alpha], axis=-1))  # (H, W, 2) uint8: "LA"


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) and crop the centre square."""
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)


def adm_center_crop(img: Image.Image, size: int) -> Image.Image:
    """ADM's ``center_crop_arr``, the preprocessing of LlamaGen's reconstruction evaluation and
    so of the paper's rFID: halve with a box filter while the shorter side is at least twice
    ``size``, resize the shorter side to ``size`` (bicubic, rounded), crop the centre (floor)."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Same-size RGB PIL images -> (B, 3, H, W) float in [-1, 1]."""
    arrays = np.stack([np.asarray(img) for img in images])
    return from_uint8(torch.from_numpy(arrays).permute(0, 3, 1, 2))


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images (rounded, clamped)."""
    return [Image.fromarray(a) for a in to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8, rounded and clamped: the pixels a saved image holds."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1]; the inverse of :func:`to_uint8` on its outputs."""
    return pixels.float() / 127.5 - 1
