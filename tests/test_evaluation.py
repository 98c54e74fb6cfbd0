"""Reconstruction / semantic evaluation: weights resolution, metric definitions, one-pass totals.

Real photos, the tiny preset, and random-init metric backbones (pool3 needs a 2048 x 2048 sqrtm,
~30 s on two cores, so most FID checks use pytorch-fid's 64-d block; the 2048-d network is
checked against upstream's ``InceptionV3`` directly). Nothing here touches the network.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

import lpips
import numpy as np
import pytest
import pytorch_fid.inception
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid.fid_score import calculate_frechet_distance
from skimage.metrics import structural_similarity

from semhitok_plugin import WeightsNotFoundError
from semhitok_plugin import evaluation as ev
from semhitok_plugin.images import center_crop, to_tensor, to_uint8
from semhitok_plugin.samples import SAMPLE_PHOTOS, sample_photo

SEED = 1234  # weights "downloaded" by the tests; the random backbones use another seed


@pytest.fixture(scope="module")
def photos6():
    """The six bundled photos, (6, 3, 64, 64) in [-1, 1]."""
    return to_tensor([center_crop(sample_photo(n), 64) for n in SAMPLE_PHOTOS])


@pytest.fixture(scope="module")
def random_backbones():
    """Random backbones with pytorch-fid's 64-d Inception block (fast), plus what loading logged
    and whether it moved the global RNG."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(ev.__name__)
    logger.addHandler(handler)
    rng = torch.random.get_rng_state()
    try:
        backbones = ev.load_metric_backbones(random_backbones=True, fid_dims=64)
    finally:
        logger.removeHandler(handler)
    rng_kept = torch.equal(rng, torch.random.get_rng_state())
    return backbones, [r.getMessage() for r in records], rng_kept


@pytest.fixture(scope="module")
def backbones(random_backbones):
    return random_backbones[0]


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A pytorch-fid-format FID Inception checkpoint (random weights, seed SEED)."""
    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("inception") / ev.INCEPTION_FILE
    torch.save(ev.fid_inception_network().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision ``vgg16().state_dict()`` file (random weights, seed SEED)."""
    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("vgg") / ev.VGG16_FILE
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    return path


@pytest.fixture
def no_cache(monkeypatch, tmp_path):
    """An empty torch hub cache, offline: only the files a test passes can be loaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def quantized(images):
    """uint8 HWC arrays of images in [-1, 1], rounded as they are saved."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def np_usage(ids, num_codes):
    counts = np.bincount(ids.ravel(), minlength=num_codes)
    p = counts[counts > 0] / counts.sum()
    return (counts > 0).mean(), float(np.exp(-(p * np.log(p)).sum()))


# -- weights -------------------------------------------------------------------------------------
def test_offline_without_weights_fails_fast_naming_files_and_flags(no_cache):
    start = time.perf_counter()
    with pytest.raises(ev.MetricWeightsError) as info:
        ev.load_metric_backbones()
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert isinstance(info.value, WeightsNotFoundError)
    for text in (
        ev.INCEPTION_FILE,
        "--inception-weights PATH",
        ev.VGG16_FILE,
        "--lpips-weights PATH",
        "--random-backbones",
        "HF_HUB_OFFLINE=1",
        str(no_cache),
    ):
        assert text in msg
    with pytest.raises(ev.MetricWeightsError, match="--lpips-weights PATH"):
        ev.load_lpips(None)
    missing = no_cache.parent / "nope.pth"
    with pytest.raises(ev.MetricWeightsError, match=r"nope\.pth.*--inception-weights"):
        ev.load_metric_backbones(inception_weights=str(missing), lpips_weights=str(missing))


