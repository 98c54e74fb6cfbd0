"""LlamaGen's GPT with SemHiTok's factorised (semantic -> pixel) head and input embedding.

``python -m semhitok_llamagen.run --semhitok-head factorised [--semhitok-sub-codebook-size 12]
[--semhitok-head-rank 32] SCRIPT ARGS`` runs LlamaGen's ``train_c2i.py`` / ``sample_c2i.py``
(and the t2i ones) unchanged on disk with a GPT whose ``tok_embeddings`` and ``output`` are
:class:`~semhitok_plugin.hierarchical_head.FactorisedEmbedding` and
:class:`~semhitok_plugin.hierarchical_head.FactorisedHead` over ``--vocab-size`` /
``--codebook-size`` = K·m ids. What the launcher patches (FoundationVision/LlamaGen 5a50452d):

* ``autoregressive.models.gpt.GPT_models``: every factory builds its ``Transformer`` as before,
  then :func:`factorise` swaps the two modules and wraps the model's ``forward``.
* ``Transformer.forward`` ends with ``logits = self.output(h).float()`` (sliced to the image
  positions in training) and ``F.cross_entropy(logits, targets)``. The factorised ``output``
  passes ``h`` through, so the first value the wrapped ``forward`` returns is the final hidden
  state (after the norm, float32), not K·m logits: the cheapest thing that still carries
  everything (the head's logits are functions of it). ``loss`` is the factorised NLL in nats per
  token, the same quantity as the flat cross-entropy, with t2i's ``valid`` weighting.
* ``autoregressive.models.generate``: ``prefill`` and ``decode_one_token`` (which mix
  conditional/unconditional logits and call ``sample``) run the per-level sampler
  :meth:`FactorisedHead.sample` instead, for factorised models only: one semantic id drawn from
  guided semantic logits, then the pixel id from guided pixel logits of that same semantic id
  in both streams. ``temperature``, ``top_k`` (capped at each level's size) and ``top_p`` apply
  at both levels; ``sample_logits=False`` is greedy per level; ``cfg_interval`` is honoured.
  The probabilities they return (collected and dropped by ``generate``) are each sampled id's
  probability, ``(B, 1)``, instead of ``(B, V)`` rows.

Checkpoints hold ``tok_embeddings.{sem,pix,pix_proj}`` and ``output.{sem,pix_proj,pix_readout,
pix_bias}``: sample with the same launcher flags as training. ``sample_c2i.py`` loads with
``strict=False``, which would leave a mismatch silent, so loading a flat checkpoint into a
factorised GPT raises.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import types
from dataclasses import dataclass

import torch
from torch import nn

from semhitok_plugin.hierarchical_head import (
    DEFAULT_RANK,
    FactorisedEmbedding,
    FactorisedHead,
)

HEAD_CHOICES = ("flat", "factorised")
OPTIONS = ("--semhitok-head", "--semhitok-sub-codebook-size", "--semhitok-head-rank")
PAPER_SUB_CODEBOOK_SIZE = 12


@dataclass(frozen=True)
class HeadOptions:
    """What the launcher's ``--semhitok-*`` options ask for (``None`` means the flat head)."""

    sub_codebook_size: int = PAPER_SUB_CODEBOOK_SIZE
    rank: int = DEFAULT_RANK


def _option_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m semhitok_llamagen.run", usage="%(prog)s [--semhitok-* ...] SCRIPT ARGS"
    )
    parser.add_argument("--semhitok-head", choices=HEAD_CHOICES, default="flat")
    parser.add_argument(
        "--semhitok-sub-codebook-size",
        type=int,
        default=PAPER_SUB_CODEBOOK_SIZE,
        help="m, pixel codes per semantic code (the tokenizer's; vocabulary = K·m)",
    )
    parser.add_argument("--semhitok-head-rank", type=int, default=DEFAULT_RANK)
    return parser


