"""Real photos that ship inside scikit-image's wheel, for demos and tests without a network."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# Colour photographs bundled with scikit-image (skimage.data loads them from the wheel).
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


def sample_photo(name: str) -> Image.Image:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "sample photos need scikit-image: pip install 'semhitok-plugin[samples]'"
        ) from err
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


# Photos from another package's wheel (scikit-learn's sample images): the main job never trains on
# them, so they show what it learned beyond its own photos.
UNSEEN_PHOTOS = ("china", "flower")


def unseen_photo(name: str) -> Image.Image:
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as err:
        raise ImportError(
            "the unseen photos need scikit-learn: pip install 'semhitok-plugin[train]'"
        ) from err
    return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")


def write_sample_photos(directory: Path, names: tuple[str, ...] = SAMPLE_PHOTOS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / f"{name}.png"
        if not path.exists():
            sample_photo(name).save(path)
        paths.append(path)
    return paths
