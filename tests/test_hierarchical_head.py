"""The factorised semantic -> pixel head and embedding, alone and inside LlamaGen's GPT through
the launcher (stand-in LlamaGen modules of conftest, or a checkout at $LLAMAGEN_PATH)."""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from tiny_gpt import TinyGPT

from semhitok_llamagen.factorised import HeadOptions, factorise, take_head_options
from semhitok_plugin import load_model
from semhitok_plugin.hierarchical_head import FactorisedEmbedding, FactorisedHead
from semhitok_plugin.ids import TokenIdError
from semhitok_plugin.samples import sample_photo

K, M, DIM, RANK = 5, 3, 16, 4


def random_head(k: int = K, m: int = M, seed: int = 0) -> FactorisedHead:
    """A head with every parameter random (a fresh one is uniform), in float64."""
    torch.manual_seed(seed)
    head = FactorisedHead(DIM, k, m, rank=RANK).double()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    return head.requires_grad_(False)


@pytest.fixture
def head():
    return random_head()


@pytest.fixture
def h():
    return torch.randn(6, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# -- exact likelihood ----------------------------------------------------------------------------
def test_probabilities_of_all_ids_sum_to_one(head, h):
    log_probs = head.full_log_probs(h)
    assert log_probs.shape == (6, K * M) and log_probs.dtype == torch.float64
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-12)


def test_log_prob_of_every_id_is_the_full_table_gathered(head, h):
    every = torch.arange(K * M)
    rows = h[:, None].expand(-1, K * M, -1)  # each hidden state with each flat id
    got = head.log_prob(rows, every.expand(6, -1))
    assert got.shape == (6, K * M)
    assert torch.allclose(got, head.full_log_probs(h), atol=1e-12)


def test_loss_is_the_cross_entropy_of_the_full_table(head, h):
    targets = torch.tensor([0, 14, 7, 3, 9, 12])
    expected = F.cross_entropy(head.full_log_probs(h), targets)
    assert torch.allclose(head.loss(h, targets), expected, atol=1e-12)
    # the factorisation: log p(sem) + log p(pix | sem)
    sem, pix = targets // M, targets % M
    by_level = (
        head.sem_logits(h).log_softmax(-1).gather(-1, sem[:, None])[:, 0]
        + head.pix_logits(h, sem).log_softmax(-1).gather(-1, pix[:, None])[:, 0]
    )
    assert torch.allclose(head.log_prob(h, targets), by_level, atol=1e-12)


def test_a_fresh_head_is_uniform():
    fresh = FactorisedHead(DIM, K, M, rank=RANK)
    loss = fresh.loss(torch.randn(4, DIM), torch.tensor([0, 1, 2, 14]))
    assert loss.item() == pytest.approx(math.log(K * M), abs=1e-6)


# -- sampling ------------------------------------------------------------------------------------
def test_sampling_frequencies_match_the_distribution(head, h):
    n = 60_000
    drawn = head.sample(h[:1].expand(n, -1), generator=torch.Generator().manual_seed(0))
    expected = head.full_log_probs(h[:1])[0].exp()
    counts = torch.bincount(drawn.ids, minlength=K * M).double()
    assert chisquare(counts.numpy(), (expected * n).numpy()).pvalue > 1e-3
    assert 0.5 * (counts / n - expected).abs().sum() < 0.01  # total variation
    assert torch.allclose(drawn.prob, expected[drawn.ids], atol=1e-12)