def take_head_options(argv: list[str]) -> tuple[HeadOptions | None, list[str]]:
    """Split the launcher's own ``--semhitok-*`` options (before the script path) from
    ``SCRIPT ARGS``; the options are ``None`` for the flat head."""
    parser = _option_parser()
    end = 0
    while end < len(argv) and argv[end].startswith("--semhitok-"):
        name = argv[end].split("=", 1)[0]
        if name not in OPTIONS:
            parser.error(f"unknown launcher option {name} (choose from {', '.join(OPTIONS)})")
        end += 1 if "=" in argv[end] else 2
    options = parser.parse_args(argv[:end])
    if options.semhitok_sub_codebook_size < 1 or options.semhitok_head_rank < 1:
        parser.error("--semhitok-sub-codebook-size and --semhitok-head-rank must be positive")
    if options.semhitok_head == "flat":
        return None, argv[end:]
    return HeadOptions(options.semhitok_sub_codebook_size, options.semhitok_head_rank), argv[end:]


class LlamaGenFactorisedEmbedding(FactorisedEmbedding):
    """``tok_embeddings`` of a factorised GPT."""

    @property
    def weight(self) -> torch.Tensor:
        """The semantic table: ``generate`` reads ``model.tok_embeddings.weight.dtype`` to
        allocate the KV cache."""
        return self.sem.weight


class LlamaGenFactorisedHead(FactorisedHead):
    """``output`` of a factorised GPT: called as ``self.output(h)`` by ``Transformer.forward``,
    it returns ``h``; the wrapped ``forward`` and the patched sampler apply the head."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h


def is_factorised(model: nn.Module) -> bool:
    """Whether ``model`` (or the module ``torch.compile`` wrapped) has the factorised head."""
    return isinstance(getattr(model, "output", None), LlamaGenFactorisedHead)


def factorise(model: nn.Module, options: HeadOptions) -> nn.Module:
    """Give a built LlamaGen GPT (``tok_embeddings``, ``output``, ``vocab_size``, ``forward``
    returning ``(logits, loss)``) the factorised embedding and head, in place."""
    m = options.sub_codebook_size
    if model.vocab_size % m:
        raise ValueError(
            f"the GPT's vocab_size {model.vocab_size} is not a multiple of "
            f"--semhitok-sub-codebook-size {m} (the vocabulary must be K·m)"
        )
    table = model.tok_embeddings.weight
    # the new embedding starts at the scale of the table it replaces (LlamaGen: 0.02)
    dim, std = table.shape[1], float(table.detach().float().std())
    device, dtype = table.device, table.dtype
    k = model.vocab_size // m
    model.tok_embeddings = LlamaGenFactorisedEmbedding(dim, k, m, options.rank, std)
    model.output = LlamaGenFactorisedHead(dim, k, m, options.rank)
    model.tok_embeddings.to(device, dtype)
    model.output.to(device, dtype)
    for module in (model.tok_embeddings, model.output):
        module.register_load_state_dict_pre_hook(_refuse_flat_weights)
    model.forward = types.MethodType(_factorised_forward(type(model).forward), model)
    return model


def _refuse_flat_weights(module, state_dict, prefix, *args) -> None:
    """A flat checkpoint (``tok_embeddings.weight`` / ``output.weight``) into a factorised GPT:
    an error, also under ``strict=False``."""
    error_msgs = args[-1]
    if prefix + "weight" in state_dict:
        error_msgs.append(
            f"{prefix}weight: a flat-head checkpoint, but this GPT has SemHiTok's factorised "
            "head (--semhitok-head factorised); load it without that launcher option"
        )


def _factorised_forward(forward):
    """``forward`` with ``targets`` / ``valid`` taken out and the factorised NLL as the loss.

    Where ``targets`` and ``valid`` sit among the positional parameters is read once here, so
    the wrapper itself stays traceable by ``torch.compile``."""
    params = list(inspect.signature(forward).parameters)[1:]  # without self
    positions = {name: params.index(name) for name in ("targets", "valid") if name in params}

    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        args, taken = list(args), {}
        for name, pos in positions.items():  # the flat loss is skipped: both become None
            if pos < len(args):
                taken[name], args[pos] = args[pos], None
            else:
                taken[name] = kwargs.pop(name, None)
        targets, valid = taken.get("targets"), taken.get("valid")
        hidden, _ = forward(self, *args, **kwargs)
        if targets is None:
            return hidden, None
        nll = -self.output.log_prob(hidden, targets)
        if valid is None:
            return hidden, nll.mean()
        weight = valid[:, None].to(nll.dtype).expand_as(nll)  # t2i: one flag per sequence
        return hidden, (nll * weight).sum() / weight.sum().clamp(min=1)

    return wrapped


def _sample(model, hidden, cfg_scale, cfg_flag, **sampling_kwargs):
    """``generate.sample``'s contract per level: ``(ids (B, 1), probs (B, 1))`` from the last
    position's hidden states, stacked ``[cond; uncond]`` when ``cfg_scale > 1``."""
    h, uncond = hidden[:, -1], None
    if cfg_scale > 1.0:
        h, uncond = h.chunk(2)
        if not cfg_flag:
            uncond = None
    drawn = model.output.sample(
        h,
        uncond,
        cfg_scale=cfg_scale,
        temperature=sampling_kwargs.get("temperature", 1.0),
        top_k=sampling_kwargs.get("top_k") or 0,
        top_p=sampling_kwargs.get("top_p", 1.0),
        greedy=not sampling_kwargs.get("sample_logits", True),
    )
    return drawn.ids[:, None], drawn.prob[:, None]


