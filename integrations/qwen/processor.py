"""``SemHiTokQwenProcessor``: (chat text, images) <-> token ids of the unified MLLM.

Text goes through the LLM's own tokenizer and chat template (Qwen's ChatML for Qwen2.5). An image
is written in a message as the placeholder ``<image>``; the processor replaces it by

    <|image_start|>  h·w image token ids (raster order)  <|image_end|>

where the two markers are special tokens added to the text tokenizer and image token id
``text_vocab_size + flat`` is SemHiTok's flat id ``flat``. The K·m image ids are *not* strings in
the text tokenizer (196,608 extra entries would only slow it down): they exist as ids, and the
processor converts them to and from images with the SemHiTok model it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from semhitok_plugin.ids import check_ids
from semhitok_plugin.images import center_crop, load_image, to_pil, to_tensor
from semhitok_plugin.model import CheckpointMismatchError, SemHiTok, load_model

from .model import IMAGE_END, IMAGE_START, ImageVocabulary, SemHiTokQwen2Config

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100  # label of positions without loss (transformers' convention)
SEMHITOK_SUBDIR = "semhitok"

ImageInput = Image.Image | str | Path | torch.Tensor  # PIL, file, or flat ids (h·w,) / (h, w)


@dataclass
class Decoded:
    """A decoded id sequence: its text (images left as ``<image>``) and its images."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    image_ids: list[torch.Tensor] = field(default_factory=list)


class SemHiTokQwenProcessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_tokenizer: SemHiTok,
        config: SemHiTokQwen2Config,
    ) -> None:
        if image_tokenizer.config != config.tokenizer_config:
            raise CheckpointMismatchError(
                "the SemHiTok model given to the processor has a different config from the one "
                "this MLLM was built with (config.semhitok)"
            )
        self.tokenizer = tokenizer
        self.image_tokenizer = image_tokenizer.eval()
        self.config = config
        self.image_vocab: ImageVocabulary = config.image_vocab
        self.image_start_id, self.image_end_id = config.image_start_id, config.image_end_id
        for token, expected in ((IMAGE_START, self.image_start_id), (IMAGE_END, self.image_end_id)):
            if tokenizer.convert_tokens_to_ids(token) != expected:
                raise CheckpointMismatchError(
                    f"text tokenizer maps {token} to {tokenizer.convert_tokens_to_ids(token)}, "
                    f"the model expects {expected}: tokenizer and model are from different builds"
                )

    # -- images ---------------------------------------------------------------------------------
    @property
    def num_image_tokens(self) -> int:
        h, w = self.image_tokenizer.grid_size
        return h * w

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageInput]) -> list[torch.Tensor]:
        """Flat ids (h·w,) per image; PIL images and files are centre-cropped to the tokenizer's
        size, ids pass through after a range check."""
        size = self.image_tokenizer.config.image_size
        out: list[torch.Tensor | None] = [None] * len(images)
        pixels, where = [], []
        for i, image in enumerate(images):
            if isinstance(image, torch.Tensor):
                if image.numel() != self.num_image_tokens:
                    raise ValueError(
                        f"image ids must have {self.num_image_tokens} entries, got {image.numel()}"
                    )
                check_ids(image, self.image_vocab.size, "image ids")
                out[i] = image.flatten().long().cpu()
                continue
            img = load_image(image) if isinstance(image, str | Path) else image.convert("RGB")
            pixels.append(center_crop(img, size))
            where.append(i)
        if pixels:
            device = next(self.image_tokenizer.parameters()).device
            ids = self.image_tokenizer.encode(to_tensor(pixels).to(device)).flat_ids
            for i, row in zip(where, ids.flatten(1).cpu(), strict=True):
                out[i] = row
        return out

    def image_token_ids(self, flat_ids: torch.Tensor) -> list[int]:
        """``<|image_start|>`` + LLM ids of one image's flat ids + ``<|image_end|>``."""
        body = self.image_vocab.to_tokens(flat_ids.flatten().long()).tolist()
        return [self.image_start_id, *body, self.image_end_id]

    @torch.no_grad()
    def decode_images(self, flat_ids: torch.Tensor) -> list[Image.Image]:
        """PIL images from flat ids (B, h·w)."""
        device = next(self.image_tokenizer.parameters()).device
        return to_pil(self.image_tokenizer.decode(flat_ids.to(device)))

    # -- text + images -> ids -------------------------------------------------------------------
    def tokenize(self, text: str, image_ids: Sequence[torch.Tensor] = ()) -> list[int]:
        """Token ids of ``text`` with each ``<image>`` replaced by the next image's tokens."""
        pieces = text.split(IMAGE_PLACEHOLDER)
        _check_image_count(len(pieces) - 1, len(image_ids))
        ids = self._text_ids(pieces[0])
        for piece, image in zip(pieces[1:], image_ids, strict=True):
            ids += self.image_token_ids(image) + self._text_ids(piece)
        return ids

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def chat_text(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The chat template applied to messages whose contents may hold ``<image>``."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def tokenize_chat(
        self,
        messages: list[dict],
        images: Sequence[ImageInput] = (),
        add_generation_prompt: bool = False,
    ) -> tuple[list[int], list[int]]:
        """(input ids, labels) of a conversation: labels cover the assistant turns (their text,
        image tokens and end-of-turn tokens) and are ``IGNORE_INDEX`` elsewhere.

        Assistant spans are found by rendering the template on growing prefixes of the
        conversation, so any chat template that renders prefixes consistently works."""
        if messages and messages[0]["role"] == "assistant":
            raise ValueError("a conversation cannot open with an assistant turn")
        text = self.chat_text(messages, add_generation_prompt)
        spans, start = [], 0  # (start, end, trained) character spans of ``text``
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = len(self.chat_text(messages[:i], add_generation_prompt=True))
            tail = len(self.chat_text(messages[: i + 1]))
            if not (start <= head <= tail <= len(text)):
                raise ValueError("the chat template does not render prefixes consistently")
            spans += [(start, head, False), (head, tail, True)]
            start = tail
        spans.append((start, len(text), False))
        _check_image_count(text.count(IMAGE_PLACEHOLDER), len(images))
        image_ids = iter(self.encode_images(images))
        input_ids, labels = [], []
        for lo, hi, trained in spans:
            piece = text[lo:hi]
            ids = self.tokenize(
                piece, [next(image_ids) for _ in range(piece.count(IMAGE_PLACEHOLDER))]
            )
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
        return input_ids, labels

    def __call__(
        self,
        conversations: list[list[dict]],
        images: Sequence[Sequence[ImageInput]] | None = None,
        add_generation_prompt: bool = True,
    ) -> dict[str, torch.Tensor]:
        """A left-padded batch (``input_ids``, ``attention_mask``) of conversations, ready for
        ``generate``; ``images[i]`` fills conversation i's placeholders."""
        images = images or [()] * len(conversations)
        rows = [
            self.tokenize_chat(conv, imgs, add_generation_prompt)[0]
            for conv, imgs in zip(conversations, images, strict=True)
        ]
        return self.pad(rows, side="left")

    def pad(self, rows: list[list[int]], side: str = "left") -> dict[str, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, cols], mask[i, cols] = torch.tensor(row, dtype=torch.long), 1
        return {"input_ids": ids, "attention_mask": mask}

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # -- ids -> text + images -------------------------------------------------------------------
    def decode(
        self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True
    ) -> Decoded:
        """Text and images of one id sequence. An image must be exactly h·w image ids between
        its markers; anything else is an error naming its position."""
        ids, n = torch.as_tensor(ids).flatten().tolist(), self.num_image_tokens
        texts, image_ids, start = [], [], 0
        while self.image_start_id in ids[start:]:
            i = ids.index(self.image_start_id, start)
            end = i + 1 + n
            body = torch.tensor(ids[i + 1 : end])
            if (
                ids[end : end + 1] != [self.image_end_id]
                or not self.image_vocab.contains(body).all()
            ):
                raise ValueError(
                    f"the image opened at position {i} is not {n} image ids closed by {IMAGE_END}"
                )
            texts.append(ids[start:i])
            image_ids.append(body - self.image_vocab.offset)
            start = end + 1
        texts.append(ids[start:])
        text = IMAGE_PLACEHOLDER.join(
            self.tokenizer.decode(t, skip_special_tokens=skip_special_tokens) for t in texts
        )
        images = self.decode_images(torch.stack(image_ids)) if image_ids else []
        return Decoded(text, images, image_ids)

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """The text tokenizer in ``directory``, the SemHiTok model in ``directory/semhitok``."""
        self.tokenizer.save_pretrained(directory)
        self.image_tokenizer.save_pretrained(Path(directory) / SEMHITOK_SUBDIR)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, image_tokenizer: str | SemHiTok | None = None
    ) -> SemHiTokQwenProcessor:
        """Load from an MLLM checkpoint directory; ``image_tokenizer`` (a SemHiTok model, preset,
        directory or hub id) overrides the one saved under ``semhitok/``."""
        directory = Path(directory)
        config = SemHiTokQwen2Config.from_pretrained(directory)
        if image_tokenizer is None:
            image_tokenizer = SemHiTok.from_pretrained(directory / SEMHITOK_SUBDIR)
        elif isinstance(image_tokenizer, str):
            image_tokenizer = load_model(image_tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)  # no prompt
        return cls(tokenizer, image_tokenizer, config)


def _check_image_count(placeholders: int, images: int) -> None:
    if placeholders != images:
        raise ValueError(
            f"text has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {images} images "
            "were given"
        )


def add_image_markers(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add ``<|image_start|>``/``<|image_end|>`` as special tokens; return their ids."""
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [IMAGE_START, IMAGE_END]},
        replace_additional_special_tokens=False,
    )
    return tuple(tokenizer.convert_tokens_to_ids([IMAGE_START, IMAGE_END]))


__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "Decoded",
    "SemHiTokQwenProcessor",
    "add_image_markers",
]
