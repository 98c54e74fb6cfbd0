"""A factorised (semantic -> pixel) output head and input embedding for SemHiTok's flat ids.

A flat id is ``flat = sem * m + pix`` (:mod:`semhitok_plugin.ids`). A flat ``Linear(dim, K·m)``
head and ``Embedding(K·m, dim)`` table cost ``2·K·m·dim`` parameters (302 M for LlamaGen's GPT-B
at K = 16384, m = 12) and fp32 logits of K·m per position. The factorised head scores the same
ids exactly, with a K-way and an m-way softmax::

    p(flat | h) = p(sem | h) · p(pix | sem, h)
    p(sem | h)      = softmax(W_sem h)                         K-way
    p(pix | sem, h) = softmax(U[sem] (V h) + b[sem])           m-way, U: (K, m, r), V: (r, dim)

Why this pixel level: a flat head's logits for the m ids of one semantic code ``k`` are
``W_k h`` with ``W_k`` the m × dim block of its rows, so within a code it already is an m-way
softmax of a per-code linear map of ``h``. The factorised head keeps that map per code but low
rank, ``W_k ≈ U_k V`` (all codes share the rank-r view ``V h`` of the hidden state), plus a
per-code bias ``b_k`` (how often each entry of sub-codebook k is used). Entry j of two
sub-codebooks means unrelated things (each sub-codebook is learned for its own semantic code),
so conditioning only on a shared pixel table would make every code read the same direction of
``h`` for its entry j; ``U[sem]`` lets each code read its own. It costs ``K·m·(r + 1) + r·dim``
parameters, ``r·(dim + m)`` multiply-adds per token, and at r = dim can express any per-code
block ``W_k``. The sampled (or, in training, the true) semantic id selects ``U[sem]``, ``b[sem]``.

The input embedding mirrors it: ``E(flat) = E_sem[sem] + P e[flat]`` with a K × dim semantic
table and a rank-r code ``e`` per flat id (P: dim × r). A pixel table shared across semantic
codes (``E_pix[pix]``, m × dim) is cheaper still, but gives entry j of every sub-codebook the same
vector although they are unrelated; a full per-id table is the flat table again. The rank-r code
keeps every flat id distinct for ``K·m·r`` parameters.

Log-likelihoods are exact (:meth:`FactorisedHead.log_prob`), so losses and perplexities in nats
per token compare directly with a flat head's cross-entropy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .ids import check_ids

DEFAULT_RANK = 32  # GPT-B at K = 16384, m = 12: 38 M head + embedding parameters instead of 302 M


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``logits`` with every candidate outside the top-k and outside the top-p nucleus set to
    -inf (last dimension). ``top_k <= 0`` or ``>= size`` keeps all; the nucleus is the smallest
    set of best candidates whose probability reaches ``top_p`` (the best one is always kept)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = torch.zeros_like(mass_before, dtype=torch.bool)
        drop.scatter_(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32 (as LlamaGen computes its loss); float64 stays."""
    return x.float() if x.element_size() < 4 else x


def _check(flat: torch.Tensor, vocab_size: int) -> None:
    """Range-check ids in eager mode; under ``torch.compile`` the check (a read back to the host)
    would break the graph, so compiled callers rely on their eager runs having checked."""
    if not torch.compiler.is_compiling():
        check_ids(flat, vocab_size, "flat ids")


def _draw(logits: torch.Tensor, greedy: bool, generator: torch.Generator | None):
    """One index per row and its probability under ``softmax(logits)``."""
    probs = logits.softmax(dim=-1)
    if greedy:
        pick = probs.argmax(dim=-1, keepdim=True)
    else:
        pick = torch.multinomial(probs, 1, generator=generator)
    return pick.squeeze(-1), probs.gather(-1, pick).squeeze(-1)


