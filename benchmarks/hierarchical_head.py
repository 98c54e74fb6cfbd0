"""Flat vs factorised (semantic -> pixel) output head and input embedding, side by side.

``python -m benchmarks.hierarchical_head [--quick]`` prints two tables and writes
``benchmarks/results/hierarchical_head.json``.

**Cost at GPT-B width** (K = 16384, m = 12: 196,608 ids, dim 768). What is measured: the token
embedding, ONE LlamaGen-style block (RMSNorm, attention, SwiGLU of width 2048), the final norm
and the head, a 1,001-row class table, trained with AdamW in fp32 on a batch of 2 sequences of
256 positions (class token + 255 codes; the GPT-B body's other 11 blocks are identical for both
variants and left out to fit this CPU). Flat = ``nn.Embedding(V, 768)`` + ``nn.Linear(768, V)``
+ ``F.cross_entropy(logits.float())`` as LlamaGen; factorised =
:class:`~semhitok_plugin.hierarchical_head.FactorisedEmbedding` +
:class:`~semhitok_plugin.hierarchical_head.FactorisedHead` (rank 32). Each variant runs in its
own fresh process: peak training memory is the growth of the resident set from just before the
model is built to the end of the steps (weights, grads, AdamW state, activations, logits); step
time is the median of the timed steps (forward, backward, optimizer step) after one warm-up step.
``sample_ms`` is one sampling step of the head alone for 8 images with CFG (16 hidden rows,
top-k 2000 as ``sample_c2i.py``): flat = guided logits over V + top-k + softmax + draw;
factorised = :meth:`FactorisedHead.sample`.

**Loss at tiny scale, same codes.** Real SemHiTok codes: the ``tiny`` preset (random weights,
K = 64, m = 4) encodes random crops (side 64 px to half the photo, resized to 64 px) of the six
bundled sample photos, 500 per photo for training (3,000 sequences of 64 codes) and 62 other
crops per photo held out; the class label is the photo. Two identical small causal transformers
(dim 128, 2 layers, same initial body weights, same batches), one with each head/embedding
pair, both heads zero-initialised (LlamaGen's convention), train 400 AdamW steps of 32
sequences (about 4 epochs: longer runs memorise the crops and stop measuring the model); the
table reports the training loss (mean of the last 10 % of steps) and the held-out loss, in nats
per token. The factorised model passes when its final training loss is within 2 % of the flat
one.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from semhitok_plugin.hierarchical_head import DEFAULT_RANK, FactorisedEmbedding, FactorisedHead

NAME = "hierarchical_head"
RESULT = Path("benchmarks/results/hierarchical_head.json")
GPT_B = dict(dim=768, heads=12, ffn=2048, classes=1001)
PAPER_K, PAPER_M = 16384, 12
COST_BATCH, COST_TOKENS = 2, 256
TOLERANCE = 0.02  # factorised final loss at most 2 % above the flat one


class Block(nn.Module):
    """A LlamaGen-shaped pre-norm block (RMSNorm, fused qkv, SwiGLU); no rotary embedding."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.w1, self.w3 = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.w2 = nn.Linear(ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, -1).transpose(1, 3).unbind(2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        y = self.norm2(x)
        return x + self.w2(F.silu(self.w1(y)) * self.w3(y))


