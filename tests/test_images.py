import numpy as np
import pytest
import torch
from PIL import Image

from semhitok_plugin.images import SkippedImages, from_uint8, load_image, to_pil, to_uint8


class Broken(Exception):
    """A loader's own kind of unreadable sample."""


def broken(item):
    raise Broken(f"no sample {item}")


def test_skipped_images_passes_over_bad_files_and_names_them(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(good)
    bad.write_bytes(b"not an image")
    reported = []
    skipped = SkippedImages(report=lambda name, reason: reported.append((name, reason)))
    read = list(skipped.readable([good, bad, good], load_image))
    assert [path for path, _ in read] == [good, good]
    assert len(skipped) == 1 and skipped.files == reported
    name, reason = skipped.files[0]
    assert name == str(bad) and "cannot identify image file" in reason


def test_only_bad_images_are_skipped():
    with pytest.raises(Broken):
        SkippedImages().read(broken, 1)
    skipped = SkippedImages(errors=(Broken,))
    assert skipped.read(broken, 1, name="sample one") is None
    assert skipped.files == [("sample one", "no sample 1")]


def test_uint8_round_trip_is_what_a_saved_image_holds():
    images = torch.linspace(-1.2, 1.2, 3 * 4 * 5).reshape(1, 3, 4, 5)
    pixels = to_uint8(images)
    assert pixels.dtype == torch.uint8 and pixels.min() == 0 and pixels.max() == 255
    saved = torch.from_numpy(np.array(to_pil(images)[0]))
    assert torch.equal(pixels[0].permute(1, 2, 0), saved)
    assert torch.equal(to_uint8(from_uint8(pixels)), pixels)