def check_sizes(dim: int, codebook_size: int, sub_codebook_size: int, rank: int) -> None:
    """The head and the embedding share their shape rules: every size at least 1."""
    if min(dim, codebook_size, sub_codebook_size, rank) < 1:
        raise ValueError(
            f"dim, codebook_size, sub_codebook_size and rank must be positive, got "
            f"{dim}, {codebook_size}, {sub_codebook_size}, {rank}"
        )


class FactorisedSample(NamedTuple):
    """Sampled flat ids ``(B,)`` and the probability each had under the filtered, guided,
    tempered per-level distributions it was drawn from (``p(sem) · p(pix | sem)``)."""

    ids: torch.Tensor
    prob: torch.Tensor


class FactorisedHead(nn.Module):
    """``p(flat | h) = p(sem | h) · p(pix | sem, h)`` over ``K·m`` flat ids (see the module doc).

    Initialised to the uniform distribution (the semantic map and the per-code pixel readouts
    start at zero, as LlamaGen zeroes its output layer): the first loss is ``log(K·m)``.
    """

    def __init__(
        self, dim: int, codebook_size: int, sub_codebook_size: int, rank: int = DEFAULT_RANK
    ) -> None:
        super().__init__()
        check_sizes(dim, codebook_size, sub_codebook_size, rank)
        self.codebook_size, self.sub_codebook_size = codebook_size, sub_codebook_size
        self.rank = rank
        self.sem = nn.Linear(dim, codebook_size, bias=False)
        self.pix_proj = nn.Linear(dim, rank, bias=False)
        self.pix_readout = nn.Parameter(torch.zeros(codebook_size, sub_codebook_size, rank))
        self.pix_bias = nn.Parameter(torch.zeros(codebook_size, sub_codebook_size))
        nn.init.zeros_(self.sem.weight)
        nn.init.normal_(self.pix_proj.weight, std=dim**-0.5)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size * self.sub_codebook_size

    def sem_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., K)`` semantic logits."""
        return self.sem(h)

    def pix_logits(self, h: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` hidden states and ``(...)`` semantic ids -> ``(..., m)`` logits of
        ``sem``'s sub-codebook entries. ``sem`` is not range-checked here (callers pass ids they
        checked or sampled)."""
        z = self.pix_proj(h)
        readout = self.pix_readout[sem].to(z.dtype)  # (..., m, r)
        return (readout @ z.unsqueeze(-1)).squeeze(-1) + self.pix_bias[sem].to(z.dtype)

    def log_prob(self, h: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(flat | h) = log p(sem | h) + log p(pix | sem, h)``, shape ``flat.shape``
        (``h``: ``flat.shape + (dim,)``), in float32 (float64 for float64 inputs). Raises
        :class:`~semhitok_plugin.ids.TokenIdError` naming an id outside ``[0, K·m)``."""
        _check(flat, self.vocab_size)
        flat = flat.long()
        sem = torch.div(flat, self.sub_codebook_size, rounding_mode="floor")
        pix = flat.remainder(self.sub_codebook_size)
        h = h.reshape(-1, h.shape[-1])
        sem, pix = sem.reshape(-1), pix.reshape(-1)
        sem_lp = -F.cross_entropy(_wide(self.sem_logits(h)), sem, reduction="none")
        pix_lp = -F.cross_entropy(_wide(self.pix_logits(h, sem)), pix, reduction="none")
        return (sem_lp + pix_lp).view(flat.shape)

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood in nats per token: a flat head's cross-entropy."""
        return -self.log_prob(h, targets).mean()

    def full_log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., K·m)`` log-probabilities of every flat id, in flat-id order. Materialises
        what the factorisation avoids: for tests, small vocabularies and evaluation."""
        sem_lp = _wide(self.sem_logits(h)).log_softmax(dim=-1)  # (..., K)
        z = _wide(self.pix_proj(h))
        readout, bias = self.pix_readout.to(z.dtype), self.pix_bias.to(z.dtype)
        pix = torch.einsum("kmr,...r->...km", readout, z) + bias
        return (sem_lp.unsqueeze(-1) + pix.log_softmax(dim=-1)).flatten(-2)

    @torch.no_grad()
    def sample(
        self,
        h: torch.Tensor,
        uncond: torch.Tensor | None = None,
        *,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> FactorisedSample:
        """One flat id per row of ``h`` ``(B, dim)``, drawn level by level.

        1. Semantic level: ``s = W_sem h``; with ``uncond`` (the unconditional stream's hidden
           states, ``(B, dim)``) ``s = s_u + (s_c - s_u) · cfg_scale``; then ``s / temperature``,
           top-k (``min(top_k, K)``) and top-p filtering, and one draw ``sem``.
        2. Pixel level, conditioned on that ``sem`` for the conditional and the unconditional
           row alike: ``p = pix_logits(h, sem)``, guided the same way with
           ``pix_logits(uncond, sem)``, then temperature, top-k (``min(top_k, m)``: no filtering
           when ``top_k >= m``), top-p, and one draw ``pix``.

        ``flat = sem · m + pix``. ``greedy`` takes the arg-max at each level instead of drawing.
        At temperature 1 without guidance and filtering this samples ``p(flat | h)`` exactly.
        Otherwise it differs from applying the same rule to flat logits by one factor per
        semantic code: flat guidance/temperature weigh code k also by
        ``Z_k = Σ_j exp(guided, tempered pixel log-probs)``, which level-by-level sampling leaves
        out (Z_k = 1 at temperature 1 without guidance).
        """
        temperature = max(temperature, 1e-5)
        sem_logits = _wide(self.sem_logits(h))
        if uncond is not None:
            u = _wide(self.sem_logits(uncond))
            sem_logits = u + (sem_logits - u) * cfg_scale
        sem_logits = filter_logits(sem_logits / temperature, top_k, top_p)
        sem, p_sem = _draw(sem_logits, greedy, generator)
        pix_logits = _wide(self.pix_logits(h, sem))
        if uncond is not None:
            u = _wide(self.pix_logits(uncond, sem))
            pix_logits = u + (pix_logits - u) * cfg_scale
        pix_logits = filter_logits(pix_logits / temperature, top_k, top_p)
        pix, p_pix = _draw(pix_logits, greedy, generator)
        return FactorisedSample(sem * self.sub_codebook_size + pix, p_sem * p_pix)


class FactorisedEmbedding(nn.Module):
    """``E(flat) = E_sem[sem] + P e[flat]``: a K × dim semantic table and a rank-r code per flat
    id projected to ``dim`` (see the module doc for why not a shared pixel table).

    Both terms start with standard deviation ``init_std`` per element (LlamaGen initialises its
    token table with 0.02)."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        sub_codebook_size: int,
        rank: int = DEFAULT_RANK,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        check_sizes(dim, codebook_size, sub_codebook_size, rank)
        self.codebook_size, self.sub_codebook_size = codebook_size, sub_codebook_size
        self.rank = rank
        self.sem = nn.Embedding(codebook_size, dim)
        self.pix = nn.Embedding(codebook_size * sub_codebook_size, rank)
        self.pix_proj = nn.Linear(rank, dim, bias=False)
        nn.init.normal_(self.sem.weight, std=init_std)
        nn.init.normal_(self.pix.weight, std=init_std)
        nn.init.normal_(self.pix_proj.weight, std=rank**-0.5)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size * self.sub_codebook_size

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        """``(...)`` flat ids -> ``(..., dim)``; ids outside ``[0, K·m)`` raise
        :class:`~semhitok_plugin.ids.TokenIdError` naming the id."""
        _check(flat, self.vocab_size)
        flat = flat.long()
        sem = torch.div(flat, self.sub_codebook_size, rounding_mode="floor")
        return self.sem(sem) + self.pix_proj(self.pix(flat))


__all__ = [
    "DEFAULT_RANK",
    "FactorisedEmbedding",
    "FactorisedHead",
    "FactorisedSample",
    "filter_logits",
]