class ARModel(nn.Module):
    """Class token + code embeddings -> blocks -> norm -> flat or factorised head; ``loss`` is
    the mean NLL in nats per token either way."""

    def __init__(self, head: str, k: int, m: int, dim: int, layers: int, heads: int, ffn: int,
                 classes: int, block_size: int, rank: int = DEFAULT_RANK) -> None:  # fmt: skip
        super().__init__()
        self.cls = nn.Embedding(classes, dim)
        self.pos = nn.Parameter(torch.randn(1, block_size, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        nn.init.normal_(self.cls.weight, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        self.factorised = head == "factorised"
        if self.factorised:
            self.embed = FactorisedEmbedding(dim, k, m, rank)
            self.head = FactorisedHead(dim, k, m, rank)
        else:
            self.embed = nn.Embedding(k * m, dim)
            self.head = nn.Linear(dim, k * m, bias=False)
            nn.init.normal_(self.embed.weight, std=0.02)
            nn.init.zeros_(self.head.weight)

    def hidden(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls(labels)[:, None], self.embed(codes[:, :-1])], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def loss(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.hidden(codes, labels)
        if self.factorised:
            return self.head.loss(h, codes)
        logits = self.head(h).float()
        return F.cross_entropy(logits.flatten(0, 1), codes.flatten())

    def head_embedding_params(self) -> int:
        return sum(p.numel() for m in (self.embed, self.head) for p in m.parameters())


# -- cost at GPT-B width -------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def cost_worker(head: str, steps: int) -> dict:
    """One variant, in this (fresh) process: parameters, peak memory, step and sample times."""
    torch.manual_seed(0)
    before = _rss_bytes()
    model = ARModel(head, PAPER_K, PAPER_M, layers=1, block_size=COST_TOKENS, **GPT_B)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    codes = torch.randint(0, PAPER_K * PAPER_M, (COST_BATCH, COST_TOKENS))
    labels = torch.randint(0, 1000, (COST_BATCH,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = model.loss(codes, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    h = torch.randn(16, GPT_B["dim"])
    sample_s = []
    with torch.no_grad():
        for _ in range(6):
            start = time.perf_counter()
            if model.factorised:
                model.head.sample(h[:8], h[8:], cfg_scale=4.0, top_k=2000)
            else:
                c, u = model.head(h).float().chunk(2)
                logits = u + (c - u) * 4.0
                kth = logits.topk(2000, dim=-1).values[:, -1:]
                probs = logits.masked_fill(logits < kth, float("-inf")).softmax(-1)
                torch.multinomial(probs, 1)
            sample_s.append(time.perf_counter() - start)
    positions = COST_BATCH * COST_TOKENS
    logit_width = PAPER_K + PAPER_M if model.factorised else PAPER_K * PAPER_M
    return {
        "head_embedding_params_m": model.head_embedding_params() / 1e6,
        "total_params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_train_mib": peak / 2**20,
        "step_s": statistics.median(times[1:]),
        "fp32_logits_mib": positions * logit_width * 4 / 2**20,
        "sample_ms": 1e3 * statistics.median(sample_s[1:]),
        "final_loss": loss.item(),
    }


def measure_cost(steps: int) -> dict[str, dict]:
    """Each variant in a fresh interpreter, one after the other (peak memory is per process)."""
    results = {}
    for head in ("flat", "factorised"):
        worker = ["-m", "benchmarks.hierarchical_head", "--cost-worker", head]
        out = subprocess.run(
            [sys.executable, *worker, "--steps", str(steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[head] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


# -- loss at tiny scale --------------------------------------------------------------------------
def tiny_codes(crops_per_photo: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(codes (N, 64), labels (N,), K, m)``: the tiny preset's flat ids of random crops."""
    from semhitok_plugin import load_model
    from semhitok_plugin.images import to_tensor
    from semhitok_plugin.samples import SAMPLE_PHOTOS, sample_photo

    tokenizer = load_model("tiny")
    size = tokenizer.config.image_size
    g = torch.Generator().manual_seed(seed)
    crops, labels = [], []
    for label, name in enumerate(SAMPLE_PHOTOS):
        photo = to_tensor([sample_photo(name)])
        height, width = photo.shape[-2:]
        for _ in range(crops_per_photo):
            side = int(torch.randint(size, min(height, width) // 2 + 1, (1,), generator=g))
            y = int(torch.randint(0, height - side + 1, (1,), generator=g))
            x = int(torch.randint(0, width - side + 1, (1,), generator=g))
            crop = photo[..., y : y + side, x : x + side]
            crops.append(F.interpolate(crop, size=size, mode="bilinear", antialias=True))
            labels.append(label)
    with torch.no_grad():
        ids = torch.cat([tokenizer.encode(b).flat_ids for b in torch.cat(crops).split(64)])
    return (
        ids.flatten(1),
        torch.tensor(labels),
        tokenizer.codebook_size,
        tokenizer.sub_codebook_size,
    )


def train_curves(steps: int, crops: int, batch: int = 32, lr: float = 2e-3) -> dict:
    """Both variants on the same codes, initial body weights and batches."""
    train, train_labels, k, m = tiny_codes(crops, seed=0)
    held, held_labels, _, _ = tiny_codes(max(1, crops // 8), seed=1)
    order = torch.randint(0, len(train), (steps, batch), generator=torch.Generator().manual_seed(2))
    shape = dict(dim=128, layers=2, heads=4, ffn=384, classes=7, block_size=train.shape[1])
    out = {"codebook_size": k, "sub_codebook_size": m, "train_sequences": len(train)}
    for head in ("flat", "factorised"):
        torch.manual_seed(0)  # the same body for both: the head is built after it
        model = ARModel(head, k, m, **shape)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        curve = []
        for idx in order:
            loss = model.loss(train[idx], train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        with torch.no_grad():
            held_out = model.loss(held, held_labels).item()
        tail = curve[-max(1, steps // 10) :]
        out[head] = {
            "final_train_loss": statistics.fmean(tail),
            "held_out_loss": held_out,
            "head_embedding_params": model.head_embedding_params(),
            "curve": curve[:: max(1, steps // 50)],
        }
    out["ratio"] = out["factorised"]["final_train_loss"] / out["flat"]["final_train_loss"]
    out["passes"] = out["ratio"] <= 1 + TOLERANCE
    out["uniform_loss"] = math.log(k * m)
    return out


# -- report --------------------------------------------------------------------------------------
def print_tables(cost: dict, curves: dict) -> None:
    flat, fact = cost["flat"], cost["factorised"]
    print("GPT-B width, K=16384 m=12 (embedding + 1 block + head), batch 2 x 256, fp32, CPU")
    print(f"{'metric':<26}{'flat':>12}{'factorised':>12}{'ratio':>8}")
    for key in (
        "head_embedding_params_m",
        "total_params_m",
        "peak_train_mib",
        "step_s",
        "fp32_logits_mib",
        "sample_ms",
    ):
        print(f"{key:<26}{flat[key]:>12.3f}{fact[key]:>12.3f}{fact[key] / flat[key]:>8.3f}")
    k, m = curves["codebook_size"], curves["sub_codebook_size"]
    print(f"\ntiny preset codes (K={k}, m={m}), nats/token; uniform = {curves['uniform_loss']:.3f}")
    print(f"{'variant':<12}{'final train':>12}{'held-out':>10}{'params':>9}")
    for head in ("flat", "factorised"):
        r = curves[head]
        print(
            f"{head:<12}{r['final_train_loss']:>12.4f}{r['held_out_loss']:>10.4f}"
            f"{r['head_embedding_params']:>9}"
        )
    verdict = "within" if curves["passes"] else "NOT within"
    print(f"factorised / flat final train loss = {curves['ratio']:.4f} ({verdict} 2 %)")


def run_all(quick: bool = False) -> dict:
    cost = measure_cost(steps=1 if quick else 3)
    curves = train_curves(steps=40, crops=40) if quick else train_curves(steps=400, crops=500)
    return {"cost": cost, "curves": curves, "quick": quick, "torch": torch.__version__}


def run(ctx) -> list:
    """Entry point for ``benchmarks.runner``: one row per variant and measurement."""
    from benchmarks.suite import Row

    result = run_all(ctx.quick)
    rows = [
        Row(NAME, f"cost_{head}", {"K": PAPER_K, "m": PAPER_M, "dim": 768}, result["cost"][head])
        for head in ("flat", "factorised")
    ]
    curves = result["curves"]
    for head in ("flat", "factorised"):
        metrics = {k: v for k, v in curves[head].items() if k != "curve"}
        params = {"K": curves["codebook_size"], "m": curves["sub_codebook_size"]}
        rows.append(Row(NAME, f"tiny_loss_{head}", params, metrics))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps")
    parser.add_argument("--out", type=Path, help=f"default {RESULT} (a _quick twin with --quick)")
    parser.add_argument("--cost-worker", choices=("flat", "factorised"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cost_worker:
        print(json.dumps(cost_worker(args.cost_worker, args.steps)))
        return 0
    result = run_all(args.quick)
    print_tables(result["cost"], result["curves"])
    out = args.out or (RESULT.with_stem(RESULT.stem + "_quick") if args.quick else RESULT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["curves"]["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
