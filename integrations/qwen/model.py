"""The unified MLLM of the paper's §3.3 (Fig. 3c): a Qwen2/Qwen2.5 causal LM that reads and writes
SemHiTok images as tokens of one vocabulary.

Vocabulary: the LLM's text ids (``text_vocab_size`` rows, the begin/end-of-image markers among
them) followed by the K·m flat image ids, so token ``text_vocab_size + flat`` is image id
``flat``. One output head scores all of them (next-token loss over text and image ids alike).

Image *inputs* do not use the embedding table: an image token enters through the Dual-MLP
adapter applied to its quantised semantic and pixel codebook vectors (the paper: "we still use
the features extracted from SGHC as input"). Those vectors are per token, so the same path
embeds an image being understood and the image ids the model itself generates. The codebooks are
frozen buffers of the model, so a checkpoint is self-contained; the tokenizer's config travels
in ``config.semhitok``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from semhitok_plugin.adapter import DualMLPAdapter
from semhitok_plugin.config import SemHiTokConfig
from semhitok_plugin.hierarchical_head import DEFAULT_RANK, FactorisedHead
from semhitok_plugin.ids import TokenIdError, check_ids
from semhitok_plugin.model import SemHiTok

IMAGE_START, IMAGE_END = "<|image_start|>", "<|image_end|>"
IMAGE_HEADS = ("flat", "factorised")


@dataclass(frozen=True)
class ImageVocabulary:
    """Where the flat image ids live among the LLM's token ids: ``[offset, offset + size)``."""

    offset: int
    size: int

    def to_tokens(self, flat_ids: torch.Tensor) -> torch.Tensor:
        check_ids(flat_ids, self.size, "flat image ids")
        return flat_ids + self.offset

    def to_flat(self, token_ids: torch.Tensor) -> torch.Tensor:
        if not bool(self.contains(token_ids).all()):
            raise TokenIdError(
                f"token ids outside the image range [{self.offset}, {self.offset + self.size})"
            )
        return token_ids - self.offset

    def contains(self, token_ids: torch.Tensor) -> torch.Tensor:
        return (token_ids >= self.offset) & (token_ids < self.offset + self.size)


