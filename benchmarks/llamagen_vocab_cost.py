"""What SemHiTok's 196,608 ids cost in LlamaGen's GPT sizes (arithmetic).

Shapes from FoundationVision/LlamaGen ``autoregressive/models/gpt.py`` (5a50452d): the GPT_*
configs, an untied ``nn.Embedding(V, dim)`` table and ``nn.Linear(dim, V)`` head, SwiGLU hidden
``find_multiple(int(8 * dim / 3), 256)``, attention ``4 * dim**2`` (n_kv_head = n_head), two
RMSNorms per block plus a final one, a 1,001-row class table. Training logits are fp32
(``self.output(h).float()``) for every position, even under bf16 autocast. Nothing is timed:
one row per GPT size (``--markdown`` prints the README's table).
"""

from __future__ import annotations

from benchmarks.suite import Context, Row

NAME = "llamagen_vocab_cost"
SIZES = {  # name: (layers, width)
    "GPT-B": (12, 768),
    "GPT-L": (24, 1024),
    "GPT-XL": (36, 1280),
    "GPT-XXL": (48, 1536),
    "GPT-3B": (24, 3200),
}
LLAMAGEN_VOCAB, SEMHITOK_VOCAB = 16384, 16384 * 12
BATCH, TOKENS, GPUS = 256, 256, 8  # train_c2i's global batch; 16 x 16 tokens at 256 px
GIB = 2**30


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def body_params(layers: int, dim: int) -> int:
    """Everything but the token table and the head: blocks, final norm, class table."""
    hidden = find_multiple(int(8 * dim / 3), 256)
    return layers * (4 * dim * dim + 3 * dim * hidden + 2 * dim) + dim + 1001 * dim


def run(ctx: Context) -> list[Row]:
    rows = []
    for name, (layers, dim) in SIZES.items():
        body = body_params(layers, dim)
        small, big = 2 * LLAMAGEN_VOCAB * dim, 2 * SEMHITOK_VOCAB * dim
        logits = BATCH * TOKENS * SEMHITOK_VOCAB * 4
        metrics = {
            "body_params_m": body / 1e6,
            "vocab_params_m_llamagen": small / 1e6,
            "vocab_params_m_semhitok": big / 1e6,
            "total_params_m_semhitok": (body + big) / 1e6,
            "vocab_share": big / (body + big),
            "logits_gib": logits / GIB,
            "logits_gib_per_gpu": logits / GPUS / GIB,
            "logits_gib_llamagen": BATCH * TOKENS * LLAMAGEN_VOCAB * 4 / GIB,
        }
        params = {"layers": layers, "dim": dim, "batch": BATCH, "tokens": TOKENS, "gpus": GPUS}
        rows.append(Row(NAME, name, params, {k: float(v) for k, v in metrics.items()}))
    return rows


__all__ = ["NAME", "SIZES", "body_params", "run"]
