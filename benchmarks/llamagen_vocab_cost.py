"""What SemHiTok's 196,608-id vocabulary costs in LlamaGen's GPT sizes (arithmetic, no timing).

Shapes from FoundationVision/LlamaGen ``autoregressive/models/gpt.py`` (5a50452d): the GPT_*
configs, an untied ``nn.Embedding(V, dim)`` table and ``nn.Linear(dim, V)`` head, SwiGLU hidden
``find_multiple(int(8 * dim / 3), 256)``, attention ``4 * dim**2`` (n_kv_head = n_head), two
RMSNorms per block plus a final one, a 1,001-row class table. Training logits are fp32
(``self.output(h).float()``) for every position, even under bf16 autocast.

    python benchmarks/llamagen_vocab_cost.py     # prints the README's markdown table
"""

from __future__ import annotations

SIZES = {  # name: (layers, width)
    "GPT-B": (12, 768),
    "GPT-L": (24, 1024),
    "GPT-XL": (36, 1280),
    "GPT-XXL": (48, 1536),
    "GPT-3B": (24, 3200),
}
LLAMAGEN_VOCAB, SEMHITOK_VOCAB = 16384, 16384 * 12
BATCH, TOKENS, GPUS = 256, 256, 8  # train_c2i's global batch; 16 x 16 tokens at 256 px


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def body_params(layers: int, dim: int) -> int:
    hidden = find_multiple(int(8 * dim / 3), 256)
    return layers * (4 * dim * dim + 3 * dim * hidden + 2 * dim) + dim + 1001 * dim


def main() -> None:
    logits = BATCH * TOKENS * SEMHITOK_VOCAB * 4
    print(
        "| model | dim | body params | emb+head @16,384 | emb+head @196,608 | total @196,608 | "
        f"vocab share | fp32 logits, batch {BATCH}×{TOKENS} | per GPU (/{GPUS}) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (layers, dim) in SIZES.items():
        body = body_params(layers, dim)
        small, big = 2 * LLAMAGEN_VOCAB * dim, 2 * SEMHITOK_VOCAB * dim
        print(
            f"| {name} | {dim} | {body / 1e6:,.0f} M | {small / 1e6:,.0f} M | {big / 1e6:,.0f} M | "
            f"{(body + big) / 1e6:,.0f} M | {big / (body + big):.0%} | {logits / 2**30:,.1f} GiB | "
            f"{logits / GPUS / 2**30:,.1f} GiB |"
        )
    own = BATCH * TOKENS * LLAMAGEN_VOCAB * 4 / 2**30
    print(f"\nLlamaGen's own 16,384-id vocabulary, same batch: {own:.1f} GiB of fp32 logits")


if __name__ == "__main__":
    main()
