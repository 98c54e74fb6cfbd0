"""lmms-eval ``generation_kwargs`` -> ``model.generate`` arguments, and ``until`` handling.

Task YAMLs mix ``generate`` options with lmms-eval's own keys (``until``) and options meant for
other models (``image_aspect_ratio`` in SEED-Bench): only the options below reach ``generate``.
``until`` strings are checked on the decoded text of each row (a ``StoppingCriteria``) rather
than with transformers' ``stop_strings``, whose token table covers only the text tokenizer while
this model's head also scores its padded text rows.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria


def split_generation_kwargs(
    gen_kwargs: dict[str, Any], default_max_new_tokens: int
) -> tuple[list[str], dict[str, Any]]:
    """(until strings, ``generate`` kwargs). Greedy unless sampling is asked for with a
    non-zero temperature (lmms-eval tasks write ``temperature: 0`` for greedy)."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = gen_kwargs.get("temperature")
    do_sample = bool(gen_kwargs.get("do_sample", bool(temperature))) and temperature != 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens),
        "do_sample": do_sample,
        "num_beams": int(gen_kwargs.get("num_beams") or 1),
    }
    if do_sample:
        kwargs["temperature"] = float(temperature or 1.0)
        for key in ("top_p", "top_k"):
            if gen_kwargs.get(key):
                kwargs[key] = gen_kwargs[key]
    return until, kwargs


def truncate_at(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in until) if i >= 0), default=len(text))
    return text[:cut]


class StopOnStrings(StoppingCriteria):
    """Per-row stop once the text generated after ``prompt_length`` contains a stop string."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, until: list[str], prompt_length: int
    ) -> None:
        self.tokenizer, self.until, self.prompt_length = tokenizer, until, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_length :], skip_special_tokens=True
        )
        done = [any(s in t for s in self.until) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
