"""Equal-bit baselines: budgets, exactness where a codec must be exact, and their report."""

import json
import math

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from semhitok_plugin import baselines as bl
from semhitok_plugin import evaluation as ev
from semhitok_plugin.cli import main
from semhitok_plugin.images import from_uint8, to_uint8
from semhitok_plugin.samples import write_sample_photos


def test_the_budget_is_tokens_times_log2_vocabulary():
    assert bl.bits_per_image(64, 2048) == 704
    assert bl.bits_per_image(256, 196_608) == pytest.approx(256 * 17.585, abs=0.1)


@pytest.mark.parametrize("bits", [704, 2048 * math.log2(16384), 30])
def test_each_thumbnail_has_the_most_levels_its_budget_allows(bits):
    thumbnails = bl.thumbnails_within(bits, 64)
    assert thumbnails, "a 1 x 1 thumbnail with two levels needs only 3 bits"
    for t in thumbnails:
        assert t.bits <= bits
        assert t.levels == 256 or bl.Thumbnail(t.side, t.levels + 1).bits > bits
    largest = thumbnails[-1].side
    assert largest == 64 or bl.Thumbnail.within(bits, largest + 1) is None


@pytest.mark.parametrize("side, levels", [(1, 2), (6, 91), (8, 12), (64, 256)])
def test_a_thumbnail_of_a_constant_image_is_exact(side, levels):
    """Any value on the level grid survives downsampling, quantisation and upsampling."""
    t = bl.Thumbnail(side, levels)
    for level in (0, levels // 3, levels - 1):
        value = 2 * level / (levels - 1) - 1
        images = torch.full((2, 3, 64, 64), value)
        assert torch.equal(to_uint8(t.reconstruct(images)), to_uint8(images))


def test_the_best_thumbnail_beats_every_other_within_the_budget(photos):
    truth = to_uint8(photos).permute(0, 2, 3, 1).numpy()

    def mean_psnr(t):  # scikit-image's PSNR, per image, as eval-recon averages it
        recon = to_uint8(t.reconstruct(photos)).permute(0, 2, 3, 1).numpy()
        return sum(peak_signal_noise_ratio(a, b) for a, b in zip(truth, recon, strict=True))

    best = bl.best_thumbnail(photos, 704)
    assert all(mean_psnr(best) >= mean_psnr(t) for t in bl.thumbnails_within(704, 64))
    with pytest.raises(ValueError, match="no thumbnail fits in 2 bits"):
        bl.best_thumbnail(photos, 2)


def test_patches_round_trip_and_refuse_a_partial_grid(photos):
    rows = bl.patches(photos, 8)
    assert rows.shape == (4, 64, 192)
    assert torch.equal(rows[0, 1], photos[0, :, 0:8, 8:16].reshape(-1))  # row-major
    assert torch.equal(bl.from_patches(rows, 64, 8), photos)
    with pytest.raises(ValueError, match="not a multiple of 7"):
        bl.patches(photos, 7)


def test_kmeans_with_as_many_centroids_as_patches_reproduces_them_exactly():
    torch.manual_seed(0)
    images = from_uint8(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8))  # 12 patches
    codec = bl.PatchKMeans.fit([images[:2], images[2:]], vocabulary=12, patch=8)
    assert torch.equal(to_uint8(codec.reconstruct(images)), to_uint8(images))
    assert sorted(codec.encode(images).flatten().tolist()) == list(range(12))


def test_kmeans_codes_each_patch_by_its_nearest_centroid(photos):
    codec = bl.PatchKMeans.fit([photos], vocabulary=32, patch=8)
    rows = bl.patches(photos, 8)
    expected = torch.cdist(rows.double(), codec.centroids.double()[None]).argmin(-1)
    assert torch.equal(codec.encode(photos), expected)
    with pytest.raises(ValueError, match="needs at least as many patches, got 256"):
        bl.PatchKMeans.fit([photos], vocabulary=257, patch=8)
    with pytest.raises(ValueError, match=r"centroids must be \(V, 192\)"):
        bl.PatchKMeans(torch.zeros(4, 48), patch=8)


def test_baseline_metrics_are_the_tokenizer_metrics_of_each_codec(tiny_model, photos):
    """A k-means whose centroids are the images' own patches is lossless (PSNR at its cap); the
    thumbnail's PSNR matches scikit-image's on the same uint8 images."""
    backbones = ev.load_metric_backbones(random_backbones=True, fid_dims=64)
    exact = bl.PatchKMeans(bl.patches(photos, 8).reshape(-1, 192), patch=8)
    batches = [{"images": photos[:2]}, {"images": photos[2:]}]
    result = ev.evaluate_baselines(tiny_model, batches, backbones, kmeans=exact, progress=False)
    assert result["bits_per_image"] == 64 * math.log2(tiny_model.vocab_size)
    assert result["kmeans"]["psnr"] == ev.PSNR_MAX_DB and result["kmeans"]["ssim"] == 1.0
    thumb = bl.Thumbnail(result["thumbnail"]["side"], result["thumbnail"]["levels"])
    assert thumb == bl.best_thumbnail(photos[:2], result["bits_per_image"])
    recon = to_uint8(thumb.reconstruct(photos)).permute(0, 2, 3, 1).numpy()
    truth = to_uint8(photos).permute(0, 2, 3, 1).numpy()
    psnr = sum(peak_signal_noise_ratio(a, b) for a, b in zip(truth, recon, strict=True)) / 4
    assert result["thumbnail"]["psnr"] == pytest.approx(psnr, abs=1e-9)
    assert result["thumbnail"]["bits"] <= result["bits_per_image"]


def test_kmeans_needs_whole_token_patches(tiny_model, tmp_path):
    from semhitok_plugin.data import DataConfig

    with pytest.raises(ValueError, match="baseline crops are 32 px, the model's images 64 px"):
        ev.fit_patch_kmeans(tiny_model, DataConfig(source=str(tmp_path), image_size=32))


@pytest.mark.slow
def test_eval_recon_reports_both_baselines(tmp_path, capsys):
    image_dir = tmp_path / "photos"
    write_sample_photos(image_dir)
    out = tmp_path / "m.json"
    args = ["eval-recon", "-m", "tiny", "--data", str(image_dir), "--random-backbones"]
    args += ["-o", str(out), "--baseline-train", str(image_dir), "--baseline-crops", "64"]
    assert main(args) == 0
    err = capsys.readouterr().err
    baselines = json.loads(out.read_text())["baselines"]
    assert baselines["bits_per_image"] == 64 * 8  # 8 x 8 tokens, 256 flat ids
    assert baselines["kmeans"]["centroids"] == 256 and baselines["kmeans"]["patch"] == 8
    for label in ("tokenizer (512 bits)", "thumbnail", "k-means, 256 x 8 px patches"):
        assert label in err