def test_download_into_torch_hub_cache(monkeypatch, tmp_path, no_cache, inception_file):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # file:// URLs stand in for the real ones
    monkeypatch.setattr(ev, "INCEPTION_URL", (tmp_path / "absent.pth").as_uri())
    with pytest.raises(
        ev.MetricWeightsError, match=r"could not be downloaded.*--inception-weights"
    ):
        ev.resolve_inception_weights()
    assert not no_cache.exists() or not any(no_cache.iterdir())  # no partial file left

    monkeypatch.setattr(ev, "INCEPTION_URL", inception_file.as_uri())
    path = ev.resolve_inception_weights()
    assert path == no_cache / ev.INCEPTION_FILE
    assert path.read_bytes() == inception_file.read_bytes()
    monkeypatch.setattr(ev, "INCEPTION_URL", (tmp_path / "absent.pth").as_uri())
    assert ev.resolve_inception_weights() == path  # now served from the cache

    # torchvision's files carry their sha256 prefix; a file that does not match is refused.
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not vgg16")
    monkeypatch.setattr(ev, "VGG16_URL", bogus.as_uri())
    with pytest.raises(
        ev.MetricWeightsError, match=f"does not start with {ev.VGG16_SHA256_PREFIX}"
    ):
        ev.resolve_vgg16_weights()
    assert not (no_cache / ev.VGG16_FILE).exists()


def upstream_key(key):
    """Name in pytorch-fid's checkpoint of an ``InceptionV3`` (2048-d) state-dict key."""
    layout = [
        ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
        ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
        [f"Mixed_{n}" for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e")],
        ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
    ]
    _, block, index, rest = key.split(".", 3)
    return f"{layout[int(block)][int(index)]}.{rest}"


@pytest.mark.slow
def test_local_weight_files_load_through_the_real_path(
    no_cache, inception_file, vgg_file, backbones
):
    loaded = ev.load_metric_backbones(
        inception_weights=str(inception_file),
        lpips_weights=str(vgg_file.parent),  # file or dir
    )
    assert not loaded.random
    saved = torch.load(inception_file, weights_only=True)
    state = loaded.inception.state_dict()
    assert {upstream_key(k) for k in state} == {k for k in saved if not k.startswith("fc.")}
    for key, value in state.items():
        assert torch.equal(value, saved[upstream_key(key)]), key
    assert not any(p.requires_grad for p in loaded.inception.parameters())
    assert not loaded.inception.training

    vgg = torch.load(vgg_file, weights_only=True)
    trunk = loaded.lpips.net.state_dict()
    assert len(trunk) == 26  # the 13 convolutions of VGG16
    for key, value in trunk.items():  # sliceK.N.weight <- features.N.weight
        assert torch.equal(value, vgg["features." + key.split(".", 1)[1]]), key
    shipped = torch.load(
        Path(lpips.__file__).parent / "weights/v0.1/vgg.pth", map_location="cpu", weights_only=True
    )
    for key, value in shipped.items():
        assert torch.equal(loaded.lpips.state_dict()[key], value)
    # The random backbones are different weights, so the equalities above mean something.
    assert not torch.equal(
        trunk["slice1.0.weight"], backbones.lpips.net.state_dict()["slice1.0.weight"]
    )

    with pytest.raises(ev.MetricWeightsError, match="does not hold"):
        ev.load_metric_backbones(inception_weights=str(vgg_file), lpips_weights=str(vgg_file))


@pytest.mark.slow
def test_fid_inception_is_upstreams_inceptionv3(monkeypatch, photos6):
    torch.manual_seed(SEED)
    net = ev.fid_inception_network().eval()
    # Upstream's constructor, with its download replaced by our network.
    monkeypatch.setattr(pytorch_fid.inception, "fid_inception_v3", lambda: net)
    images = (photos6[:1] + 1) / 2  # one image: two 2048-d forwards are the slow part
    for dims in (2048, 64):
        block = pytorch_fid.inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]
        upstream = pytorch_fid.inception.InceptionV3([block]).eval()
        ours = ev.FIDInceptionV3(net, dims)
        assert ours.state_dict().keys() == upstream.state_dict().keys()
        with torch.no_grad():
            expected = upstream(images)[0]
        assert torch.equal(ours(images)[0], expected)
        acts = ev.inception_activations(ours, images)
        assert acts.shape == (1, dims)
        assert torch.allclose(acts, F.adaptive_avg_pool2d(expected, 1).flatten(1))


