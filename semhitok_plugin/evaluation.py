"""Reconstruction and semantic evaluation: rFID, PSNR, SSIM, LPIPS, codebook usage, teacher match.

Protocol (ImageNet-val-50k style, as in LlamaGen / the SemHiTok paper's rFID): the loader has
already resized and centre-cropped every image to the tokenizer's size; each is encoded to ids and
decoded through the discrete path (encode -> quantised features -> decode), clamped to [-1, 1].
Every metric then compares the two images **as they would be saved**: both are quantised to uint8
exactly like :func:`semhitok_plugin.images.to_pil` does, and

* ``rfid``: Fréchet distance between pytorch-fid Inception-V3 pool3 statistics (2048-d) of the
  originals and of the reconstructions. The uint8 images go in as ``x / 255`` in [0, 1], the range
  pytorch-fid's ``InceptionV3`` expects; it resizes to 299 (bilinear) and maps to [-1, 1] itself.
  Mean and covariance are running sums in float64 (one pass, no activations kept); the distance is
  ``pytorch_fid.fid_score.calculate_frechet_distance``.
* ``psnr``: per image over all pixels and channels, data range [0, 1] (``x / 255``), then the
  mean over images. An exact reconstruction (MSE 0) counts as :data:`PSNR_MAX_DB`, so the mean
  stays finite and the result stays valid JSON.
* ``ssim``: ``skimage.metrics.structural_similarity`` on the uint8 HWC arrays with
  ``channel_axis=-1`` and ``data_range=255`` (scikit-image defaults otherwise: 7x7 uniform
  window), per image, then the mean.
* ``lpips``: LPIPS-VGG (v0.1) on the quantised images mapped back to [-1, 1], mean over images.
* ``usage``: for ``semantic`` (K codes), ``pixel`` (the m ids inside a sub-codebook) and ``flat``
  (K*m ids): the fraction of codes used at least once and the perplexity exp(entropy), counted
  exactly from the ids ``model.encode`` returns over the whole set (the quantizers' own counters
  also count training calls, so they are not used).

Metric backbones come from local files or torch hub's cache (``torch.hub.get_dir()/checkpoints``),
where pytorch-fid and torchvision put them; they are downloaded there only when the network is
allowed. ``HF_HUB_OFFLINE=1``, the project's offline switch, also stops these downloads, and a
missing file fails at once with a message naming it and the option that supplies it.
``random_backbones=True`` gives random Inception and VGG networks for smoke tests; its rFID and
LPIPS mean nothing and the results say so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm.auto import tqdm

from .baselines import PatchKMeans, best_thumbnail, bits_per_image
from .config import ConfigError
from .hub import WeightsNotFoundError, load_state_dict, resolve_url_file
from .images import from_uint8, to_uint8
from .usage import CodeUsage

if TYPE_CHECKING:
    from .data import DataConfig

try:
    import lpips
    from pytorch_fid.fid_score import calculate_frechet_distance
    from pytorch_fid.inception import (
        FID_WEIGHTS_URL,
        FIDInceptionA,
        FIDInceptionC,
        FIDInceptionE_1,
        FIDInceptionE_2,
        InceptionV3,
    )
    from skimage.metrics import structural_similarity
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"evaluation needs lpips, pytorch-fid and scikit-image ({err}): "
        "pip install 'semhitok-plugin[train]'"
    ) from err

log = logging.getLogger(__name__)

# Where the metric backbones come from (read at call time, so tests can point them elsewhere).
INCEPTION_URL = FID_WEIGHTS_URL
INCEPTION_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
VGG16_URL = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
VGG16_FILE = VGG16_URL.rsplit("/", 1)[-1]  # vgg16-397923af.pth
VGG16_SHA256_PREFIX = re.fullmatch(r"vgg16-([0-9a-f]+)\.pth", VGG16_FILE).group(1)
INCEPTION_FLAG, LPIPS_FLAG, RANDOM_FLAG = (
    "--inception-weights",
    "--lpips-weights",
    "--random-backbones",
)

FID_DIMS = 2048  # pool3: the only width comparable to published FIDs
PSNR_MAX_DB = 100.0
PRETRAINED = "pretrained"
RANDOM_NOTE = "RANDOM (smoke test only: rFID/LPIPS not comparable to published numbers)"
_RANDOM_HINT = (
    f" (or use {RANDOM_FLAG} for a smoke test whose rFID/LPIPS are not comparable to published "
    "numbers)"
)
_RANDOM_SEED = 0  # random backbones are reproducible, and leave the global RNG untouched


class MetricWeightsError(WeightsNotFoundError):
    """Weights of a metric backbone (FID Inception, LPIPS VGG16) that cannot be had."""


@dataclass
class MetricBackbones:
    inception: nn.Module  # pytorch-fid's FID InceptionV3 (pool3, 2048-d unless fid_dims says so)
    lpips: nn.Module  # lpips.LPIPS(net="vgg"), v0.1 linear layers
    random: bool  # True only in the documented smoke-test mode


# -- weight files ----------------------------------------------------------------------------------
def resolve_inception_weights(spec: str | None = None) -> Path:
    """The FID Inception weights file: ``spec`` (a file or a directory holding it), else torch
    hub's cache, else a download into it. Calling it where the network is reachable fills the
    cache for later offline runs."""
    return resolve_url_file(
        spec,
        INCEPTION_URL,
        INCEPTION_FILE,
        what="FID Inception weights",
        option=f"{INCEPTION_FLAG} PATH{_RANDOM_HINT}",
        hash_prefix=None,  # pytorch-fid does not check this file's hash either
        error=MetricWeightsError,
    )


def resolve_vgg16_weights(spec: str | None = None) -> Path:
    """The torchvision VGG16 weights file of LPIPS, found or fetched like
    :func:`resolve_inception_weights`; its sha256 prefix is checked as torchvision does."""
    return resolve_url_file(
        spec,
        VGG16_URL,
        VGG16_FILE,
        what="LPIPS VGG16 weights",
        option=f"{LPIPS_FLAG} PATH{_RANDOM_HINT}",
        hash_prefix=VGG16_SHA256_PREFIX,
        error=MetricWeightsError,
    )


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise MetricWeightsError(f"{path} does not hold {what}: {detail}") from err


# -- FID Inception ---------------------------------------------------------------------------------
def fid_inception_network() -> nn.Module:
    """The FID Inception (torchvision Inception3 patched for TF's FID graph), randomly initialised:
    its ``state_dict`` has the layout of pytorch-fid's checkpoint file.

    Same construction as ``fid_inception_v3()`` in pytorch_fid/inception.py (pytorch-fid 0.3.0),
    minus its last step, ``load_state_dict_from_url(FID_WEIGHTS_URL)``: the caller loads weights.
    """
    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class FIDInceptionV3(InceptionV3):
    """pytorch-fid's ``InceptionV3`` feature extractor, assembled from a given FID Inception.

    ``InceptionV3.__init__`` (pytorch_fid/inception.py) always calls ``fid_inception_v3()``, which
    downloads the weights; this does the rest of that ``__init__`` for ``use_fid_inception=True``,
    ``resize_input=True``, ``normalize_input=True``: the same blocks from the same modules, only up
    to the block that produces ``dims``. ``forward`` is upstream's: inputs in [0, 1], bilinear
    resize to 299, scaling to [-1, 1], a list with the ``dims``-channel feature map.
    """

    def __init__(self, net: nn.Module, dims: int = FID_DIMS) -> None:
        if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
            raise ValueError(f"dims must be one of {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}")
        nn.Module.__init__(self)  # not InceptionV3.__init__: it would download the weights
        self.resize_input = True
        self.normalize_input = True
        self.output_blocks = [InceptionV3.BLOCK_INDEX_BY_DIM[dims]]
        self.last_needed_block = self.output_blocks[0]
        self.dims = dims
        blocks = [
            [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(3, stride=2)],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(3, stride=2)],
            [getattr(net, f"Mixed_{n}") for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e")],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1))],
        ]
        self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks[: self.last_needed_block + 1])
        self.requires_grad_(False)
        self.eval()


def fid_inception(
    state_dict: dict[str, torch.Tensor] | None = None, *, dims: int = FID_DIMS
) -> FIDInceptionV3:
    """The FID feature extractor; ``state_dict`` in the format of pytorch-fid's checkpoint
    (``pt_inception-2015-12-05-*.pth``), loaded strictly.

    ``None`` gives random weights, He-initialised: PyTorch's default init shrinks activations
    about 3x per layer, which leaves pool3 features near 1e-8 and every rFID at 0.
    """
    net = fid_inception_network()
    if state_dict is not None:
        net.load_state_dict(state_dict)
    else:
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return FIDInceptionV3(net, dims)


@torch.no_grad()
def inception_activations(inception: nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """(B, dims) features of images in [0, 1], as pytorch-fid's ``get_activations`` takes them."""
    pred = inception(images01)[0]
    if pred.shape[2:] != (1, 1):
        pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
    return pred.flatten(1)


# -- LPIPS -----------------------------------------------------------------------------------------
def _lpips_vgg(vgg_state: dict[str, torch.Tensor] | None, path: Path | None) -> nn.Module:
    """LPIPS-VGG v0.1: the shipped linear layers, and the VGG16 trunk from a torchvision
    ``vgg16().state_dict()`` (``features.N.*`` -> LPIPS's ``net.sliceK.N.*``), or random."""
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=``
        warnings.simplefilter("ignore", UserWarning)
        # pretrained=False: we load the linear layers ourselves, with weights_only=True.
        model = lpips.LPIPS(
            net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False
        )
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    # Only lin0..lin4 (``lins`` holds the same modules); the trunk is loaded below or left random.
    wanted = {k for k in model.state_dict() if re.match(r"lin\d\.", k)}
    if set(lin) != wanted:
        raise RuntimeError(
            f"{lin_path} does not hold the linear layers of LPIPS-VGG: {sorted(lin)}"
        )
    model.load_state_dict(lin, strict=False)
    if vgg_state is not None:
        names = {k: "features." + k.split(".", 1)[1] for k in model.net.state_dict()}
        absent = [v for v in names.values() if v not in vgg_state]
        if absent:
            raise MetricWeightsError(
                f"{path} is not a torchvision VGG16 state dict ({VGG16_FILE}): it lacks "
                f"{', '.join(absent[:4])}{' …' if len(absent) > 4 else ''}"
            )
        trunk = {k: vgg_state[v] for k, v in names.items()}
        _load_into(model.net, trunk, path, f"torchvision VGG16 weights ({VGG16_FILE})")
    model.requires_grad_(False)
    return model.eval()


def _seeded(build):
    """Build with a fixed seed: random backbones are reproducible, and building (even of a
    network whose weights are then loaded) leaves the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        return build()


def load_lpips(
    weights: str | None = None, *, random: bool = False, device: str | torch.device = "cpu"
) -> nn.Module:
    """Frozen LPIPS-VGG (inputs in [-1, 1], output (B, 1, 1, 1)), e.g. for a perceptual loss.

    ``weights``: a torchvision VGG16 ImageNet file (``vgg16-397923af.pth``) or a directory holding
    it; ``None``: torch hub's cache, or a download into it. ``random=True``: random VGG trunk.
    """
    if random:
        if weights is not None:
            raise ValueError("random LPIPS takes no weights file")
        log.warning("LPIPS with a RANDOM VGG16 trunk: for smoke tests only")
        return _seeded(lambda: _lpips_vgg(None, None)).to(device)
    path = resolve_vgg16_weights(weights)
    return _seeded(lambda: _lpips_vgg(load_state_dict(path), path)).to(device)


def load_metric_backbones(
    *,
    inception_weights: str | None = None,
    lpips_weights: str | None = None,
    random_backbones: bool = False,
    device: str | torch.device = "cpu",
    fid_dims: int = FID_DIMS,
) -> MetricBackbones:
    """The FID Inception and LPIPS-VGG networks, frozen, in eval mode, on ``device``.

    Both weight files are looked up before anything is built, and every missing one is reported
    in one :class:`MetricWeightsError`. ``fid_dims`` other than 2048 (pytorch-fid's ``--dims``)
    are for quick checks only.
    """
    if random_backbones:
        if inception_weights is not None or lpips_weights is not None:
            raise ValueError(f"{RANDOM_FLAG} cannot be combined with weight files")
        log.warning(
            "metric backbones are RANDOM (%s): smoke test only, rFID and LPIPS are not "
            "comparable to published numbers",
            RANDOM_FLAG,
        )
        inception = _seeded(lambda: fid_inception(dims=fid_dims))
        lp = _seeded(lambda: _lpips_vgg(None, None))
        return MetricBackbones(inception.to(device), lp.to(device), random=True)
    paths, errors = {}, []
    for key, resolve, spec in (
        ("inception", resolve_inception_weights, inception_weights),
        ("vgg", resolve_vgg16_weights, lpips_weights),
    ):
        try:
            paths[key] = resolve(spec)
        except MetricWeightsError as err:
            errors.append(str(err))
    if errors:
        raise MetricWeightsError("\n".join(errors))
    net = _seeded(fid_inception_network)
    _load_into(net, load_state_dict(paths["inception"]), paths["inception"], INCEPTION_FILE)
    inception = FIDInceptionV3(net, fid_dims)
    lp = _seeded(lambda: _lpips_vgg(load_state_dict(paths["vgg"]), paths["vgg"]))
    return MetricBackbones(inception.to(device), lp.to(device), random=False)


# -- accumulators ----------------------------------------------------------------------------------
class FrechetStats:
    """Running mean and covariance of activations in float64, without keeping the activations.

    Sums are taken around a shift (the first batch's mean) so that subtracting the squared mean
    does not cancel catastrophically when activations are far from zero.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift = self.sum = self.outer = None

    def update(self, acts: torch.Tensor) -> None:
        a = acts.detach().to("cpu", torch.float64).reshape(len(acts), -1)
        if len(a) == 0:
            return
        if self.shift is None:
            self.shift = a.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(len(self.shift), len(self.shift), dtype=torch.float64)
        a = a - self.shift
        self.n += len(a)
        self.sum += a.sum(0)
        self.outer.addmm_(a.T, a)

    @property
    def dims(self) -> int:
        return 0 if self.shift is None else len(self.shift)

    def mean(self) -> np.ndarray:
        return (self.shift + self.sum / self.n).numpy()

    def cov(self) -> np.ndarray:
        """Unbiased (n - 1) covariance, as ``np.cov(acts, rowvar=False)``."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        return ((self.outer - torch.outer(self.sum, self.sum) / self.n) / (self.n - 1)).numpy()


def frechet_distance(a: FrechetStats, b: FrechetStats) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` between two accumulated statistics."""
    # It print()s its singular-product notice; keep stdout clean (the CLI prints JSON there).
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        distance = float(calculate_frechet_distance(a.mean(), a.cov(), b.mean(), b.cov()))
    if printed.getvalue().strip():
        log.warning("pytorch-fid: %s", printed.getvalue().strip())
    return distance


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, float64) of each pair of uint8 images (B, 3, H, W), capped at PSNR_MAX_DB."""
    mse = ((x.double() - y.double()) / 255).square().flatten(1).mean(1)
    return (-10 * torch.log10(mse)).clamp(max=PSNR_MAX_DB)


class ReconstructionMetrics:
    """rFID, PSNR, SSIM and LPIPS accumulated over (original, reconstruction) batches.

    ``update`` takes both as (B, 3, H, W) in [-1, 1]; nothing per image is kept.
    """

    def __init__(self, backbones: MetricBackbones) -> None:
        self.backbones = backbones
        self.real, self.fake = FrechetStats(), FrechetStats()
        self.images = 0
        self.psnr_sum = self.ssim_sum = self.lpips_sum = 0.0

    @torch.no_grad()
    def update(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
        if originals.shape != reconstructions.shape:
            raise ValueError(
                f"originals {tuple(originals.shape)} and reconstructions "
                f"{tuple(reconstructions.shape)} differ in shape"
            )
        x, y = to_uint8(originals), to_uint8(reconstructions)
        self.psnr_sum += float(psnr_per_image(x, y).sum())
        xs = x.permute(0, 2, 3, 1).cpu().numpy()
        ys = y.permute(0, 2, 3, 1).cpu().numpy()
        for a, b in zip(xs, ys, strict=True):
            self.ssim_sum += float(structural_similarity(a, b, channel_axis=-1, data_range=255))
        self.lpips_sum += float(self.backbones.lpips(from_uint8(x), from_uint8(y)).double().sum())
        self.real.update(inception_activations(self.backbones.inception, x.float() / 255))
        self.fake.update(inception_activations(self.backbones.inception, y.float() / 255))
        self.images += len(x)

    def compute(self) -> dict:
        n = self.images
        if n < 2:
            raise ValueError(f"rFID needs at least 2 images, got {n}")
        if self.real.dims != FID_DIMS:
            log.warning("rFID from %d-d Inception features: not comparable", self.real.dims)
        elif n < FID_DIMS:
            log.warning(
                "rFID from %d < %d images: the covariances are singular; the value is only "
                "comparable to others from the same number of images",
                n,
                FID_DIMS,
            )
        return {
            "rfid": frechet_distance(self.real, self.fake),
            "psnr": self.psnr_sum / n,
            "ssim": self.ssim_sum / n,
            "lpips": self.lpips_sum / n,
            "images": n,
            "fid_dims": self.real.dims,
        }


PROTOCOLS = ("llamagen", "pytorch-fid")
NPZ_NAMES = ("inputs", "reconstructions")


class NpzWriter:
    """Images streamed into an ``.npz`` holding ``arr_0``: (N, H, W, 3) uint8, the file
    LlamaGen's ``val_ddp.py`` writes and ADM's ``evaluations/c2i/evaluator.py`` reads. Batches
    go to a raw file first, so 50,000 images never sit in memory; the header, which needs N,
    is written when the file is closed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.raw = open(self.path.with_suffix(".raw.tmp"), "w+b")  # noqa: SIM115 (closed in close)
        self.shape: tuple[int, ...] | None = None
        self.count = 0

    def write(self, images: torch.Tensor) -> None:
        """(B, 3, H, W) in [-1, 1], quantised as a saved image is."""
        arrays = to_uint8(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        self.shape = arrays.shape[1:]
        self.raw.write(arrays.tobytes())
        self.count += len(arrays)

    def close(self) -> Path:
        import zipfile

        self.raw.seek(0)
        header = {"descr": "|u1", "fortran_order": False, "shape": (self.count, *self.shape)}
        with (
            zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
            archive.open("arr_0.npy", "w", force_zip64=True) as member,
        ):
            np.lib.format.write_array_header_2_0(member, header)
            while chunk := self.raw.read(1 << 24):
                member.write(chunk)
        self.raw.close()
        Path(self.raw.name).unlink()
        return self.path


class CodebookUsage:
    """Exact usage of the semantic, pixel (in-sub-codebook) and flat ids over a set of images."""

    def __init__(self, codebook_size: int, sub_codebook_size: int, device="cpu") -> None:
        self.counters = {
            "semantic": CodeUsage(codebook_size).to(device),
            "pixel": CodeUsage(sub_codebook_size).to(device),
            "flat": CodeUsage(codebook_size * sub_codebook_size, group_size=sub_codebook_size).to(
                device
            ),
        }

    def update(self, sem_ids: torch.Tensor, pix_ids: torch.Tensor, flat_ids: torch.Tensor) -> None:
        for key, ids in (("semantic", sem_ids), ("pixel", pix_ids), ("flat", flat_ids)):
            counter = self.counters[key]
            counter.update(ids.to(counter.counts.device))

    def compute(self) -> dict:
        return {key: counter.summary() for key, counter in self.counters.items()}


# -- entry points ----------------------------------------------------------------------------------
def _checked(batch: dict, device) -> torch.Tensor:
    images = batch["images"]
    if not torch.is_floating_point(images):
        raise TypeError(f"batch images must be float in [-1, 1], got {images.dtype}")
    images = images.to(device, torch.float32)
    if images.numel() and (images.min() < -1.001 or images.max() > 1.001):
        raise ValueError(
            f"batch images must be in [-1, 1], got [{images.min():.3f}, {images.max():.3f}]"
        )
    return images


class _EvalPass:
    """One pass over ``batches`` with ``model`` in eval mode (its mode is restored afterwards):
    yields each non-empty batch's images on ``device``, checked to be floats in [-1, 1], and
    sums the files the loader skipped (``batch["skipped"]``) in ``skipped``."""

    def __init__(self, model: nn.Module, batches: Iterable[dict], device) -> None:
        self.model, self.batches, self.device = model, batches, device
        self.skipped = 0

    def __iter__(self):
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in self.batches:
                self.skipped += int(batch.get("skipped", 0))
                images = _checked(batch, self.device)
                if len(images):
                    yield images
        finally:
            self.model.train(was_training)


def _progress(batches, progress: bool, desc: str):
    total = len(batches) if hasattr(batches, "__len__") else None
    return tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress)


def evaluate_reconstruction(
    model,
    batches: Iterable[dict],
    backbones: MetricBackbones,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    npz_dir: Path | None = None,
) -> dict:
    """rFID, PSNR, SSIM, LPIPS and codebook usage of ``model`` over ``batches``, in one pass.

    ``batches`` yield ``{"images": (B, 3, S, S) float in [-1, 1], "skipped": int, ...}`` at the
    model's image size; the model and the backbones must already be on ``device``. The result is
    JSON-serialisable (see the module docstring for every metric's definition). ``npz_dir``
    also writes ``inputs.npz`` and ``reconstructions.npz`` for ADM's TensorFlow evaluator.
    """
    npz = {}
    if npz_dir is not None:
        npz = {name: NpzWriter(Path(npz_dir) / f"{name}.npz") for name in NPZ_NAMES}
    metrics = ReconstructionMetrics(backbones)
    usage = CodebookUsage(model.codebook_size, model.sub_codebook_size, device)
    evaluated = _EvalPass(model, _progress(batches, progress, "eval-recon"), device)
    for images in evaluated:
        out = model.encode(images)
        # The discrete path, as model.reconstruct, keeping the ids of the same encoding.
        with torch.no_grad():
            recon = model.decode_features(out.sem_features, out.pix_features).clamp(-1, 1)
        usage.update(out.sem_ids, out.pix_ids, out.flat_ids)
        metrics.update(images, recon)
        for name, writer in npz.items():
            writer.write(images if name == "inputs" else recon)
    result = metrics.compute()
    if npz:
        result["npz"] = {name: str(writer.close()) for name, writer in npz.items()}
    result["usage"] = usage.compute()
    result["skipped"] = evaluated.skipped
    result["backbones"] = RANDOM_NOTE if backbones.random else PRETRAINED
    return result


@torch.no_grad()
def evaluate_baselines(
    model,
    batches: Iterable[dict],
    backbones: MetricBackbones,
    *,
    kmeans: PatchKMeans | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict:
    """The metrics of :func:`evaluate_reconstruction` for the equal-bit baselines of ``model``
    (see :mod:`semhitok_plugin.baselines`) on ``batches``: ``thumbnail`` (its side picked on the
    first batch) and, when given, ``kmeans``; ``bits_per_image`` is the tokenizer's budget."""
    h, w = model.grid_size
    bits = bits_per_image(h * w, model.vocab_size)
    meters = {"thumbnail": ReconstructionMetrics(backbones)}
    if kmeans is not None:
        meters["kmeans"] = ReconstructionMetrics(backbones)
    thumbnail = None
    for batch in _progress(batches, progress, "baselines"):
        images = _checked(batch, device)
        if not len(images):
            continue
        thumbnail = thumbnail or best_thumbnail(images, bits)
        meters["thumbnail"].update(images, thumbnail.reconstruct(images))
        if kmeans is not None:
            meters["kmeans"].update(images, kmeans.reconstruct(images))
    if thumbnail is None:
        raise ValueError("evaluate_baselines got no images")
    result: dict = {name: meter.compute() for name, meter in meters.items()}
    result["thumbnail"] |= {"side": thumbnail.side, "levels": thumbnail.levels}
    result["thumbnail"]["bits"] = thumbnail.bits
    if kmeans is not None:
        result["kmeans"] |= {"centroids": len(kmeans.centroids), "patch": kmeans.patch}
        result["kmeans"]["training_patches"] = kmeans.fitted_on
        result["kmeans"]["bits"] = bits
    result["bits_per_image"] = bits
    return result


def fit_patch_kmeans(model, data: DataConfig, *, crops: int = 2048, seed: int = 0) -> PatchKMeans:
    """k-means with ``model``'s vocabulary size over its token-sized patches of ``crops``
    training crops from ``data`` (the training run's data config: its random crops)."""
    from itertools import islice

    from .data import ImageStream

    size = model.config.image_size
    h, w = model.grid_size
    if size % h or h != w:
        raise ConfigError(
            f"a {size} px image is not cut into whole {h} x {w} token patches: no k-means "
            "patch baseline for this model"
        )
    if data.image_size != size:
        raise ConfigError(f"baseline crops are {data.image_size} px, the model's images {size} px")
    stream = ImageStream(data, 64, seed=seed)
    batches = (b["images"] for b in islice(stream, math.ceil(crops / 64)))
    return PatchKMeans.fit(batches, model.vocab_size, size // h, seed=seed)


@torch.no_grad()
def random_crop_usage(
    model,
    source: str | Path,
    *,
    crops: int = 1280,
    batch_size: int = 32,
    seed: int = 123,
    device: str | torch.device = "cpu",
) -> dict:
    """Codebook usage over ``crops`` random crops of the images in ``source`` (Tab. 9's
    "Usage"): ``semantic`` (share of the K codes used), ``sub_codebook`` (mean over the visited
    sub-codebooks of the share of their m entries used) and ``tokens`` (how many were counted).
    Held-out sets are too small for this (29 demo tiles are 1,856 tokens for 256 x 8 codes)."""
    from itertools import islice

    from .data import DataConfig, ImageStream

    stream = ImageStream(
        DataConfig(source=str(source), image_size=model.config.image_size), batch_size, seed=seed
    )
    usage = CodebookUsage(model.codebook_size, model.sub_codebook_size, device)
    for images in _EvalPass(model, islice(stream, math.ceil(crops / batch_size)), device):
        out = model.encode(images)
        usage.update(out.sem_ids, out.pix_ids, out.flat_ids)
    summary = usage.compute()
    return {
        "semantic": summary["semantic"]["used"],
        "sub_codebook": summary["flat"]["used_in_visited_groups"],
        "tokens": summary["flat"]["tokens"],
    }


@torch.no_grad()
def semantic_fidelity(
    model, batches: Iterable[dict], *, device: str | torch.device = "cpu"
) -> dict:
    """Mean cosine similarity, over all tokens of all images, between the semantic decoder's
    output on the quantised semantic codes and the teacher's features (the stage-1 target)."""
    total, tokens, images_seen = 0.0, 0, 0
    evaluated = _EvalPass(model, batches, device)
    for images in evaluated:
        # The path of the distillation loss (SemHiTok.forward, stage "semantic"), no update.
        target, sem = model.distill(model.to_canvas(images))
        decoded = model.semantic_decoder(sem.quantized)
        cos = F.cosine_similarity(decoded.float(), target.float(), dim=-1)
        total += float(cos.double().sum())
        tokens += cos.numel()
        images_seen += len(images)
    if images_seen == 0:
        raise ValueError("semantic_fidelity got no images")
    return {"cosine": total / tokens, "images": images_seen, "skipped": evaluated.skipped}


__all__ = [
    "FID_DIMS",
    "INCEPTION_FILE",
    "PROTOCOLS",
    "PSNR_MAX_DB",
    "RANDOM_NOTE",
    "VGG16_FILE",
    "CodebookUsage",
    "FIDInceptionV3",
    "FrechetStats",
    "MetricBackbones",
    "MetricWeightsError",
    "NpzWriter",
    "ReconstructionMetrics",
    "evaluate_baselines",
    "evaluate_reconstruction",
    "fid_inception",
    "fid_inception_network",
    "fit_patch_kmeans",
    "frechet_distance",
    "inception_activations",
    "load_lpips",
    "load_metric_backbones",
    "psnr_per_image",
    "random_crop_usage",
    "resolve_inception_weights",
    "resolve_vgg16_weights",
    "semantic_fidelity",
]
