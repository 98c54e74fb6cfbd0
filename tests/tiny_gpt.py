"""A tiny class-conditional GPT with LlamaGen's training and sampling interface (tests, smoke runs).

Not LlamaGen's model: a few pre-norm blocks with learned positions, written to the same contract
as FoundationVision/LlamaGen ``autoregressive/models/gpt.py`` ``Transformer`` so code extracted
for LlamaGen can be trained and sampled without LlamaGen installed:

* ``model(idx=..., cond_idx=..., targets=...)`` -> ``(logits, loss)``; the sequence is
  ``[class token, idx...]``, logits ``(B, 1 + len(idx), V)`` in float32, and the loss is
  ``F.cross_entropy(logits.view(-1, V), targets.view(-1))`` with no cast, as upstream (so int32
  targets fail the same way);
* the class table has ``num_classes + 1`` rows, the last being the null class, and training drops
  labels to it with ``class_dropout_prob`` (upstream ``LabelEmbedder``);
* :func:`generate` samples as upstream ``autoregressive/models/generate.py``: the batch is
  ``[cond; null]``, ``logits = uncond + (cond - uncond) * cfg_scale``, temperature, top-k, and the
  result is int32 ``(B, block_size)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        num_classes: int,
        dim: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        class_dropout_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size, self.num_classes = vocab_size, block_size, num_classes
        self.model_type, self.cls_token_num = "c2i", 1
        self.class_dropout_prob = class_dropout_prob
        self.cls_embedding = nn.Embedding(num_classes + 1, dim)  # last row: the null class
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, block_size, dim))
        self.layers = nn.ModuleList(Block(dim, n_head) for _ in range(n_layer))
        self.norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        cond_idx: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        labels = cond_idx
        if self.training and self.class_dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.class_dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        h = self.cls_embedding(labels).unsqueeze(1)
        if idx is not None and idx.shape[1] > 0:
            h = torch.cat([h, self.tok_embeddings(idx)], dim=1)
        h = h + self.pos[:, : h.shape[1]]
        for layer in self.layers:
            h = layer(h)
        logits = self.output(self.norm(h)).float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


@torch.no_grad()
def generate(
    model: TinyGPT,
    cond: torch.Tensor,
    max_new_tokens: int,
    *,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Class-conditional sampling with classifier-free guidance; int32 ``(B, max_new_tokens)``."""
    batch = cond.shape[0]
    guided = cfg_scale > 1.0
    labels = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if guided else cond
    seq = torch.empty(labels.shape[0], 0, dtype=torch.long, device=cond.device)
    for _ in range(max_new_tokens):  # no KV cache: a tiny model, short sequences
        logits = model(idx=seq, cond_idx=labels)[0][:, -1]
        if guided:
            c, u = logits.split(batch)
            logits = u + (c - u) * cfg_scale
        logits = logits / max(temperature, 1e-5)
        if top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
        seq = torch.cat([seq, nxt.repeat(2, 1) if guided else nxt], dim=1)
    return seq[:batch].to(torch.int32)


__all__ = ["TinyGPT", "generate"]
