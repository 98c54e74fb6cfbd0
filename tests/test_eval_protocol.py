"""LlamaGen's reconstruction-evaluation protocol: ADM's centre crop and the evaluator's .npz."""

import numpy as np
import torch
from PIL import Image

from semhitok_plugin.cli import build_parser
from semhitok_plugin.data import DataConfig, eval_batches
from semhitok_plugin.evaluation import NpzWriter
from semhitok_plugin.images import adm_center_crop, center_crop, to_uint8


def noise_image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_adm_crop_box_halves_while_twice_the_target_then_bicubic_then_floor_centre():
    img = noise_image(1000, 600)
    out = adm_center_crop(img, 256)
    assert out.size == (256, 256)
    halved = img.resize((500, 300), Image.Resampling.BOX)  # 600 >= 512: one halving; 300 stops
    scaled = halved.resize((round(500 * 256 / 300), 256), Image.Resampling.BICUBIC)  # 427 x 256
    left = (427 - 256) // 2
    expected = scaled.crop((left, 0, left + 256, 256))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    # not the same pixels as a single bicubic resize (the pytorch-fid protocol's crop)
    assert not np.array_equal(np.asarray(out), np.asarray(center_crop(img, 256)))


def test_eval_batches_keep_the_adm_crop(tmp_path):
    noise_image(300, 200).save(tmp_path / "a.png")
    config = DataConfig(source=str(tmp_path), image_size=64, crop="adm")
    batch = next(iter(eval_batches(config, 1)))["images"]
    expected = np.asarray(adm_center_crop(noise_image(300, 200), 64))
    assert np.array_equal(to_uint8(batch)[0].permute(1, 2, 0).numpy(), expected)


def test_npz_holds_uint8_nhwc_arr_0_as_the_adm_evaluator_reads(tmp_path):
    batches = [torch.rand(3, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1]
    writer = NpzWriter(tmp_path / "recons.npz")
    for batch in batches:
        writer.write(batch)
    path = writer.close()
    arr = np.load(path)["arr_0"]
    expected = torch.cat([to_uint8(b) for b in batches]).permute(0, 2, 3, 1).numpy()
    assert arr.dtype == np.uint8 and arr.shape == (5, 8, 8, 3)
    assert np.array_equal(arr, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recons.npz"]  # temp file removed


def test_eval_recon_defaults_to_the_papers_protocol():
    args = build_parser().parse_args(["eval-recon", "-m", "tiny", "--data", "d"])
    assert args.protocol == "llamagen" and args.npz_dir is None
    other = build_parser().parse_args(
        ["eval-recon", "-m", "tiny", "--data", "d", "--protocol", "pytorch-fid"]
    )
    assert other.protocol == "pytorch-fid"
