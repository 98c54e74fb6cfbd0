"""Semantic-Guided Hierarchical Codebook: pixel sub-codebooks indexed by the semantic id (§3.2).

Written by hand because no quantization library has the one operation SGHC needs: a token whose
semantic id is ``k`` is matched only against the ``m`` entries of sub-codebook ``k`` (Eq. 5).
Gathering those ``m`` candidates per token costs O(tokens x m x d) memory and time; a flat
nearest-neighbour search over all K x m codes with a mask would cost O(tokens x K x m)
(``benchmarks/quantizer.py`` measures both).

The sub-codebooks are a "normalised VQ" (paper §4.1, as in LlamaGen): inputs and codes are
l2-normalised, codes learn by gradient through the codebook loss ``|q - sg(z)|^2``, and the encoder
by the commitment loss ``beta |z - sg(q)|^2`` plus the straight-through estimator.

Gradient-trained codes only move when selected, so a sub-codebook drawn at random on the sphere
keeps most of its m entries unused (about 40 % used at m = 12 at demo scale). Two training-time
rules, applied in the forward with ``update=True`` (stage 2 only), bring usage up:

* *data-dependent init*: the first batch that routes tokens to sub-codebook ``k`` sets its m
  entries to m of those tokens' features (distinct when at least m arrive);
* *dead-entry restart*: an entry not selected during ``dead_code_patience`` consecutive steps in
  which its sub-codebook was visited is moved onto a feature routed to that sub-codebook.

Both are branch-free (no host sync): a candidate is drawn for every entry and kept only where
needed. Under DDP the candidates come from rank 0 (broadcast) and the idle counters from
all-reduced counts, so every rank applies the identical change. Both edit the codes *before*
the search, so autograd never sees a code change after it was used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum_, broadcast_
from .ids import check_ids
from .semantic_codebook import QuantizerOutput, full_precision, straight_through
from .usage import CodeUsage


class SubCodebookQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int,
        sub_size: int,
        dim: int,
        *,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        data_init: bool = False,
        dead_code_patience: int = 0,
    ) -> None:
        super().__init__()
        self.codebook_size, self.sub_size, self.dim = codebook_size, sub_size, dim
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.data_init, self.dead_code_patience = data_init, dead_code_patience
        self.codebooks = nn.Parameter(torch.randn(codebook_size, sub_size, dim))
        # Persistent, so a resumed or later stage never re-initialises trained sub-codebooks.
        self.register_buffer("initialized", torch.zeros(codebook_size, dtype=torch.bool))
        # Consecutive visits of its sub-codebook (on any rank) in which an entry was not chosen.
        self.register_buffer("idle_steps", torch.zeros(codebook_size, sub_size, dtype=torch.long))
        self.usage = CodeUsage(codebook_size * sub_size, group_size=sub_size)  # per flat id

    def normalized(self) -> torch.Tensor:
        """All sub-codebooks, l2-normalised: (K, m, d). Encode and decode both index this one
        tensor, so ``decode(encode(x).flat_ids)`` reproduces the encoder's features bit for bit."""
        return F.normalize(self.codebooks, dim=-1)

    def lookup(self, sem_ids: torch.Tensor, pix_ids: torch.Tensor) -> torch.Tensor:
        check_ids(sem_ids, self.codebook_size, "sem_ids")
        check_ids(pix_ids, self.sub_size, "pix_ids")
        return self.normalized()[sem_ids, pix_ids]

    @full_precision
    def forward(
        self, z: torch.Tensor, sem_ids: torch.Tensor, *, update: bool = False
    ) -> QuantizerOutput:
        """Quantize pixel features ``z`` (..., d) within the sub-codebooks of ``sem_ids`` (...).
        ``update=True`` (training) applies data-dependent init and dead-entry restarts first."""
        z = F.normalize(z.to(self.codebooks.dtype), dim=-1)
        flat, sem = z.reshape(-1, self.dim), sem_ids.reshape(-1)
        if update:
            self._replace_entries(flat.detach(), sem)
        candidates = self.normalized()[sem]  # (N, m, d): the only per-token intermediate
        scores = torch.bmm(candidates.detach(), flat.detach().unsqueeze(-1)).squeeze(-1)
        pix = scores.argmax(-1)
        q = candidates.gather(1, pix.view(-1, 1, 1).expand(-1, 1, self.dim)).squeeze(1)
        self.usage.update(sem * self.sub_size + pix)  # flat ids; both in range by construction
        if update:
            self._count_idle(sem, pix)
        losses = {
            "codebook": self.codebook_weight * F.mse_loss(q, flat.detach()),
            "commitment": self.commitment_weight * F.mse_loss(flat, q.detach()),
        }
        return QuantizerOutput(straight_through(z, q.view_as(z)), pix.view(sem_ids.shape), losses)

    @torch.no_grad()
    def _routed_samples(
        self, flat: torch.Tensor, sem: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For every entry (k, j), a feature routed to sub-codebook ``k`` (K, m, d), and whether
        ``k`` received any (K,). Entry j takes the j-th (mod count) of ``k``'s features in a
        random order, so the m entries get distinct features when at least m arrive."""
        n = len(flat)
        order = torch.argsort(sem * n + torch.randperm(n, device=flat.device))
        counts = torch.zeros_like(self.initialized, dtype=torch.long).index_add_(
            0, sem, torch.ones_like(sem)
        )
        starts = counts.cumsum(0) - counts
        slot = torch.arange(self.sub_size, device=flat.device)
        picks = starts[:, None] + slot[None, :] % counts.clamp(min=1)[:, None]
        samples = flat[order[picks.clamp(max=n - 1)]]
        return broadcast_(samples.contiguous()), broadcast_(counts > 0)

    @torch.no_grad()
    def _replace_entries(self, flat: torch.Tensor, sem: torch.Tensor) -> None:
        samples, received = self._routed_samples(flat, sem)
        replace = ~self.initialized[:, None].expand(-1, self.sub_size) & self.data_init
        if self.dead_code_patience:
            replace = replace | (self.idle_steps >= self.dead_code_patience)
        replace = replace & received[:, None]
        self.codebooks.copy_(torch.where(replace[..., None], samples, self.codebooks))
        self.initialized.logical_or_(received)
        self.idle_steps.masked_fill_(replace, 0)

    @torch.no_grad()
    def _count_idle(self, sem: torch.Tensor, pix: torch.Tensor) -> None:
        hits = torch.zeros_like(self.idle_steps).view(-1)
        hits.index_add_(0, sem * self.sub_size + pix, torch.ones_like(sem))
        hits = all_reduce_sum_(hits).view_as(self.idle_steps)
        visited = hits.sum(1, keepdim=True) > 0
        self.idle_steps.copy_(torch.where(hits > 0, 0, self.idle_steps + visited.long()))
