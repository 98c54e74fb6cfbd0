"""Pictures people look at: semantic token maps (paper Fig. 5) and comparison grids."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def code_colors(ids: torch.Tensor) -> np.ndarray:
    """A stable, well-spread RGB colour per code id (golden-ratio hues), shape (*ids, 3) uint8."""
    ids = ids.cpu().numpy().astype(np.int64)
    hue = (ids * 0.618033988749895) % 1.0
    sat = 0.55 + 0.45 * ((ids * 7919) % 5) / 4
    val = 0.65 + 0.35 * ((ids * 104729) % 3) / 2
    return (_hsv_to_rgb(hue, sat, val) * 255).round().astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((*h.shape, 3))
    for k, (r, g, b) in enumerate(table):
        out[i == k] = np.stack([r, g, b], axis=-1)[i == k]
    return out


def token_map(sem_ids: torch.Tensor, size: int, image: Image.Image | None = None) -> Image.Image:
    """Patches coloured by semantic code, upscaled to ``size``; blended over ``image`` if given."""
    colors = Image.fromarray(code_colors(sem_ids)).resize((size, size), Image.Resampling.NEAREST)
    return Image.blend(image.resize((size, size)), colors, 0.6) if image is not None else colors


def grid(rows: list[list[Image.Image]], pad: int = 2) -> Image.Image:
    """Tile same-size images into one picture (rows x columns) with a white gutter."""
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(img, (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet
