"""Text-to-image sampling and text chat with the unified MLLM.

``generate_image`` writes the prompt as a user turn, opens the assistant turn with
``<|image_start|>`` and samples exactly h·w image ids with a KV cache. Classifier-free guidance
runs the conditional and unconditional prompts as one batch of 2N streams that receive the same
sampled token; the logits are ``uncond + s·(cond − uncond)``. While an image is sampled only the
image rows of the shared head can be chosen, so by default only that slice of the head is
computed (``image_slice_head``; its speed-up is measured in ``benchmarks/mllm_generation.py``).
With the factorised image head (``image_head="factorised"``) each id is drawn level by level
(:meth:`~semhitok_plugin.hierarchical_head.FactorisedHead.sample`): the semantic id from guided
semantic logits, then the pixel id from guided pixel logits of that semantic id in both streams;
temperature, top-k and top-p apply at each level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList, TopPLogitsWarper
from transformers.cache_utils import DynamicCache

from .model import SemHiTokQwen2ForCausalLM
from .processor import SemHiTokQwenProcessor


@dataclass
class GeneratedImages:
    ids: torch.Tensor  # (N, h, w) flat SemHiTok ids
    images: list[Image.Image]  # decoded (empty when decode=False)


def sample_next(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One id per row of ``logits`` (N, V); ``temperature=0`` is greedy.

    With ``top_k`` the draw is made among the k best candidates only: the same distribution as
    masking the other V − k logits, without a softmax and a multinomial over all 196,608 image
    ids (measured to cost as much as the head itself on a small LM). Top-p is transformers'
    ``TopPLogitsWarper``, applied after top-k and temperature as ``generate`` does."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    candidates = None
    if top_k and top_k < logits.shape[-1]:
        logits, candidates = logits.topk(top_k, dim=-1)
    logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        logits = TopPLogitsWarper(top_p)(None, logits)
    pick = torch.multinomial(logits.softmax(-1), 1, generator=generator)
    return (pick if candidates is None else candidates.gather(-1, pick)).squeeze(-1)


def guided(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance over a batch stacked as [conditional; unconditional]."""
    cond, uncond = logits.float().chunk(2)
    return uncond + cfg_scale * (cond - uncond)


@torch.no_grad()
def generate_image(
    model: SemHiTokQwen2ForCausalLM,
    processor: SemHiTokQwenProcessor,
    prompt: str | list[str],
    *,
    cfg_scale: float = 4.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    image_slice_head: bool = True,
    decode: bool = True,
) -> GeneratedImages:
    """Sample one image per prompt. ``cfg_scale=1`` runs the conditional stream alone;
    ``temperature=0`` is greedy. ``seed`` fixes the draw (same seed, same ids)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    guidance = cfg_scale != 1.0
    if guidance:
        prompts += [model.config.unconditional_prompt] * len(prompts)
    device = model.device
    rows = [
        processor.tokenize_chat([{"role": "user", "content": p}], add_generation_prompt=True)[0]
        + [processor.image_start_id]
        for p in prompts
    ]
    batch = {k: v.to(device) for k, v in processor.pad(rows, side="left").items()}
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    vocab, num_tokens = processor.image_vocab, processor.num_image_tokens
    head_rows = slice(vocab.offset, vocab.offset + vocab.size)
    cache, inputs, drawn = DynamicCache(), batch["input_ids"], []
    for step in range(num_tokens):
        hidden = model.model(
            inputs_embeds=model.embed(inputs),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state[:, -1]
        if model.factorised:
            cond, uncond = hidden.chunk(2) if guidance else (hidden, None)
            flat = model.image_head.sample(
                cond,
                uncond,
                cfg_scale=cfg_scale,
                temperature=temperature,
                top_k=top_k or 0,
                top_p=1.0 if top_p is None else top_p,
                greedy=temperature == 0,
                generator=generator,
            ).ids
        else:
            if image_slice_head:
                logits = model.image_logits(hidden)
            else:
                logits = model.lm_head(hidden)[:, head_rows]
            logits = guided(logits, cfg_scale) if guidance else logits
            flat = sample_next(logits, generator, temperature, top_k, top_p)
        drawn.append(flat)
        if step + 1 < num_tokens:
            # drawn from the image slice, so in range: no checked to_tokens (a host sync a step)
            inputs = (flat.repeat(2 if guidance else 1) + vocab.offset)[:, None]
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            positions = positions[:, -1:] + 1
    ids = torch.stack(drawn, dim=1)
    h, w = processor.image_tokenizer.grid_size
    images = processor.decode_images(ids) if decode else []
    return GeneratedImages(ids.view(-1, h, w).cpu(), images)


class TextOnly(LogitsProcessor):
    """Allow only the text tokenizer's own ids in an answer: no image ids, no image markers, and
    none of the padded table rows beyond the tokenizer (they decode to nothing). Understanding
    never draws an image; the shared head could otherwise open one."""

    def __init__(self, processor: SemHiTokQwenProcessor) -> None:
        self.text_size = len(processor.tokenizer)
        self.markers = [processor.image_start_id, processor.image_end_id]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.text_size :] = -float("inf")
        scores[:, self.markers] = -float("inf")
        return scores


@torch.no_grad()
def chat(
    model: SemHiTokQwen2ForCausalLM,
    processor: SemHiTokQwenProcessor,
    conversations: list[list[dict]],
    images: list[list] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Answers (text) to a batch of conversations through ``model.generate``; contents may hold
    ``<image>`` placeholders filled from ``images``. Greedy unless ``do_sample=True`` is given."""
    batch = {k: v.to(model.device) for k, v in processor(conversations, images).items()}
    generate_kwargs.setdefault("max_new_tokens", 64)
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(
        **batch,
        logits_processor=LogitsProcessorList([TextOnly(processor)]),
        pad_token_id=processor.pad_token_id,
        **generate_kwargs,
    )
    answers = out[:, batch["input_ids"].shape[1] :]
    return [processor.tokenizer.decode(a, skip_special_tokens=True) for a in answers]


__all__ = ["GeneratedImages", "TextOnly", "chat", "generate_image", "sample_next"]
