"""Training data of the unified MLLM: JSONL conversations, CFG dropout, truncation, batching.

Format: one JSON object per line (blank lines are ignored), of one of two kinds.

* ``{"text": "..."}``: plain text (language data). Loss on every token, then the tokenizer's
  end-of-sequence token.
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
  "images": ["a.png", ...]}``: a conversation in the LLM's chat template. Each ``<image>`` in a
  content takes the next entry of ``images`` (paths relative to the JSONL file, or absolute).
  Loss covers the assistant turns only. An ``<image>`` in a *user* turn is an image to
  understand (captioning, VQA, instructions); an ``<image>`` in an *assistant* turn is an image
  to generate (text-to-image), and its image ids carry loss. At least one assistant turn.

Pre-tokenized images: an entry of ``images`` may instead name an image of a token set (what
``semhitok encode`` writes under torchrun) or token file, so training reads its ids and never
runs the tokenizer for it::

    {"tokens": "tokens/coyo", "index": 17}             the 18th image of the set (input order)
    {"tokens": "tokens/coyo", "source": "img/cat.jpg"} the image the set names so

``tokens`` is a set's directory or ``index.json``, or a ``.npz`` token file, relative to the
JSONL file or absolute; ``source`` is the image's name as the set records it (the path given to
``semhitok encode``, or ``TARPATH/KEY``). Write the set with the MLLM's own tokenizer
(``semhitok encode -m CKPT/semhitok ...``): its ids are what that tokenizer would give, so the
sample is the same as with the image file. Grid and vocabulary are checked; the tokenizer's
name is not (each MLLM checkpoint carries a copy under its own path), only warned about. An
image that could not be read when the set was written is dropped like an unreadable file.

Classifier-free guidance (paper §3.3): in a text-to-image sample (images in assistant turns only)
the text of every user turn is replaced, with probability ``cfg_dropout``, by the model's
``unconditional_prompt``. The draw is a pure function of ``(seed, sample index)``: the same in
every run, with any number of dataloader workers, and after a resume.

Truncation to ``max_length`` never cuts an image: a sample whose cut would fall inside an image
(between its markers) is dropped; otherwise the tail is cut off, and a sample left without any
labelled token is dropped too. A sample whose image file cannot be read is dropped. A dropped
sample is replaced by the next usable one (deterministically), and each batch counts the drops
(``skipped``: unreadable images, too long) so the trainer can log them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from semhitok_plugin.config import ConfigError
from semhitok_plugin.images import ImageReadError
from semhitok_plugin.token_files import TokenFileError, TokenSet, same_model

from .processor import IGNORE_INDEX, IMAGE_PLACEHOLDER, SemHiTokQwenProcessor

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
SKIP_REASONS = ("bad_image", "too_long")


class DataFormatError(ConfigError):
    """A training data file that does not follow the JSONL format (names file:line)."""


@dataclass(frozen=True)
class TokenRef:
    """A pre-tokenized image: position ``index`` of, or the image named ``source`` in, the
    token set or file at ``tokens`` (a resolved path)."""

    tokens: str
    index: int | None = None
    source: str | None = None


@dataclass(frozen=True)
class Record:
    """One parsed JSONL line: plain ``text``, or ``messages`` with resolved image paths or
    references into token sets."""

    where: str  # "file:line", for messages about this sample
    text: str | None = None
    messages: tuple[dict, ...] = ()
    images: tuple[str | TokenRef, ...] = ()

    @property
    def generates_image(self) -> bool:
        return any(_holds_image(m, "assistant") for m in self.messages)

    @property
    def is_text_to_image(self) -> bool:
        """Images are generated and none is given: the only kind CFG dropout applies to."""
        return self.generates_image and not any(_holds_image(m, "user") for m in self.messages)


def _holds_image(message: dict, role: str) -> bool:
    return message["role"] == role and IMAGE_PLACEHOLDER in message["content"]


# -- reading ---------------------------------------------------------------------------------------
def read_jsonl(paths: Sequence[str | Path]) -> list[Record]:
    """All records of the given JSONL files, validated; errors name the file and line."""
    records = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"training data file {str(path)!r} does not exist")
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    records.append(_parse(line, path, f"{path}:{number}"))
    if not records:
        raise DataFormatError(f"no training samples in {[str(p) for p in paths]}")
    return records


def _parse(line: str, path: Path, where: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(obj, dict) or ("text" in obj) == ("messages" in obj):
        raise DataFormatError(f'{where}: expected an object with either "text" or "messages"')
    if "text" in obj:
        if not isinstance(obj["text"], str) or set(obj) != {"text"}:
            raise DataFormatError(f'{where}: a text sample is {{"text": "<string>"}} only')
        return Record(where, text=obj["text"])
    messages, images = obj["messages"], obj.get("images", [])
    if set(obj) - {"messages", "images"}:
        raise DataFormatError(f"{where}: unknown keys {sorted(set(obj) - {'messages', 'images'})}")
    _check_messages(messages, where)
    if not isinstance(images, list):
        raise DataFormatError(f'{where}: "images" must be a list of file paths or token refs')
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise DataFormatError(
            f"{where}: {placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images"
        )
    resolved = tuple(_image_entry(image, path.parent, where) for image in images)
    return Record(where, messages=tuple(messages), images=resolved)


def _image_entry(entry: object, folder: Path, where: str) -> str | TokenRef:
    """An image path, or a reference into a token set; paths relative to the JSONL's folder
    (absolute paths stay)."""
    if isinstance(entry, str):
        return str(folder / entry)
    keys = set(entry) if isinstance(entry, dict) else set()
    if keys not in ({"tokens", "index"}, {"tokens", "source"}) or not isinstance(
        entry["tokens"], str
    ):
        raise DataFormatError(
            f'{where}: an image is a file path, {{"tokens": "<set>", "index": <int>}} or '
            f'{{"tokens": "<set>", "source": "<name>"}}, got {json.dumps(entry)[:80]}'
        )
    index, source = entry.get("index"), entry.get("source")
    if "index" in keys and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise DataFormatError(f'{where}: "index" must be an integer >= 0, got {index!r}')
    if "source" in keys and not isinstance(source, str):
        raise DataFormatError(f'{where}: "source" must be a string, got {source!r}')
    return TokenRef(str(folder / entry["tokens"]), index, source)


def _check_messages(messages: object, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f'{where}: "messages" must be a non-empty list')
    for m in messages:
        valid = isinstance(m, dict) and m.get("role") in ROLES
        if not (valid and isinstance(m.get("content"), str)):
            raise DataFormatError(
                f'{where}: each message is {{"role": one of {list(ROLES)}, "content": "<string>"}}'
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError(f"{where}: no assistant turn, so nothing to learn")
    if messages[0]["role"] == "assistant":
        raise DataFormatError(f"{where}: the conversation opens with an assistant turn")


# -- the dataset -----------------------------------------------------------------------------------
class DroppedSample(Exception):
    """A sample that cannot be used (``reason`` is one of :data:`SKIP_REASONS`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnifiedDataset(Dataset):
    """``{"input_ids", "labels", "skipped"}`` per sample; images are tokenized on access with the
    processor's SemHiTok (on the device it lives on), pre-tokenized ones read from their token
    sets (opened and checked here, against the tokenizer and every reference)."""

    def __init__(
        self,
        records: Sequence[Record],
        processor: SemHiTokQwenProcessor,
        *,
        max_length: int = 2048,
        cfg_dropout: float = 0.1,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= cfg_dropout <= 1.0:
            raise ConfigError(f"cfg_dropout must be in [0, 1], got {cfg_dropout}")
        if max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length}")
        self.records, self.processor = list(records), processor
        self.max_length, self.cfg_dropout, self.seed = max_length, cfg_dropout, seed
        self.token_sets: dict[str, TokenSet] = {}
        for record in self.records:
            for image in record.images:
                if isinstance(image, TokenRef):
                    self._position(image, record.where)  # a bad reference fails here

    def _token_set(self, path: str, where: str) -> TokenSet:
        if path not in self.token_sets:
            tokenizer = self.processor.image_tokenizer
            try:
                tokens = TokenSet(Path(path), tokenizer, allow_other_model=True)
            except (TokenFileError, OSError) as err:
                raise DataFormatError(f"{where}: {' '.join(str(err).split())}") from err
            written_by = tokens.index.source.model if tokens.index else ""
            if written_by and not same_model(written_by, tokenizer.name_or_path):
                logger.warning(
                    "%s was written by tokenizer %r; this MLLM's is %r: the ids are only right "
                    "if they are the same tokenizer",
                    path,
                    written_by,
                    tokenizer.name_or_path,
                )
            self.token_sets[path] = tokens
        return self.token_sets[path]

    def _position(self, ref: TokenRef, where: str) -> int | str:
        """The position of ``ref``'s image in its set, or why it could not be read when the
        set was written."""
        tokens = self._token_set(ref.tokens, where)
        if ref.index is not None:
            if ref.index >= len(tokens):
                raise DataFormatError(
                    f"{where}: index {ref.index}, but {ref.tokens} holds {len(tokens)} images"
                )
            return ref.index
        try:
            return tokens.position(ref.source)
        except KeyError:
            if ref.source not in tokens.failures:
                message = f"{where}: {ref.tokens} has no image {ref.source!r}"
                raise DataFormatError(message) from None
            return tokens.failures[ref.source]

    def _image(self, image: str | TokenRef, where: str) -> str | torch.Tensor:
        """A file path as is, or a reference's ids (h, w)."""
        if not isinstance(image, TokenRef):
            return image
        position = self._position(image, where)
        if isinstance(position, str):
            raise DroppedSample("bad_image", f"{image.source!r} in {image.tokens}: {position}")
        try:
            return self.token_sets[image.tokens][position]
        except TokenFileError as err:  # a shard missing or damaged since the set was checked
            raise DataFormatError(f"{where}: {' '.join(str(err).split())}") from err

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                ids, labels = self.tokenize(i)
            except DroppedSample as drop:
                skipped[drop.reason] += 1
                logger.warning("skipping %s: %s", self.records[i].where, drop)
                continue
            return {
                "input_ids": torch.tensor(ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "skipped": torch.tensor([skipped[r] for r in SKIP_REASONS]),
            }
        raise RuntimeError("no usable training sample: every sample was dropped (see warnings)")

    def conversation(self, index: int) -> tuple[list[dict], tuple[str | TokenRef, ...]]:
        """Messages and images of a conversation sample as trained on (after CFG dropout)."""
        record = self.records[index]
        messages = [dict(m) for m in record.messages]
        if record.is_text_to_image and self._drops_condition(index):
            for m in messages:
                if m["role"] == "user":
                    m["content"] = self.processor.config.unconditional_prompt
        return messages, record.images

    def _drops_condition(self, index: int) -> bool:
        return bool(np.random.default_rng((self.seed, index)).random() < self.cfg_dropout)

    def tokenize(self, index: int) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one sample, truncated; raises :class:`DroppedSample`."""
        record = self.records[index]
        if record.text is not None:
            tok = self.processor.tokenizer
            ids = tok(record.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            return self._truncate(ids, list(ids))
        messages, images = self.conversation(index)
        images = [self._image(image, record.where) for image in images]
        try:
            ids, labels = self.processor.tokenize_chat(messages, images)
        except ImageReadError as err:
            raise DroppedSample("bad_image", str(err)) from err
        return self._truncate(ids, labels)

    def _truncate(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        cut = self.max_length
        if len(ids) > cut:
            opened = ids[:cut].count(self.processor.image_start_id)
            if opened != ids[:cut].count(self.processor.image_end_id):
                raise DroppedSample(
                    "too_long", f"max_length {cut} would cut an image ({len(ids)} tokens)"
                )
            ids, labels = ids[:cut], labels[:cut]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise DroppedSample("too_long", f"no labelled token within max_length {cut}")
        return ids, labels


@dataclass
class Collator:
    """Right-pads a batch: pad id for inputs, ``IGNORE_INDEX`` for labels, an attention mask;
    ``skipped`` is the batch's count of dropped samples per reason."""

    pad_token_id: int

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
        skipped = torch.stack([s["skipped"] for s in samples]).sum(0)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "skipped": skipped}


# -- a small mixed data set ------------------------------------------------------------------------
CAPTIONS = {
    "astronaut": "an astronaut in a white suit next to a flag",
    "coffee": "a cup of coffee on a wooden table",
    "chelsea": "a photo of a cat sitting on a red sofa",
    "rocket": "a rocket on the launch pad under a blue sky",
}
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Describe the image in one sentence.",
)


def write_sample_jsonl(directory: str | Path) -> Path:
    """A small mixed data set in ``directory``: text-only lines, captions and VQA about the
    bundled sample photos (written as PNG files beside it) and text-to-image requests."""
    from semhitok_plugin.samples import write_sample_photos

    directory = Path(directory)
    photos = write_sample_photos(directory, tuple(CAPTIONS))
    lines: list[dict] = [{"text": t} for t in TEXTS]
    for photo, (name, caption) in zip(photos, CAPTIONS.items(), strict=True):
        image = [photo.name]
        lines += [
            _chat(f"{IMAGE_PLACEHOLDER}\nDescribe the image in one sentence.", caption, image),
            _chat(
                f"{IMAGE_PLACEHOLDER}\nIs there a cat in the image?",
                "Yes." if name == "chelsea" else "No.",
                image,
            ),
            _chat(caption, IMAGE_PLACEHOLDER, image),
        ]
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _chat(user: str, assistant: str, images: list[str]) -> dict:
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": turns, "images": images}


__all__ = [
    "SKIP_REASONS",
    "Collator",
    "DataFormatError",
    "Record",
    "TokenRef",
    "UnifiedDataset",
    "read_jsonl",
    "write_sample_jsonl",
]
