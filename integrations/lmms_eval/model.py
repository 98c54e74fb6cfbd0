"""``SemHiTokQwen``: the unified MLLM as an lmms-eval 0.7.3 model (``--model semhitok_qwen``).

A simple (non-chat) lmms-eval model: each request's context becomes one user turn of the Qwen
chat template, its images (``doc_to_visual``) go before the text as ``<image>`` placeholders,
and the answer is the assistant turn. Contracts, from lmms-eval 0.7.3:

* ``api/model.py`` ``lmms``: the three abstract request methods, ``rank``/``world_size``,
  ``task_dict`` (set by ``evaluator.py`` to ``{task: {split: dataset}}``), and
  ``create_from_arg_string`` (``--model_args`` parsed by ``utils.simple_parse_args_string``).
* ``api/task.py`` ``ConfigurableTask.construct_requests``: the request arguments unpacked below.
* ``api/instance.py`` ``unwrap_generation_output``: a multi-round result must be a ``list`` of
  strings (a tuple would be turned into its ``str``).

Data parallelism: under ``accelerate launch`` each process holds a full copy of the model on
its own GPU and lmms-eval shards the requests by ``rank``/``world_size``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import Collator
from loguru import logger
from tqdm import tqdm
from transformers import LogitsProcessorList, StoppingCriteriaList

from semhitok_qwen import IMAGE_PLACEHOLDER, TextOnly, load_unified, parse_dtype

from .generation import StopOnStrings, split_generation_kwargs, truncate_at


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(dtype)  # ConfigError (a ValueError) names an unknown one


def with_placeholders(context: str, num_images: int) -> str:
    """The user turn: one ``<image>`` per image before the text. A context that already holds
    exactly one placeholder per image (interleaved tasks) is kept as it is; stray placeholders
    in a context that does not match its images are dropped."""
    if context.count(IMAGE_PLACEHOLDER) == num_images:
        return context
    text = context.replace(IMAGE_PLACEHOLDER, "")
    return IMAGE_PLACEHOLDER * num_images + "\n" + text if num_images else text


class SemHiTokQwen(lmms):
    """``--model_args pretrained=DIR[,tokenizer=SPEC][,device=..][,dtype=..][,batch_size=N]
    [,max_new_tokens=N]``; ``tokenizer`` overrides the SemHiTok model saved with the MLLM."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_new_tokens: int | str = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            logger.warning(f"semhitok_qwen ignores the model_args {sorted(kwargs)}")
        if not Path(pretrained).is_dir():
            raise ValueError(
                f"pretrained={pretrained!r} is not a directory: pass the directory written by "
                "semhitok_qwen.save_unified (download hub checkpoints first)"
            )
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"batch_size={batch_size!r} must be an integer") from None
        self.max_new_tokens = int(max_new_tokens)
        self._device = self._bind_device(device)
        self._model, self.processor = load_unified(
            pretrained,
            image_tokenizer=tokenizer,
            device=self._device,
            torch_dtype=resolve_dtype(str(dtype), self._device),
        )
        self.tokenizer = self.processor.tokenizer
        self.text_only = LogitsProcessorList([TextOnly(self.processor)])

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> SemHiTokQwen:
        """As ``lmms``'s, but ``--model_args`` win over the CLI's ``--batch_size``/``--device``
        (upstream passes both as keywords, so naming one twice is a TypeError there)."""
        from lmms_eval.utils import simple_parse_args_string

        # max_batch_size comes from the CLI, not from the user's --model_args: not "ignored"
        extra = {
            k: v
            for k, v in (additional_config or {}).items()
            if v is not None and k != "max_batch_size"
        }
        return cls(**{**extra, **simple_parse_args_string(arg_string)})

    def _bind_device(self, device: str | None) -> torch.device:
        """One process: ``device`` (default cuda when available). Several (accelerate launch):
        this process's GPU."""
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            return torch.device(f"cuda:{accelerator.local_process_index}")
        return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def model(self):
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    # -- prompts ----------------------------------------------------------------------------------
    def _doc(self, doc_id: int, task: str, split: str) -> dict:
        return self.task_dict[task][split][doc_id]

    @staticmethod
    def _images(visuals: Sequence | None) -> list:
        """A doc's visuals (``None`` for text-only docs) as a list of images."""
        return [v for v in visuals or [] if v is not None]

    def _prompt_ids(self, context: str, visuals: Sequence) -> list[int]:
        """Chat-template ids of one user turn plus the opening of the assistant turn."""
        messages = [{"role": "user", "content": with_placeholders(context, len(visuals))}]
        return self.processor.tokenize_chat(messages, visuals, add_generation_prompt=True)[0]

    def _text_length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], gen_kwargs: dict) -> list[str]:
        """Answers to a batch of prompt ids (left-padded), cut at the ``until`` strings."""
        until, kwargs = split_generation_kwargs(gen_kwargs, self.max_new_tokens)
        batch = {k: v.to(self.device) for k, v in self.processor.pad(prompts, "left").items()}
        width = batch["input_ids"].shape[1]
        stops = StoppingCriteriaList([StopOnStrings(self.tokenizer, until, width)] if until else [])
        out = self.model.generate(
            **batch,
            logits_processor=self.text_only,
            stopping_criteria=stops,
            pad_token_id=self.processor.pad_token_id,
            **kwargs,
        )
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [truncate_at(t, until) for t in texts]

    def _batches(self, requests: list[Instance], group: bool) -> tuple[Collator, Iterator]:
        """Requests sorted longest first (padding waste is small, an OOM shows at once),
        grouped by generation kwargs when ``group``; ``Collator.get_original`` restores order."""
        order = Collator(
            [r.args for r in requests], lambda a: -self._text_length(a[0]), grouping=group
        )
        return order, order.get_batched(n=self.batch_size)

    def _progress(self, total: int) -> tqdm:
        return tqdm(total=total, disable=self.rank != 0, desc="Model Responding")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Args ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""
        order, batches = self._batches(requests, group=True)
        answers, pbar = [], self._progress(len(requests))
        for batch in batches:
            prompts = [
                self._prompt_ids(context, self._images(doc_to_visual(self._doc(*where))))
                for context, _, doc_to_visual, *where in batch
            ]
            answers += self._generate(prompts, batch[0][1])  # one gen_kwargs group per batch
            pbar.update(len(batch))
        pbar.close()
        return order.get_original(answers)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Args ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``.

        As in lmms-eval's ``llava_onevision``/``qwen2_vl``: round 0 answers ``context`` with the
        doc's visuals; every later round calls ``doc_to_text(doc, previous_output=answers so far,
        round_idx=r, previous_round_info=info)``, which returns ``(visuals, context, terminal,
        round_results, info)``; at ``terminal`` the request's result is ``round_results``.
        Each round is one fresh user turn (the task writes any history into its context)."""
        order, batches = self._batches(requests, group=True)
        results, pbar = [], self._progress(len(requests))
        for batch in batches:
            results += self._multi_round(batch)
            pbar.update(len(batch))
        pbar.close()
        return order.get_original(results)

    def _multi_round(self, batch: Sequence[tuple]) -> list[list[str]]:
        """All rounds of one batch; requests leave the batch as their task terminates them."""
        docs = [self._doc(*args[4:]) for args in batch]
        turns = {  # live requests: (context, images) of their next round
            k: (context, self._images(doc_to_visual(docs[k])))
            for k, (context, _, doc_to_visual, *_) in enumerate(batch)
        }
        answers: list[list[str]] = [[] for _ in batch]
        infos: list[Any] = [None] * len(batch)
        results: list[list[str]] = [[] for _ in batch]
        round_idx = 0
        while turns:
            live = list(turns)
            texts = self._generate([self._prompt_ids(*turns[k]) for k in live], batch[0][1])
            round_idx += 1
            for k, text in zip(live, texts, strict=True):
                answers[k].append(text)
                doc_to_text = batch[k][3]
                visuals, context, terminal, round_results, infos[k] = doc_to_text(
                    docs[k],
                    previous_output=answers[k],
                    round_idx=round_idx,
                    previous_round_info=infos[k],
                )
                if terminal:
                    results[k] = list(round_results)
                    del turns[k]
                else:
                    turns[k] = (context, self._images(visuals))
        return results

    # -- scoring ----------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Args ``(context, continuation, doc_to_visual, doc_id, task, split)``; the
        continuation is a string (multiple choice) or ``doc_to_target`` (a callable of the doc).

        Returns the summed log-probability of the continuation's tokens after the prompt (user
        turn with the images + the opening of the assistant turn), and whether greedy decoding
        (text ids only, as ``generate_until`` decodes) would produce exactly those tokens."""
        order, batches = self._batches(requests, group=False)
        scores, pbar = [], self._progress(len(requests))
        for batch in batches:
            rows = []
            for context, target, doc_to_visual, *where in batch:
                doc = self._doc(*where)
                continuation = target if isinstance(target, str) else target(doc)
                prompt = self._prompt_ids(context, self._images(doc_to_visual(doc)))
                cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
                rows.append((prompt, cont))
            scores += self._score(rows)
            pbar.update(len(batch))
        pbar.close()
        return order.get_original(scores)

    @torch.no_grad()
    def _score(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p, is greedy) of each continuation given its prompt, one right-padded pass.

        The head runs only at the positions that predict the continuation: a prompt with an
        image is hundreds of positions whose logits over the 348k-id vocabulary are unused."""
        batch = self.processor.pad([p + c for p, c in rows], "right")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model.model(
            inputs_embeds=self.model.embed(batch["input_ids"]),
            attention_mask=batch["attention_mask"],
        ).last_hidden_state
        out = []
        for i, (prompt, cont) in enumerate(rows):
            at = slice(len(prompt) - 1, len(prompt) + len(cont) - 1)  # positions predicting cont
            target = torch.tensor(cont, device=self.device)
            logits = self.model.lm_head(hidden[i, at]).float()
            logprobs = logits.log_softmax(-1)
            greedy = self.text_only(batch["input_ids"][i : i + 1], logits).argmax(-1)
            total = logprobs.gather(-1, target[:, None]).sum()
            out.append((float(total), bool((greedy == target).all())))
        return out
