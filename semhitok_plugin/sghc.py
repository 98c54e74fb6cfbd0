"""Semantic-Guided Hierarchical Codebook: pixel sub-codebooks indexed by the semantic id (§3.2).

Written by hand because no quantization library has the one operation SGHC needs: a token whose
semantic id is ``k`` is matched only against the ``m`` entries of sub-codebook ``k`` (Eq. 5).
Gathering those ``m`` candidates per token costs O(tokens x m x d) memory and time; a flat
nearest-neighbour search over all K x m codes with a mask would cost O(tokens x K x m)
(``benchmarks/quantizer.py`` measures both).

The sub-codebooks are a "normalised VQ" (paper §4.1, as in LlamaGen): inputs and codes are
l2-normalised, codes learn by gradient through the codebook loss ``|q - sg(z)|^2``, and the encoder
by the commitment loss ``beta |z - sg(q)|^2`` plus the straight-through estimator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
    ) -> None:
        super().__init__()
        self.codebook_size, self.sub_size, self.dim = codebook_size, sub_size, dim
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.codebooks = nn.Parameter(torch.randn(codebook_size, sub_size, dim))
        self.usage = CodeUsage(codebook_size * sub_size)  # per flat id

    def normalized(self) -> torch.Tensor:
        """All sub-codebooks, l2-normalised: (K, m, d). Encode and decode both index this one
        tensor, so ``decode(encode(x).flat_ids)`` reproduces the encoder's features bit for bit."""
        return F.normalize(self.codebooks, dim=-1)

    def lookup(self, sem_ids: torch.Tensor, pix_ids: torch.Tensor) -> torch.Tensor:
        check_ids(sem_ids, self.codebook_size, "sem_ids")
        check_ids(pix_ids, self.sub_size, "pix_ids")
        return self.normalized()[sem_ids, pix_ids]

    @full_precision
    def forward(self, z: torch.Tensor, sem_ids: torch.Tensor) -> QuantizerOutput:
        """Quantize pixel features ``z`` (..., d) within the sub-codebooks of ``sem_ids`` (...)."""
        z = F.normalize(z.to(self.codebooks.dtype), dim=-1)
        flat, sem = z.reshape(-1, self.dim), sem_ids.reshape(-1)
        candidates = self.normalized()[sem]  # (N, m, d): the only per-token intermediate
        scores = torch.bmm(candidates.detach(), flat.detach().unsqueeze(-1)).squeeze(-1)
        pix = scores.argmax(-1)
        q = candidates.gather(1, pix.view(-1, 1, 1).expand(-1, 1, self.dim)).squeeze(1)
        self.usage.update(sem * self.sub_size + pix)  # flat ids; both in range by construction
        losses = {
            "codebook": self.codebook_weight * F.mse_loss(q, flat.detach()),
            "commitment": self.commitment_weight * F.mse_loss(flat, q.detach()),
        }
        return QuantizerOutput(straight_through(z, q.view_as(z)), pix.view(sem_ids.shape), losses)