class SemHiTokQwen2Config(Qwen2Config):
    """A Qwen2 config plus the image vocabulary: ``vocab_size = text_vocab_size + K·m``."""

    model_type = "semhitok_qwen2"

    def __init__(
        self,
        semhitok: dict | None = None,
        text_vocab_size: int | None = None,
        image_start_id: int | None = None,
        image_end_id: int | None = None,
        semantic_fraction: float = 0.5,
        unconditional_prompt: str = "",
        image_head: str = "flat",
        image_head_rank: int = DEFAULT_RANK,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if image_head not in IMAGE_HEADS:
            raise ValueError(f"image_head must be one of {IMAGE_HEADS}, got {image_head!r}")
        # "flat": K·m image rows in the shared head; "factorised": the head scores text ids and
        # K semantic ids in one softmax, and p(pix | sem, h) completes an image id
        # (semhitok_plugin.hierarchical_head, docs/hierarchical-head.md)
        self.image_head, self.image_head_rank = image_head, image_head_rank
        self.semhitok = semhitok  # SemHiTokConfig.to_dict() of the image tokenizer
        self.text_vocab_size = text_vocab_size if text_vocab_size is not None else self.vocab_size
        self.image_start_id, self.image_end_id = image_start_id, image_end_id
        self.semantic_fraction = semantic_fraction
        # the text that replaces a text-to-image prompt under CFG dropout, and in the
        # unconditional stream at sampling time (the paper's "un-condition text")
        self.unconditional_prompt = unconditional_prompt

    @property
    def tokenizer_config(self) -> SemHiTokConfig:
        return SemHiTokConfig.from_dict(self.semhitok)

    @property
    def image_vocab(self) -> ImageVocabulary:
        return ImageVocabulary(self.text_vocab_size, self.vocab_size - self.text_vocab_size)


class ImageInputEmbedding(nn.Module):
    """Flat image ids -> LLM inputs: Dual-MLP over the frozen semantic and pixel code vectors."""

    def __init__(self, tokenizer: SemHiTokConfig, hidden_size: int, semantic_fraction: float):
        super().__init__()
        sem, pix = tokenizer.semantic, tokenizer.pixel
        self.codebook_size, self.sub_codebook_size = sem.codebook_size, pix.sub_codebook_size
        # fp32 whatever the model's dtype: the adapter reads them cast to its own dtype
        codes = dict(dtype=torch.float32)
        self.register_buffer(
            "semantic_codes", torch.zeros(sem.codebook_size, sem.code_dim, **codes)
        )
        self.register_buffer(
            "pixel_codes",
            torch.zeros(sem.codebook_size, pix.sub_codebook_size, pix.code_dim, **codes),
        )
        self.adapter = DualMLPAdapter(sem.code_dim, pix.code_dim, hidden_size, semantic_fraction)

    @staticmethod
    @torch.no_grad()
    def codebooks_of(tokenizer: SemHiTok) -> tuple[torch.Tensor, torch.Tensor]:
        """A tokenizer's quantised code vectors (what ``encode`` outputs): (K, d_s), (K, m, d_p)."""
        codebook = tokenizer.semantic_codebook
        all_codes = torch.arange(codebook.codebook_size, device=codebook.codebook.device)
        return codebook.lookup(all_codes), tokenizer.pixel_quantizer.normalized()

    @torch.no_grad()
    def copy_codebooks(self, tokenizer: SemHiTok) -> None:
        semantic, pixel = self.codebooks_of(tokenizer)
        self.semantic_codes.copy_(semantic)
        self.pixel_codes.copy_(pixel)

    def forward(self, flat_ids: torch.Tensor) -> torch.Tensor:
        """Flat ids already in [0, K·m) (``embed`` clamps them): no range check here, since one
        would read the ids back to the host on every forward step."""
        sem = torch.div(flat_ids, self.sub_codebook_size, rounding_mode="floor")
        pix = flat_ids.remainder(self.sub_codebook_size)
        # the codebooks are fp32 buffers (bf16 after a plain model.to(bf16)): read them in the
        # adapter's dtype, which DeepSpeed's bf16 cast changes without touching buffers
        dtype = self.adapter.semantic.fc1.weight.dtype
        return self.adapter(
            self.semantic_codes[sem].to(dtype), self.pixel_codes[sem, pix].to(dtype)
        )


class SemHiTokQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = SemHiTokQwen2Config

    def __init__(self, config: SemHiTokQwen2Config) -> None:
        super(Qwen2ForCausalLM, self).__init__(config)
        text_config = copy.copy(config)  # the transformer and its table cover text ids only
        text_config.vocab_size = config.text_vocab_size
        self.model = Qwen2Model(text_config)
        self.vocab_size = config.vocab_size
        self.factorised = config.image_head == "factorised"
        head_rows = config.text_vocab_size if self.factorised else config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, head_rows, bias=False)
        if self.factorised:
            if is_deepspeed_zero3_enabled():
                raise ValueError(
                    "image_head='factorised' does not support DeepSpeed ZeRO-3: its pixel level "
                    "is read outside a module forward, where ZeRO-3 has not gathered it"
                )
            tok = config.tokenizer_config
            self.image_head = FactorisedHead(
                config.hidden_size,
                tok.semantic.codebook_size,
                tok.pixel.sub_codebook_size,
                config.image_head_rank,
            )
        self.image_embed = ImageInputEmbedding(
            config.tokenizer_config, config.hidden_size, config.semantic_fraction
        )
        self.image_vocab = config.image_vocab
        self.post_init()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings: the table for text ids, the Dual-MLP adapter for image ids."""
        image = self.image_vocab.contains(input_ids)
        text = self.model.embed_tokens(input_ids.masked_fill(image, 0))
        flat = (input_ids - self.image_vocab.offset).clamp(0, self.image_vocab.size - 1)
        # computed for every position (no host sync); the adapter is tiny next to the LLM
        return torch.where(image[..., None], self.image_embed(flat).to(text.dtype), text)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        num_logits_to_keep: int = 0,
        **kwargs,
    ):
        """Qwen2's forward, with image ids embedded through the adapter. The signature is
        Qwen2's own (transformers 4.46 ``Qwen2ForCausalLM.forward``) so that ``generate`` sees
        ``num_logits_to_keep`` and computes the head for the last position only.

        With the factorised image head the logits are text + K wide (text ids, then the K
        semantic ids: one softmax), the output always holds the hidden states (the pixel level
        reads the last ones, see :meth:`image_targets`), and ``labels`` are refused: their loss
        needs the pixel level (``semhitok_qwen.train`` computes it)."""
        if self.factorised:
            if labels is not None:
                raise ValueError("image_head='factorised': compute the loss with image_targets()")
            output_hidden_states, return_dict = True, True
        if input_ids is not None:
            inputs_embeds = self.embed(input_ids)
        outputs = super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            cache_position=cache_position,
            num_logits_to_keep=num_logits_to_keep,
            **kwargs,
        )
        if self.factorised:
            hidden = outputs.hidden_states[-1][:, -num_logits_to_keep:]
            semantic = self.image_head.sem_logits(hidden).to(outputs.logits.dtype)
            outputs.logits = torch.cat([outputs.logits, semantic], dim=-1)
        return outputs

    def image_targets(
        self, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The factorised image head's loss terms: ``labels`` (B, T) with each image target
        ``offset + sem·m + pix`` replaced by its first-level id ``offset + sem`` (what the
        text + K logits score), and ``-log p(pix | sem, h)`` of each next-token position
        (B, T - 1; 0 where the target is not an image id), ``hidden`` being the last hidden
        states. Shifted cross-entropy over the first level plus these is each target's exact
        negative log-likelihood."""
        vocab, m = self.image_vocab, self.image_head.sub_codebook_size
        image = vocab.contains(labels)
        flat = (labels - vocab.offset).clamp(0, vocab.size - 1)
        sem, pix = flat // m, flat % m
        first_level = torch.where(image, vocab.offset + sem, labels)
        pix_logits = self.image_head.pix_logits(hidden[:, :-1], sem[:, 1:]).float()
        pixel = F.cross_entropy(pix_logits.flatten(0, 1), pix[:, 1:].flatten(), reduction="none")
        return first_level, pixel.view_as(pix[:, 1:]) * image[:, 1:]

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the image ids only (B, ..., K·m): the head's image slice, used while an
        image is generated (the text rows cannot be sampled there). Under DeepSpeed ZeRO-3 the
        head's weight exists only inside its own forward, so the whole head runs there. The
        factorised head has no such slice: it samples with ``image_head.sample``."""
        if self.factorised:
            raise ValueError("image_head='factorised' has no flat image logits")
        rows = slice(self.image_vocab.offset, self.image_vocab.offset + self.image_vocab.size)
        if is_deepspeed_zero3_enabled():
            return self.lm_head(hidden)[..., rows]
        return F.linear(hidden, self.lm_head.weight[rows])

    @classmethod
    def from_qwen(
        cls,
        qwen: Qwen2ForCausalLM,
        text_vocab_size: int,
        marker_ids: tuple[int, int],
        tokenizer: SemHiTok,
        semantic_fraction: float = 0.5,
        unconditional_prompt: str = "",
        image_head: str = "flat",
    ) -> SemHiTokQwen2ForCausalLM:
        """Extend a loaded Qwen2 LM (whose tokenizer already holds the two markers) by the image
        vocabulary of ``tokenizer``. Text rows keep their weights; the marker rows (new tokens,
        or untrained padding rows of Qwen's table) start at the mean of the trained rows before
        them, in the table and in the head; image rows of the head (or the factorised image
        head, ``image_head="factorised"``) start like a fresh Linear's."""
        base = qwen.config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            base.pop(key, None)
        base.update(
            vocab_size=text_vocab_size + tokenizer.vocab_size,
            tie_word_embeddings=False,  # the head has K·m more rows than the table
        )
        config = SemHiTokQwen2Config(
            semhitok=tokenizer.config.to_dict(),
            text_vocab_size=text_vocab_size,
            image_start_id=marker_ids[0],
            image_end_id=marker_ids[1],
            semantic_fraction=semantic_fraction,
            unconditional_prompt=unconditional_prompt,
            image_head=image_head,
            **base,
        )
        config._attn_implementation = qwen.config._attn_implementation
        previous = torch.get_default_dtype()
        torch.set_default_dtype(qwen.dtype)  # built in the LM's dtype: no fp32 copy of a 7B
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
        model.image_embed.copy_codebooks(tokenizer)
        for target, source in (
            (model.model.embed_tokens.weight, qwen.get_input_embeddings().weight),
            (model.lm_head.weight[:text_vocab_size], qwen.get_output_embeddings().weight),
        ):
            _copy_rows(target, source, marker_ids)
        state = {k: v for k, v in qwen.model.state_dict().items() if "embed_tokens" not in k}
        missing, unexpected = model.model.load_state_dict(state, strict=False)
        if missing != ["embed_tokens.weight"] or unexpected:
            raise ValueError(f"not a Qwen2 model: missing {missing}, unexpected {unexpected}")
        return model


@torch.no_grad()
def _copy_rows(target: torch.Tensor, source: torch.Tensor, marker_ids: tuple[int, int]) -> None:
    """``source``'s rows into ``target``; rows it lacks and the marker rows get the mean of the
    rows before the first marker (the tokens Qwen was trained with)."""
    n = min(len(target), len(source))
    target[:n] = source[:n]
    mean = source[: min(marker_ids)].mean(0)
    target[n:] = mean
    target[list(marker_ids)] = mean


AutoConfig.register(SemHiTokQwen2Config.model_type, SemHiTokQwen2Config)
AutoModelForCausalLM.register(SemHiTokQwen2Config, SemHiTokQwen2ForCausalLM)

__all__ = [
    "IMAGE_END",
    "IMAGE_START",
    "ImageInputEmbedding",
    "ImageVocabulary",
    "SemHiTokQwen2Config",
    "SemHiTokQwen2ForCausalLM",
]