def test_guided_tempered_sampling_follows_the_documented_per_level_rule(head, h):
    """sem ~ softmax((s_u + (s_c - s_u)·cfg) / T), then pix ~ the same rule at the pixel level of
    that sem for both streams."""
    n, cfg, temp = 60_000, 2.5, 0.7
    cond, uncond = h[:1], h[1:2]
    drawn = head.sample(
        cond.expand(n, -1),
        uncond.expand(n, -1),
        cfg_scale=cfg,
        temperature=temp,
        generator=torch.Generator().manual_seed(0),
    )
    s_c, s_u = head.sem_logits(cond)[0], head.sem_logits(uncond)[0]
    p_sem = ((s_u + (s_c - s_u) * cfg) / temp).softmax(-1)
    every = torch.arange(K)
    p_c = head.pix_logits(cond.expand(K, -1), every)
    p_u = head.pix_logits(uncond.expand(K, -1), every)
    p_pix = ((p_u + (p_c - p_u) * cfg) / temp).softmax(-1)
    expected = (p_sem[:, None] * p_pix).flatten()
    counts = torch.bincount(drawn.ids, minlength=K * M).double()
    assert chisquare(counts.numpy(), (expected * n).numpy()).pvalue > 1e-3


def test_top_k_and_top_p_hold_at_each_level():
    head = random_head(k=50, m=12)
    h = torch.randn(4, DIM, dtype=torch.float64)
    rows = h.repeat_interleave(500, dim=0)
    for top_k in (1, 3):
        drawn = head.sample(rows, top_k=top_k, generator=torch.Generator().manual_seed(0))
        sem, pix = drawn.ids // 12, drawn.ids % 12
        best_sem = head.sem_logits(rows).topk(top_k, dim=-1).indices
        assert (sem[:, None] == best_sem).any(-1).all()
        best_pix = head.pix_logits(rows, sem).topk(top_k, dim=-1).indices
        assert (pix[:, None] == best_pix).any(-1).all()
        assert len(drawn.ids.unique()) <= 4 * top_k**2
    # top-p: only the smallest set of best semantic codes holding 0.5 of the mass
    drawn = head.sample(rows, top_p=0.5, generator=torch.Generator().manual_seed(0))
    probs, order = head.sem_logits(rows).softmax(-1).sort(dim=-1, descending=True)
    nucleus = (probs.cumsum(-1) - probs) < 0.5
    rank = (order == (drawn.ids // 12)[:, None]).int().argmax(-1)
    assert nucleus.gather(-1, rank[:, None]).all()


def test_greedy_takes_the_best_semantic_code_then_its_best_pixel_code(head, h):
    ids = head.sample(h, greedy=True).ids
    sem = head.sem_logits(h).argmax(-1)
    assert torch.equal(ids, sem * M + head.pix_logits(h, sem).argmax(-1))


def test_guided_sampling_is_reproducible_and_both_streams_share_the_semantic_id(
    head, h, monkeypatch
):
    cond, uncond = h[:3], h[3:]
    kwargs = dict(cfg_scale=4.0, top_k=3, temperature=0.9)
    first = head.sample(cond, uncond, generator=torch.Generator().manual_seed(7), **kwargs)
    again = head.sample(cond, uncond, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(first.ids, again.ids) and torch.equal(first.prob, again.prob)
    seen = []
    pix_logits = head.pix_logits
    monkeypatch.setattr(head, "pix_logits", lambda x, sem: seen.append(sem) or pix_logits(x, sem))
    drawn = head.sample(cond, uncond, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(drawn.ids, first.ids)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # conditional, unconditional
    assert torch.equal(seen[0], first.ids // M)


# -- embedding, ids, checkpoints -----------------------------------------------------------------
def test_the_embedding_gives_every_flat_id_its_own_vector():
    embed = FactorisedEmbedding(DIM, K, M, rank=RANK)
    vectors = embed(torch.arange(K * M, dtype=torch.int32))
    assert vectors.shape == (K * M, DIM)
    assert torch.cdist(vectors, vectors).add(torch.eye(K * M)).min() > 0
    # the semantic part is shared by the m ids of a code
    sem_part = embed.sem.weight.repeat_interleave(M, dim=0)
    assert torch.allclose(vectors - sem_part, embed.pix_proj(embed.pix.weight))


@pytest.mark.parametrize("bad", [15, -1])
def test_out_of_range_ids_raise_naming_the_id(head, h, bad):
    targets = torch.tensor([0, 1, bad, 2, 3, 4])
    for call in (
        lambda: head.log_prob(h, targets),
        lambda: head.loss(h, targets),
        lambda: FactorisedEmbedding(DIM, K, M, rank=RANK)(targets),
    ):
        with pytest.raises(
            TokenIdError, match=rf"contains {bad}, outside the valid range \[0, 15\)"
        ):
            call()
    with pytest.raises(TokenIdError, match="float"):
        head.log_prob(h, targets.float())


def test_checkpoints_round_trip(head, h, tmp_path):
    embed = FactorisedEmbedding(DIM, K, M, rank=RANK).double()
    torch.save({"head": head.state_dict(), "embed": embed.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    head2 = FactorisedHead(DIM, K, M, rank=RANK).double()
    embed2 = FactorisedEmbedding(DIM, K, M, rank=RANK).double()
    head2.load_state_dict(state["head"])
    embed2.load_state_dict(state["embed"])
    assert torch.equal(head2.full_log_probs(h), head.full_log_probs(h))
    ids = torch.arange(K * M)
    assert torch.equal(embed2(ids), embed(ids))


# -- LlamaGen's GPT ------------------------------------------------------------------------------
class CachedTinyGPT(TinyGPT):
    """TinyGPT behind upstream ``Transformer.forward(idx, cond_idx, input_pos, targets, mask,
    valid)`` and ``setup_caches``, as ``generate`` calls them. A cache of the tokens seen stands in
    for the KV cache: each call recomputes the whole (tiny) sequence and returns the positions of
    ``input_pos``, which is what a KV cache returns."""

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype) -> None:
        self.seen = None

    def forward(self, idx, cond_idx, input_pos=None, targets=None, mask=None, valid=None):
        if input_pos is None:  # training
            return super().forward(idx=idx, cond_idx=cond_idx, targets=targets)
        if cond_idx is not None:  # prefill
            self.seen = (cond_idx, torch.empty(len(cond_idx), 0, dtype=torch.long))
        else:
            cond, tokens = self.seen
            self.seen = (cond, torch.cat([tokens, idx.long()], dim=1))
        logits, _ = super().forward(idx=self.seen[1], cond_idx=self.seen[0])
        return logits[:, -len(input_pos) :], None


def tiny_gpt(vocab_size: int, options: HeadOptions | None = None) -> CachedTinyGPT:
    torch.manual_seed(0)
    model = CachedTinyGPT(vocab_size, 64, num_classes=2, dim=64, n_layer=2, n_head=4)
    return factorise(model, options) if options else model


def test_launcher_options_come_before_the_script():
    assert take_head_options(["train.py", "--semhitok-head", "x"]) == (
        None,
        ["train.py", "--semhitok-head", "x"],
    )
    options, rest = take_head_options(
        ["--semhitok-head", "factorised", "--semhitok-sub-codebook-size=4", "t.py", "--lr", "1"]
    )
    assert options == HeadOptions(sub_codebook_size=4) and rest == ["t.py", "--lr", "1"]
    assert take_head_options(["--semhitok-head=flat", "t.py"]) == (None, ["t.py"])
    with pytest.raises(SystemExit):
        take_head_options(["--semhitok-heads", "factorised", "t.py"])
    with pytest.raises(SystemExit):
        take_head_options(["--semhitok-head", "hierarchical", "t.py"])


def test_the_factorised_gpts_loss_is_its_exact_likelihood():
    model = tiny_gpt(256, HeadOptions(sub_codebook_size=4, rank=8))
    assert type(model.tok_embeddings).__name__ == "LlamaGenFactorisedEmbedding"
    z = torch.randint(0, 256, (3, 64))
    c = torch.tensor([0, 1, 0])
    model.eval()
    hidden, loss = model(cond_idx=c, idx=z[:, :-1], targets=z)  # train_c2i.py's call
    assert hidden.shape == (3, 64, 64) and hidden.dtype == torch.float32  # dim-wide, not V-wide
    assert torch.allclose(loss, model.output.loss(hidden, z))
    assert loss.item() == pytest.approx(math.log(256), abs=1e-5)  # zero-initialised, as LlamaGen
    _, positional = model(z[:, :-1], c, None, z)
    assert torch.equal(positional, loss)
    valid = torch.tensor([True, False, True])  # t2i: sequences without a caption do not count
    _, masked = model(cond_idx=c, idx=z[:, :-1], targets=z, valid=valid)
    assert torch.allclose(masked, model.output.loss(hidden[valid], z[valid]))
    with pytest.raises(ValueError, match="not a multiple of --semhitok-sub-codebook-size 12"):
        tiny_gpt(256, HeadOptions())


def test_a_flat_checkpoint_does_not_load_into_a_factorised_gpt_even_unstrictly():
    flat = tiny_gpt(256).state_dict()
    model = tiny_gpt(256, HeadOptions(sub_codebook_size=4))
    with pytest.raises(RuntimeError, match="flat-head checkpoint"):
        model.load_state_dict(flat, strict=False)  # as sample_c2i.py loads
    again = tiny_gpt(256, HeadOptions(sub_codebook_size=4))
    again.load_state_dict(model.state_dict())
    z = torch.randint(0, 256, (2, 64))
    model.eval(), again.eval()
    assert torch.equal(
        model(cond_idx=z[:, 0] % 2, idx=z[:, :-1], targets=z)[1],
        again(cond_idx=z[:, 0] % 2, idx=z[:, :-1], targets=z)[1],
    )


TRAIN_AND_SAMPLE = """
    # the calls of autoregressive/train/train_c2i.py and sample/sample_c2i.py, on a tiny GPT
    import argparse, json
    import torch
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models
    from dataset.build import build_dataset
    parser = argparse.ArgumentParser()
    for flag in ("--code-path", "--gpt-model", "--out"):
        parser.add_argument(flag)
    parser.add_argument("--image-size", type=int, choices=[256, 384, 448, 512])
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--dataset", default="imagenet_code")
    args = parser.parse_args()
    dataset = build_dataset(args)
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(dataset), shuffle=True)
    model = GPT_models[args.gpt_model](
        vocab_size=args.vocab_size, block_size=64, num_classes=2, cls_token_num=1,
        model_type="c2i")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(300):
        for x, y in loader:
            z_indices, c_indices = x.reshape(x.shape[0], -1), y.reshape(-1)
            _, loss = model(cond_idx=c_indices, idx=z_indices[:, :-1], targets=z_indices)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    torch.manual_seed(0)
    kw = dict(cfg_scale=2.0, cfg_interval=-1, temperature=1.0, top_k=20, top_p=1.0)
    sampled = generate(model, torch.tensor([0, 1]), 64, sample_logits=True, **kw)
    greedy = generate(model, torch.tensor([0, 1]), 64, sample_logits=False, **kw)
    json.dump(dict(losses=losses, sampled=sampled.tolist(), dtype=str(sampled.dtype),
                   greedy=greedy.tolist(), head=type(model.output).__name__),
              open(args.out, "w"))
    """


@pytest.mark.slow
def test_a_factorised_gpt_trains_and_samples_on_semhitok_codes_through_the_launcher(
    llamagen_root, tmp_path, monkeypatch
):
    from semhitok_llamagen import run
    from semhitok_llamagen.dataset import code_dirs
    from semhitok_llamagen.extract import extract

    images = tmp_path / "images"
    for cls, names in {"a": ("astronaut", "coffee"), "b": ("chelsea", "rocket")}.items():
        (images / cls).mkdir(parents=True)
        for name in names:
            sample_photo(name).save(images / cls / f"{name}.png")
    codes = tmp_path / "codes_flip"
    extract(load_model("tiny"), images, codes, progress=False)  # K = 64, m = 4: 256 ids
    script = tmp_path / "train_and_sample.py"
    script.write_text(textwrap.dedent(TRAIN_AND_SAMPLE))

    import autoregressive.models.gpt as gpt

    monkeypatch.setitem(gpt.GPT_models, "GPT-test", lambda **kw: tiny_gpt(kw["vocab_size"]))
    monkeypatch.setattr(  # the launcher relaxes LlamaGen's argparse choices process-wide
        argparse._ActionsContainer, "add_argument", argparse._ActionsContainer.add_argument
    )
    monkeypatch.chdir(llamagen_root)
    monkeypatch.setattr("sys.argv", ["run"])
    out = tmp_path / "out.json"
    args = ["--code-path", str(codes), "--image-size", "64", "--gpt-model", "GPT-test"]
    launcher = ["--semhitok-head", "factorised", "--semhitok-sub-codebook-size", "4"]
    run.main([*launcher, str(script), *args, "--vocab-size", "256", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["head"] == "LlamaGenFactorisedHead"
    losses = result["losses"]
    assert losses[0] == pytest.approx(math.log(256), abs=1e-4)  # uniform start
    assert np.mean(losses[-5:]) < 0.1 * losses[0], losses[::10]
    sampled = np.array(result["sampled"])
    assert sampled.shape == (2, 64) and result["dtype"] == "torch.int32"
    assert sampled.min() >= 0 and sampled.max() < 256
    # greedy per level, class-guided: each class reproduces one of its own training sequences
    # (an image or its flip)
    codes_dir, labels_dir = code_dirs(codes, 64)
    train = [
        (np.load(labels_dir / f"{i}.npy")[0], np.load(codes_dir / f"{i}.npy")[0]) for i in range(4)
    ]
    for label, row in enumerate(result["greedy"]):
        agreement = max(np.mean(row == seq) for y, aug in train if y == label for seq in aug)
        assert agreement > 0.9, (label, agreement)


# -- the unified Qwen MLLM -------------------------------------------------------------------------
T2I = [
    {"role": "user", "content": "a photo of a cat"},
    {"role": "assistant", "content": "<image>"},
]


@pytest.fixture(scope="module")
def qwen_world(tmp_path_factory):
    """A tiny Qwen2 extended by the tiny preset (K = 64, m = 4) with the factorised image head."""
    from semhitok_fixtures.tiny_qwen import save_tiny_qwen
    from semhitok_plugin import SemHiTok, get_preset
    from semhitok_qwen import build_unified, save_unified
    from semhitok_qwen.data import write_sample_jsonl

    root = tmp_path_factory.mktemp("factorised_mllm")
    qwen = save_tiny_qwen(root / "qwen")
    torch.manual_seed(0)
    tokenizer = SemHiTok(get_preset("tiny")).eval()
    model, processor = build_unified(qwen, tokenizer, image_head="factorised")
    save_unified(model, processor, root / "model")
    return SimpleNamespace(root=root, model=root / "model", data=write_sample_jsonl(root / "data"))


def test_qwen_scores_text_and_image_ids_in_one_exact_distribution(qwen_world):
    from semhitok_qwen import IGNORE_INDEX, load_unified
    from semhitok_qwen.train import token_losses

    model, processor = load_unified(qwen_world.model)
    vocab, text = model.image_vocab, model.config.text_vocab_size
    ids, labels = processor.tokenize_chat(T2I, [sample_photo("chelsea")])
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    with torch.no_grad():
        out = model(ids)
        assert out.logits.shape == (1, ids.shape[1], text + 64)  # text ids, then K semantic ids
        first, pixel = model.image_targets(out.hidden_states[-1], labels)
        losses, targets = token_losses(out.logits, first)
        losses = losses + pixel
        # the joint next-token distribution over all text + K·m ids, built level by level
        h = out.hidden_states[-1][0, :-1]
        first_lp = out.logits[0, :-1].float().log_softmax(-1)
        every = torch.arange(64).expand(len(h), -1)
        pix_lp = model.image_head.pix_logits(h[:, None].expand(-1, 64, -1), every).log_softmax(-1)
        joint = torch.cat([first_lp[:, :text], (first_lp[:, text:, None] + pix_lp).flatten(1)], 1)
    assert joint.shape[1] == model.config.vocab_size
    torch.testing.assert_close(joint.exp().sum(-1), torch.ones(len(h)), rtol=0, atol=1e-5)
    labelled = labels[0, 1:] != IGNORE_INDEX
    assert vocab.contains(labels[0, 1:]).sum() == 64  # the 8 × 8 image ids are targets
    exact = -joint[labelled].gather(-1, labels[0, 1:][labelled, None])[:, 0]
    torch.testing.assert_close(losses[0][labelled], exact, rtol=0, atol=1e-5)
    assert torch.equal(targets[0][labelled] >= text, vocab.contains(labels[0, 1:])[labelled])
    with pytest.raises(ValueError, match="image_targets"):
        model(ids, labels=labels)


def test_qwen_trains_through_the_factorised_head_and_reloads(qwen_world):
    from semhitok_qwen import load_unified
    from semhitok_qwen.data import Collator, UnifiedDataset, read_jsonl
    from semhitok_qwen.train import add_arguments, build_trainer

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = qwen_world.root / "trained"
    flags = f"--model {qwen_world.model} --data {qwen_world.data} --output-dir {out}"
    flags += " --max-steps 8 --batch-size 4 --grad-accum 1 --lr 3e-3 --num-workers 0"
    flags += " --logging-steps 2 --save-steps 8 --seed 0 --report-to none"
    trainer = build_trainer(parser.parse_args(flags.split()))
    _, processor = load_unified(qwen_world.model)
    dataset = UnifiedDataset(read_jsonl([qwen_world.data]), processor, cfg_dropout=0.0)
    batch = Collator(processor.pad_token_id)([dataset[i] for i in range(len(dataset))])

    def eval_loss() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, dict(batch)).item()

    before = eval_loss()
    trainer.train()
    after = eval_loss()
    assert after < before - 0.05, (before, after)
    logged = [row for row in trainer.state.log_history if "image_loss" in row]
    assert logged and all(math.isfinite(row["image_loss"]) for row in logged)
    trainer.save_model()
    reloaded, _ = load_unified(out)
    assert reloaded.config.image_head == "factorised"
    ids = batch["input_ids"][:1]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, trainer.model.eval()(ids).logits)


def test_qwen_samples_images_level_by_level_with_one_semantic_id_per_stream_pair(
    qwen_world, monkeypatch
):
    from semhitok_qwen import load_unified
    from semhitok_qwen.generation import generate_image

    model, processor = load_unified(qwen_world.model)
    kwargs = dict(cfg_scale=3.0, top_k=5, seed=3, decode=False)
    ids = generate_image(model, processor, ["a cat", "a rocket"], **kwargs).ids
    assert ids.shape == (2, 8, 8) and ids.min() >= 0 and ids.max() < model.image_vocab.size
    assert torch.equal(generate_image(model, processor, ["a cat", "a rocket"], **kwargs).ids, ids)
    with pytest.raises(ValueError, match="no flat image logits"):
        model.image_logits(torch.zeros(1, model.config.hidden_size))
    seen = []
    pix_logits = model.image_head.pix_logits
    monkeypatch.setattr(
        model.image_head, "pix_logits", lambda h, sem: seen.append(sem) or pix_logits(h, sem)
    )
    again = generate_image(model, processor, ["a cat", "a rocket"], **kwargs).ids
    assert torch.equal(again, ids) and len(seen) == 2 * 64
    for cond_sem, uncond_sem in zip(seen[::2], seen[1::2], strict=True):
        assert torch.equal(cond_sem, uncond_sem)
    assert torch.equal(torch.stack(seen[::2], 1).view(2, 8, 8), ids // 4)
