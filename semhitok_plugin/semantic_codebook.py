"""The semantic codebook: a cosine EMA vector quantizer (paper §3.1, Eq. 4; VQ-KD style).

Why not ``vector_quantize_pytorch.VectorQuantize`` (evaluated at 1.32.0, which otherwise offers
cosine EMA codebooks, k-means init and dead-code replacement)? Three requirements it does not meet:

* it decides whether to all-reduce codebook statistics when the module is *constructed*
  (``sync_codebook = is_distributed()`` in ``__init__``); a quantizer built before
  ``init_process_group`` would silently train one codebook per rank. We decide at call time.
* it keeps an EMA of cluster sizes, not exact per-code usage counts, and restarts dead codes from
  that EMA; we need exact counts (``CodeUsage``) and a restart rule that tests can reason about.
* its EMA smooths sums and counts separately (Laplace smoothing); the paper's Eq. (4) moves each
  used code towards the mean of its assigned inputs, which is what we implement and test.

Update rule, for each code k assigned n_k > 0 inputs in the (globally all-reduced) batch:
``e_k <- normalize(decay * e_k + (1 - decay) * normalize(mean of inputs assigned to k))``.
Codes with n_k = 0 are left unchanged; a code idle for ``dead_code_patience`` consecutive updates
is moved onto a random input vector of the batch (drawn on rank 0 and broadcast).

``quantizer`` selects the update rule of the paper's Tab. 9 ablation; init (k-means) and
restarts are the same for all three, so only the rule differs:

* ``ema`` (default): the rule above. ``l2_norm=True`` is VQ-KD's codebook (cosine search,
  normalised inputs and codes), which the paper says it follows; ``l2_norm=False`` searches and
  averages in Euclidean space.
* ``vanilla``: a parameter trained by gradient (codebook loss ``|q - sg(z)|^2``), Euclidean.
* ``norm``: as ``vanilla`` on l2-normalised inputs and codes (LlamaGen's "normalised VQ").
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import QUANTIZERS
from .distributed import all_reduce_sum_, broadcast_
from .usage import CodeUsage


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # codebook vectors (straight-through when the input needs grad)
    ids: torch.Tensor  # long, the input's leading shape
    losses: dict[str, torch.Tensor]


def full_precision(method):
    """Run a quantizer outside autocast, in its codebook's dtype: nearest-code search in bf16
    (8-bit mantissa) picks wrong codes whenever two similarities differ by less than ~0.4%."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        device_type = next(self.buffers()).device.type
        with torch.autocast(device_type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value ``q``, gradient of ``z``. Returns ``q`` itself when no gradient is needed,
    so inference features are exactly the codebook rows (decode(ids) == reconstruct(x))."""
    return z + (q - z).detach() if z.requires_grad else q


class SemanticCodebook(nn.Module):
    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        quantizer: str = "ema",
        l2_norm: bool = True,
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_patience: int = 100,
        chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.kmeans_iters = kmeans_iters if kmeans_init else 0
        self.dead_code_patience = dead_code_patience
        self.chunk_size = chunk_size
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        self.quantizer = quantizer
        self.l2_norm = quantizer == "norm" or (quantizer == "ema" and l2_norm)
        codes = torch.randn(codebook_size, dim)
        codes = F.normalize(codes, dim=-1) if self.l2_norm else codes
        if quantizer == "ema":
            self.register_buffer("codebook", codes)
        else:  # the same state-dict key, trained by the optimizer
            self.codebook = nn.Parameter(codes)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self._init_checked = False
        # Consecutive updates in which each code was not selected by any rank.
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.usage = CodeUsage(codebook_size)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.reset_init_check()

    @property
    def init_pending(self) -> bool:
        """True until an update has read the ``initialized`` buffer (and run k-means if it was
        unset). That buffer is read once, not every step: reading it is a host-device sync."""
        return not self._init_checked

    def reset_init_check(self) -> None:
        """Read ``initialized`` again at the next update: call it after writing the buffers from
        outside (a loaded state, or a skipped step that put back the k-means init)."""
        self._init_checked = False

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1) if self.l2_norm else z

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors of ``ids``; normalised after the gather, so restarts may edit the
        parameter after the lookup without invalidating what autograd saved."""
        q = F.embedding(ids, self.codebook)
        return F.normalize(q, dim=-1) if self.quantizer == "norm" else q

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``z`` (N, dim), already prepared (cosine
        when l2-normalised, else Euclidean: argmax of z.e - |e|^2 / 2).

        The similarity matrix is built ``chunk_size`` rows at a time, so peak memory is
        chunk_size x K, not N x K.
        """
        codes = self._prepare(self.codebook.detach())
        bias = 0 if self.l2_norm else codes.square().sum(-1) / 2
        return torch.cat([(c @ codes.T - bias).argmax(-1) for c in z.split(self.chunk_size)])

    @full_precision
    def forward(self, z: torch.Tensor, *, update: bool = False) -> QuantizerOutput:
        """Quantize ``z`` (..., dim). ``update=True`` applies one EMA step (training only)."""
        z = self._prepare(z.to(self.codebook.dtype))
        flat = z.reshape(-1, self.dim)
        if update and not self._init_checked:  # read the buffer once, not every step
            if not self.initialized:
                self._kmeans_init(flat.detach())
            self._init_checked = True
        ids = self.nearest(flat.detach())
        q = self.lookup(ids)
        self.usage.update(ids)
        if update:
            self._ema_update(flat.detach(), ids)
        q = q.view_as(z)
        losses = {"commitment": self.commitment_weight * F.mse_loss(z, q.detach())}
        if self.quantizer != "ema":
            losses["codebook"] = F.mse_loss(q, z.detach())
        return QuantizerOutput(straight_through(z, q), ids.view(z.shape[:-1]), losses)

    def _batch_stats(self, flat: torch.Tensor, ids: torch.Tensor):
        counts = flat.new_zeros(self.codebook_size).index_add_(0, ids, flat.new_ones(len(ids)))
        sums = torch.zeros_like(self.codebook).index_add_(0, ids, flat)
        return all_reduce_sum_(counts), all_reduce_sum_(sums)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        """The EMA step (``ema`` only), idle counters and restarts (all rules)."""
        counts, sums = self._batch_stats(flat, ids)
        used = counts > 0
        if self.quantizer == "ema":
            # normalize(mean) == normalize(sum)
            target = self._prepare(sums / counts.clamp(min=1)[:, None])
            moved = self._prepare(self.decay * self.codebook + (1 - self.decay) * target)
            self.codebook.copy_(torch.where(used[:, None], moved, self.codebook))
        self.idle_steps.copy_(torch.where(used, 0, self.idle_steps + 1))
        if self.dead_code_patience:
            self._restart_dead_codes(flat)

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        # Branch-free (no host sync): draw a candidate for every code, keep it only where dead.
        # idle_steps is identical on all ranks (it is derived from all-reduced counts), so only
        # the candidates need broadcasting.
        dead = self.idle_steps >= self.dead_code_patience
        picks = torch.randint(len(flat), (self.codebook_size,), device=flat.device)
        candidates = broadcast_(flat[picks].contiguous())
        self.codebook.copy_(torch.where(dead[:, None], candidates, self.codebook))
        self.idle_steps.masked_fill_(dead, 0)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """k-means (spherical when l2-normalised) over the first training batch (all ranks' data,
        rank 0's seeds)."""
        picks = torch.randint(len(flat), (self.codebook_size,), device=flat.device)
        self.codebook.copy_(broadcast_(flat[picks].contiguous()))
        for _ in range(self.kmeans_iters):
            counts, sums = self._batch_stats(flat, self.nearest(flat))
            centers = self._prepare(sums / counts.clamp(min=1)[:, None])
            self.codebook.copy_(torch.where((counts > 0)[:, None], centers, self.codebook))
        self.initialized.fill_(True)