def _patch_generate() -> None:
    """Route ``generate.prefill`` / ``generate.decode_one_token`` of factorised models to the
    per-level sampler (``generate`` and ``decode_n_tokens`` look both up at call time)."""
    try:
        gen = importlib.import_module("autoregressive.models.generate")
    except ImportError:
        return
    if getattr(gen.prefill, "_semhitok_factorised", False):
        return
    prefill, decode_one_token = gen.prefill, gen.decode_one_token

    @functools.wraps(prefill)
    def factorised_prefill(model, cond_idx, input_pos, cfg_scale, **sampling_kwargs):
        if not is_factorised(model):
            return prefill(model, cond_idx, input_pos, cfg_scale, **sampling_kwargs)
        hidden, _ = model(None, cond_idx, input_pos)
        return _sample(model, hidden, cfg_scale, True, **sampling_kwargs)[0]

    @functools.wraps(decode_one_token)
    def factorised_decode_one_token(model, x, input_pos, cfg_scale, cfg_flag, **sampling_kwargs):
        if not is_factorised(model):
            return decode_one_token(model, x, input_pos, cfg_scale, cfg_flag, **sampling_kwargs)
        if cfg_scale > 1.0:
            x = torch.cat([x, x])
        hidden, _ = model(x, cond_idx=None, input_pos=input_pos)
        return _sample(model, hidden, cfg_scale, cfg_flag, **sampling_kwargs)

    factorised_prefill._semhitok_factorised = True
    gen.prefill, gen.decode_one_token = factorised_prefill, factorised_decode_one_token


def use_factorised_head(options: HeadOptions) -> None:
    """Make every ``GPT_models`` factory build factorised GPTs and ``generate`` sample them per
    level (nothing to do in a LlamaGen without ``autoregressive.models``)."""
    try:
        gpt = importlib.import_module("autoregressive.models.gpt")
    except ImportError:
        return
    for name, factory in list(gpt.GPT_models.items()):
        if not getattr(factory, "_semhitok_factorised", False):
            gpt.GPT_models[name] = _factorising(factory, options)
    _patch_generate()


def _factorising(factory, options: HeadOptions):
    @functools.wraps(factory)
    def build(**kwargs):
        return factorise(factory(**kwargs), options)

    build._semhitok_factorised = True
    return build


__all__ = [
    "HeadOptions",
    "LlamaGenFactorisedEmbedding",
    "LlamaGenFactorisedHead",
    "factorise",
    "is_factorised",
    "take_head_options",
    "use_factorised_head",
]
