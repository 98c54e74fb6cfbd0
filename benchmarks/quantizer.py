"""SemHiTok's two quantizers against the searches a user would otherwise run.

Two comparisons, each timed side by side (``harness.pair_rows``: alternating rounds, median,
then one more call of each for its peak memory), on N = images x ``--tokens`` random tokens, for
each batch of images in ``--batches`` (default 64; 2 in quick mode):

1. **SGHC pixel quantisation** (``SubCodebookQuantizer``, K=16384 sub-codebooks of m=12 codes,
   d=8) against a **flat masked nearest-neighbour search** over the same K*m = 196,608 codes: the
   full, unchunked N x K*m cosine-score matrix (~12.9 GB fp32 at N=16384), with every code outside
   the token's own sub-codebook masked to -inf, then argmax. Both must pick the same pixel ids
   (checked before timing; a mismatch is tolerated only where the two picks score the same to
   within 1e-6, i.e. float rounding), else the case fails. SGHC gathers only the m candidates of
   each token, so it should be >= 100x faster and need >= 100x less peak memory.
2. **Semantic codebook** (``SemanticCodebook``, K=16384, d=48, cosine EMA, no k-means init, no
   dead-code restarts) against ``vector_quantize_pytorch.VectorQuantize`` configured the same way:
   ``VectorQuantize(dim=48, codebook_size=16384, use_cosine_sim=True, decay=0.99,
   kmeans_init=False, threshold_ema_dead_code=0, commitment_weight=0.25)`` (all other arguments at
   their defaults: one head, EMA update, rotation trick, no orthogonal/diversity losses), on the
   same (images, tokens, 48) input; inference (``eval()`` + ``no_grad``) and a training step
   (``train()``, forward with the EMA codebook update; ours via ``update=True``). Ours should be no
   slower than the library.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.suite import Context, Row
from benchmarks.suite.harness import Op, pair_rows

NAME = "quantizer"
SEM_K, PIX_M, PIX_D = 16384, 12, 8  # SGHC: sub-codebooks, codes per sub-codebook, pixel dim
SEM_D = 48  # semantic codebook dim (same K)
TIE = 1e-6  # the flat search may pick another code only when both score the same to this


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--tokens", type=int, default=256, help="tokens per image (default 256)")


def sghc_pair(n: int, device: torch.device) -> tuple[Op, Op]:
    """SGHC and the flat masked search over all K*m codes, checked to pick the same ids."""
    from semhitok_plugin.sghc import SubCodebookQuantizer

    torch.manual_seed(0)
    q = SubCodebookQuantizer(codebook_size=SEM_K, sub_size=PIX_M, dim=PIX_D).to(device).eval()
    z = torch.randn(n, PIX_D, device=device)
    sem = torch.randint(0, SEM_K, (n,), device=device)
    codes = F.normalize(q.codebooks.detach().reshape(-1, PIX_D), dim=-1)  # (K*m, d)

    @torch.no_grad()
    def sghc() -> torch.Tensor:
        return q(z, sem).ids

    @torch.no_grad()
    def flat_masked() -> torch.Tensor:
        scores = F.normalize(z, dim=-1) @ codes.T  # (N, K*m): the full matrix, on purpose
        allowed = torch.arange(SEM_K, device=device) == sem[:, None]  # the token's sub-codebook
        scores.view(n, SEM_K, PIX_M).masked_fill_(~allowed[..., None], float("-inf"))
        return scores.argmax(-1) - sem * PIX_M  # flat id -> pixel id within the sub-codebook

    ours, flat = sghc(), flat_masked()
    bad = (flat != ours).nonzero().squeeze(1)
    cand = codes.view(SEM_K, PIX_M, PIX_D)[sem[bad]] @ F.normalize(z[bad], dim=-1)[..., None]
    picked = cand.squeeze(-1).gather(1, torch.stack([flat[bad], ours[bad]], 1))
    gap = (picked[:, 0] - picked[:, 1]).abs().max().item() if len(bad) else 0.0
    if gap > TIE:
        raise AssertionError(f"the flat search disagrees with SGHC on {len(bad)} of {n} tokens")
    return sghc, flat_masked


def semantic_pair(images: int, tokens: int, train: bool, device: torch.device) -> tuple[Op, Op]:
    """Our semantic codebook and ``VectorQuantize`` configured alike, on the same input."""
    from vector_quantize_pytorch import VectorQuantize

    from semhitok_plugin.semantic_codebook import SemanticCodebook

    torch.manual_seed(0)
    z = torch.randn(images, tokens, SEM_D, device=device)
    cb = SemanticCodebook(SEM_K, SEM_D, kmeans_init=False, dead_code_patience=0)
    vq = VectorQuantize(
        dim=SEM_D,
        codebook_size=SEM_K,
        use_cosine_sim=True,
        decay=0.99,
        kmeans_init=False,
        threshold_ema_dead_code=0,
        commitment_weight=0.25,
    )
    cb, vq = cb.to(device).train(train), vq.to(device).train(train)
    if train:
        return (lambda: cb(z, update=True).ids), (lambda: vq(z)[1])
    return torch.no_grad()(lambda: cb(z).ids), torch.no_grad()(lambda: vq(z)[1])


def run(ctx: Context) -> list[Row]:
    tokens = ctx.options["tokens"]
    rows = []
    for images in ctx.batches or ((2,) if ctx.quick else (64,)):
        n = images * tokens
        where = {"images": images, "tokens": n, "device": ctx.device.type}
        pixel = {"m": PIX_M, "d": PIX_D}
        pairs = [("pixel", "sghc", "flat_masked", sghc_pair(n, ctx.device), pixel)]
        for mode, train in (("eval", False), ("train", True)):
            ops = semantic_pair(images, tokens, train, ctx.device)
            semantic = {"d": SEM_D, "mode": mode}
            pairs.append((f"semantic-{mode}", f"semantic_{mode}", f"vq_lib_{mode}", ops, semantic))
        for group, ours, peer, (ours_op, peer_op), params in pairs:
            rows += pair_rows(
                ctx,
                NAME,
                f"{group} b{images}",
                (ours, ours_op),
                (peer, peer_op),
                ctx.repeats,
                where | params | {"K": SEM_K},
                per_call=("tokens", n),
            )
    return rows


__all__ = ["NAME", "PIX_D", "PIX_M", "SEM_D", "SEM_K", "add_arguments", "run"]