def test_random_backbones_are_flagged_and_reproducible(random_backbones):
    backbones, messages, rng_kept = random_backbones
    assert backbones.random
    assert any("RANDOM" in m and "--random-backbones" in m for m in messages)
    assert rng_kept  # building them does not move the caller's RNG


# -- metrics -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_streaming_frechet_equals_numpy_on_all_activations(backbones, photos6, tiny_model):
    images = torch.cat([photos6, photos6.flip(-1)])
    acts = ev.inception_activations(backbones.inception, to_uint8(images).float() / 255)
    a = acts.double().numpy()
    recon = tiny_model.reconstruct(images)
    b = ev.inception_activations(backbones.inception, to_uint8(recon).float() / 255)
    b = b.double().numpy()
    real, fake = ev.FrechetStats(), ev.FrechetStats()
    for chunk in np.split(np.arange(12), [5, 7]):  # uneven batches, one of size 2
        real.update(torch.from_numpy(a[chunk]))
        fake.update(torch.from_numpy(b[chunk]))
    np.testing.assert_allclose(real.mean(), a.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(real.cov(), np.cov(a, rowvar=False), rtol=1e-9, atol=1e-12)
    reference = calculate_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    assert reference > 1e-3
    assert ev.frechet_distance(real, fake) == pytest.approx(reference, rel=1e-6)

    # Far from zero, a naive sum-of-squares covariance would cancel; the shifted one does not.
    far = ev.FrechetStats()
    for chunk in np.split(a + 1e6, [5, 7]):
        far.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(far.cov(), np.cov(a, rowvar=False), rtol=1e-6, atol=1e-9)

    # Through ReconstructionMetrics: the images reach Inception as uint8 / 255 in [0, 1].
    metrics = ev.ReconstructionMetrics(backbones)
    metrics.update(images[:7], recon[:7])
    metrics.update(images[7:], recon[7:])
    np.testing.assert_allclose(metrics.real.mean(), a.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics.fake.cov(), np.cov(b, rowvar=False), rtol=1e-3, atol=1e-8)
    assert metrics.compute()["rfid"] == pytest.approx(reference, rel=1e-3)


def test_identical_images_score_perfectly(backbones, photos6):
    metrics = ev.ReconstructionMetrics(backbones)
    metrics.update(photos6, photos6.clone())
    result = metrics.compute()
    assert abs(result["rfid"]) < 1e-3
    assert result["psnr"] == ev.PSNR_MAX_DB
    assert result["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["lpips"] == 0
    assert result["images"] == 6 and result["fid_dims"] == 64


def test_psnr_is_per_image_against_an_analytic_value(backbones, photos6):
    u = torch.from_numpy(quantized(photos6)).permute(0, 3, 1, 2).long().clamp(8, 247)
    offsets = torch.tensor([8, -8, 4, 2, -1, 8]).view(-1, 1, 1, 1)  # in uint8 levels
    x, y = u / 127.5 - 1, (u + offsets) / 127.5 - 1
    metrics = ev.ReconstructionMetrics(backbones)
    metrics.update(x[:4], y[:4])
    metrics.update(x[4:], y[4:])
    # mse = (k / 255)^2 on [0, 1] -> psnr = 20 log10(255 / |k|), averaged over images.
    expected = np.mean([20 * np.log10(255 / abs(k)) for k in offsets.flatten().tolist()])
    assert metrics.compute()["psnr"] == pytest.approx(expected, abs=1e-9)


def test_ssim_and_lpips_match_direct_computation(backbones, photos6, tiny_model):
    recon = tiny_model.reconstruct(photos6)
    metrics = ev.ReconstructionMetrics(backbones)
    metrics.update(photos6[:2], recon[:2])
    metrics.update(photos6[2:], recon[2:])
    result = metrics.compute()
    a, b = quantized(photos6), quantized(recon)
    ssim = np.mean(
        [
            structural_similarity(p, q, channel_axis=-1, data_range=255)
            for p, q in zip(a, b, strict=True)
        ]
    )
    assert result["ssim"] == pytest.approx(ssim, abs=1e-12)
    assert result["ssim"] < 0.5  # an untrained tokenizer: the identity check above is not vacuous
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        lp = backbones.lpips(x, y).mean().item()
    assert result["lpips"] == pytest.approx(lp, rel=1e-5) and lp > 0.01


# -- whole-set evaluation ------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_reconstruction_totals_over_batches(backbones, photos6, tiny_model):
    batches = [
        {"images": photos6[:4], "labels": [0] * 4, "skipped": 2},
        {"images": photos6[4:], "labels": [0] * 2, "skipped": 1},
    ]
    tiny_model.train()
    result = ev.evaluate_reconstruction(tiny_model, batches, backbones, progress=False)
    assert tiny_model.training  # mode restored
    tiny_model.eval()
    json.dumps(result, allow_nan=False)
    assert result["images"] == 6 and result["skipped"] == 3
    assert result["backbones"] == ev.RANDOM_NOTE

    # Same numbers as the metrics of model.reconstruct on the whole set at once.
    direct = ev.ReconstructionMetrics(backbones)
    direct.update(photos6, tiny_model.reconstruct(photos6))
    expected = direct.compute()
    for key in ("psnr", "ssim", "lpips"):
        assert result[key] == pytest.approx(expected[key], rel=1e-6), key
    assert result["rfid"] == pytest.approx(expected["rfid"], rel=1e-3)
    assert result["rfid"] > 1e-3  # an untrained tokenizer's reconstructions are far off

    pretrained = dataclasses.replace(backbones, random=False)
    result = ev.evaluate_reconstruction(tiny_model, batches[1:], pretrained, progress=False)
    assert result["backbones"] == "pretrained"


@pytest.mark.slow
def test_codebook_usage_is_counted_exactly_from_encoded_ids(backbones, photos6, tiny_model):
    # The quantizers' own counters also count these calls; the evaluation must not use them.
    tiny_model.encode(photos6.flip(-1))
    tiny_model.encode(photos6.flip(-2))
    batches = [{"images": photos6[:5], "skipped": 0}, {"images": photos6[5:], "skipped": 0}]
    usage = ev.evaluate_reconstruction(tiny_model, batches, backbones, progress=False)["usage"]
    out = tiny_model.encode(photos6)
    k, m = tiny_model.codebook_size, tiny_model.sub_codebook_size
    for key, ids, n in (
        ("semantic", out.sem_ids, k),
        ("pixel", out.pix_ids, m),
        ("flat", out.flat_ids, k * m),
    ):
        used, perplexity = np_usage(ids.numpy(), n)
        assert usage[key]["codes"] == n
        assert usage[key]["used"] == pytest.approx(used, abs=1e-12), key
        assert usage[key]["perplexity"] == pytest.approx(perplexity, rel=1e-9), key
    assert usage["flat"]["used"] < 1  # not trivially everything
    counters = tiny_model.semantic_codebook.usage.counts
    assert counters.sum() > out.sem_ids.numel()  # they did count more than the set itself


def test_semantic_fidelity_equals_direct_computation(tiny_model, photos6):
    assert tiny_model.config.canvas_size == tiny_model.config.image_size  # no resize for tiny
    with torch.no_grad():
        target = tiny_model.teacher(photos6)
        codes = tiny_model.semantic_codebook(tiny_model.semantic_proj(target)).quantized
        decoded = tiny_model.semantic_decoder(codes)
        expected = F.cosine_similarity(decoded, target, dim=-1).mean().item()
    batches = [{"images": photos6[:5], "skipped": 1}, {"images": photos6[5:], "skipped": 0}]
    result = ev.semantic_fidelity(tiny_model, batches)
    assert result["images"] == 6 and result["skipped"] == 1
    assert result["cosine"] == pytest.approx(expected, abs=1e-6)
    assert abs(expected) > 1e-3  # a value, not a degenerate zero


def test_evaluation_rejects_images_outside_minus_one_one(backbones, photos6, tiny_model):
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        ev.evaluate_reconstruction(
            tiny_model, [{"images": photos6 * 127.5 + 127.5}], backbones, progress=False
        )
