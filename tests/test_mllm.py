"""The unified MLLM (paper §3.3): vocabulary extension, processor, persistence, image sampling.

A tiny random Qwen2 with a real byte-level BPE tokenizer is extended by the ``tiny`` SemHiTok
preset (64 × 4 = 256 image ids, 8 × 8 tokens per 64 px image); inputs are real photos.
"""

import functools

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from semhitok_fixtures.tiny_qwen import save_tiny_qwen, save_tiny_unified
from semhitok_plugin import CheckpointMismatchError, SemHiTok, TokenIdError, get_preset, load_model
from semhitok_plugin.samples import sample_photo
from semhitok_qwen import (
    IGNORE_INDEX,
    IMAGE_END,
    IMAGE_START,
    ImageVocabulary,
    SemHiTokQwen2ForCausalLM,
    build_unified,
    load_unified,
    save_unified,
)
from semhitok_qwen.generation import chat, generate_image, sample_next

VQA = [
    {"role": "user", "content": "<image>\nWhat is in the picture?"},
    {"role": "assistant", "content": "a cat"},
]
T2I = [
    {"role": "user", "content": "a photo of a cat"},
    {"role": "assistant", "content": "<image>"},
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return save_tiny_unified(tmp_path_factory.mktemp("mllm"))


@pytest.fixture(scope="module")
def unified(world):
    return load_unified(world)


@pytest.fixture(scope="module")
def qwen(world):
    return AutoModelForCausalLM.from_pretrained(world / "qwen").eval()


# -- vocabulary -----------------------------------------------------------------------------------
def test_flat_ids_round_trip_through_llm_token_ids(unified):
    model, processor = unified
    vocab = model.image_vocab
    flat = torch.arange(vocab.size)
    tokens = vocab.to_tokens(flat)
    assert tokens.min() == model.config.text_vocab_size
    assert tokens.max() == model.config.vocab_size - 1
    assert torch.equal(vocab.to_flat(tokens), flat)
    assert vocab.size == processor.image_tokenizer.vocab_size == 64 * 4


def test_out_of_range_ids_are_refused_naming_the_range():
    vocab = ImageVocabulary(offset=100, size=10)
    with pytest.raises(TokenIdError, match=r"\[0, 10\)"):
        vocab.to_tokens(torch.tensor([10]))
    with pytest.raises(TokenIdError, match=r"\[100, 110\)"):
        vocab.to_flat(torch.tensor([99]))


def test_the_head_image_slice_is_exactly_k_times_m_wide(unified):
    model, _ = unified
    k_m = model.image_vocab.size
    assert model.lm_head.weight.shape[0] == model.config.text_vocab_size + k_m
    hidden = torch.randn(3, model.config.hidden_size)
    sliced = model.image_logits(hidden)
    assert sliced.shape == (3, k_m)
    torch.testing.assert_close(sliced, model.lm_head(hidden)[:, -k_m:])


def test_text_ids_and_text_logits_are_unchanged_by_the_extension(world, unified, qwen):
    model, processor = unified
    original = AutoTokenizer.from_pretrained(world / "qwen")
    text = "a photo of a cat on a red sofa"
    ids = original(text, return_tensors="pt").input_ids
    assert torch.equal(processor.tokenizer(text, return_tensors="pt").input_ids, ids)
    n = len(original)  # the original tokens; the markers take the next (padding) rows
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :n], qwen(ids).logits[..., :n])


def test_marker_rows_start_at_the_mean_trained_row(unified, qwen):
    model, processor = unified
    markers = [processor.image_start_id, processor.image_end_id]
    for mine, theirs in (
        (model.model.embed_tokens.weight, qwen.get_input_embeddings().weight),
        (model.lm_head.weight, qwen.get_output_embeddings().weight),
    ):
        expected = theirs[: min(markers)].mean(0).expand(2, -1)
        torch.testing.assert_close(mine[markers], expected)


def test_generate_knows_only_the_last_position_needs_logits(unified):
    model, _ = unified
    ids = torch.tensor([[5, 6, 7, 8]])
    seen, forward = [], model.forward

    @functools.wraps(forward)  # generate reads forward's signature
    def recording(*args, **kwargs):
        seen.append(kwargs.get("num_logits_to_keep"))
        return forward(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(model, "forward", recording)
        model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert seen == [1, 1]  # transformers' generate asks for the last position's logits only
    with torch.no_grad():
        last = model(ids, num_logits_to_keep=1).logits
        torch.testing.assert_close(last, model(ids).logits[:, -1:])


def test_markers_are_single_special_tokens_below_the_image_range(unified):
    model, processor = unified
    for marker, expected in ((IMAGE_START, model.config.image_start_id), (IMAGE_END, None)):
        ids = processor.tokenizer(marker, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] < model.config.text_vocab_size
        assert expected is None or ids[0] == expected


def test_turns_end_at_im_end_even_for_a_base_qwen(tmp_path):
    """A base Qwen2.5's eos is <|endoftext|>; the chat template ends turns with <|im_end|>."""
    qwen = save_tiny_qwen(tmp_path / "qwen")
    tokenizer = AutoTokenizer.from_pretrained(qwen)
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.save_pretrained(qwen)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id).save_pretrained(qwen)
    torch.manual_seed(0)
    model, processor = build_unified(qwen, SemHiTok(get_preset("tiny")))
    save_unified(model, processor, tmp_path / "mllm")
    reloaded, _ = load_unified(tmp_path / "mllm")
    expected = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert sorted(reloaded.generation_config.eos_token_id) == sorted(expected)


# -- image inputs ---------------------------------------------------------------------------------
def test_image_tokens_enter_through_the_dual_mlp_on_semhitok_features(unified):
    model, processor = unified
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    out = processor.image_tokenizer.encode(pixels)
    tokens = model.image_vocab.to_tokens(out.flat_ids.flatten(1))
    with torch.no_grad():
        embedded = model.embed(tokens)
        expected = model.image_embed.adapter(out.sem_features, out.pix_features)
    torch.testing.assert_close(embedded, expected, rtol=1e-5, atol=1e-6)


def test_a_mixed_sequence_embeds_text_by_table_and_images_by_adapter(unified):
    model, processor = unified
    ids, _ = processor.tokenize_chat(VQA[:1], [sample_photo("chelsea")])
    ids = torch.tensor([ids])
    image = model.image_vocab.contains(ids)
    assert int(image.sum()) == processor.num_image_tokens
    with torch.no_grad():
        embedded = model.embed(ids)
        table = model.model.embed_tokens(ids[~image])
    torch.testing.assert_close(embedded[~image], table)


# -- processor ------------------------------------------------------------------------------------
def test_chat_labels_cover_the_assistant_turn_only(unified):
    _, processor = unified
    ids, labels = processor.tokenize_chat(VQA, [sample_photo("chelsea")])
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert processor.tokenizer.decode(trained) == "a cat<|im_end|>\n"
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels, strict=True))


def test_a_generated_image_is_a_labelled_target(unified):
    model, processor = unified
    _, labels = processor.tokenize_chat(T2I, [sample_photo("chelsea")])
    labelled = torch.tensor([label for label in labels if label != IGNORE_INDEX])
    assert int(model.image_vocab.contains(labelled).sum()) == processor.num_image_tokens
    assert labelled[0] == model.config.image_start_id


def test_decode_returns_the_text_and_the_encoded_image(unified):
    _, processor = unified
    photo = sample_photo("astronaut")
    ids, _ = processor.tokenize_chat(VQA, [photo])
    decoded = processor.decode(ids)
    assert "<image>\nWhat is in the picture?" in decoded.text and "a cat" in decoded.text
    (expected,) = processor.encode_images([photo])
    assert torch.equal(decoded.image_ids[0], expected)
    assert decoded.images[0].size == (64, 64)


def test_placeholder_count_and_truncated_images_are_errors(unified):
    _, processor = unified
    with pytest.raises(ValueError, match="1 <image> placeholders but 0 images"):
        processor.tokenize_chat(VQA)
    ids, _ = processor.tokenize_chat(VQA, [sample_photo("coffee")])
    cut = ids[: ids.index(processor.image_start_id) + 5]
    with pytest.raises(ValueError, match=r"not 64 image ids closed by <\|image_end\|>"):
        processor.decode(cut)


# -- persistence ----------------------------------------------------------------------------------
def test_save_then_from_pretrained_reproduces_logits_exactly(unified, tmp_path):
    model, processor = unified
    ids, _ = processor.tokenize_chat(VQA, [sample_photo("rocket")])
    ids = torch.tensor([ids])
    model.save_pretrained(tmp_path)
    reloaded = SemHiTokQwen2ForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_a_bfloat16_load_keeps_fp32_codebooks_and_close_logits(world, unified):
    model, processor = unified
    half, _ = load_unified(world, torch_dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert half.image_embed.semantic_codes.dtype == torch.float32
    torch.testing.assert_close(half.image_embed.pixel_codes, model.image_embed.pixel_codes)
    ids = torch.tensor([processor.tokenize_chat(VQA, [sample_photo("rocket")])[0]])
    with torch.no_grad():
        torch.testing.assert_close(
            half(ids).logits.float(), model(ids).logits, atol=0.05, rtol=0.05
        )
    out = generate_image(half, processor, "a cat", seed=0, decode=False)
    assert out.ids.shape == (1, 8, 8) and out.ids.max() < half.image_vocab.size


def test_a_different_semhitok_model_is_refused(world):
    with pytest.raises(CheckpointMismatchError, match="semantic codebook differs"):
        load_unified(world, image_tokenizer=load_model("tiny", seed=1))


# -- image generation -----------------------------------------------------------------------------
def _reference_sample(model, processor, prompts, cfg_scale, seed, top_k):
    """Sampling without KV cache or sliced head: the whole sequence is recomputed each step and
    the full head's logits are restricted to the image rows."""
    rows = [
        processor.tokenize_chat([{"role": "user", "content": p}], add_generation_prompt=True)[0]
        + [processor.image_start_id]
        for p in prompts
    ]
    batch = processor.pad(rows, side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    vocab, n = model.image_vocab, len(prompts) // (1 if cfg_scale == 1 else 2)
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    for _ in range(processor.num_image_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        logits = logits[:, vocab.offset :].float()
        if cfg_scale != 1:
            logits = logits[n:] + cfg_scale * (logits[:n] - logits[n:])
        flat = sample_next(logits, generator, top_k=top_k)
        drawn.append(flat)
        token = vocab.to_tokens(flat).repeat(len(prompts) // n)[:, None]
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return torch.stack(drawn, 1).view(n, 8, 8)


@pytest.mark.slow
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_generate_image_matches_uncached_reference_sampling(unified, cfg_scale):
    model, processor = unified
    prompts = ["a photo of a cat", "a rocket"]
    out = generate_image(model, processor, prompts, cfg_scale=cfg_scale, seed=7, top_k=40)
    if cfg_scale != 1:
        prompts = prompts + [model.config.unconditional_prompt] * 2
    with torch.no_grad():
        expected = _reference_sample(model, processor, prompts, cfg_scale, 7, 40)
    assert torch.equal(out.ids, expected)


def test_top_k_top_p_sampling_draws_from_the_renormalised_nucleus():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat(
        [sample_next(logits, generator, 0.5, top_k=3, top_p=0.9) for _ in range(4000)]
    )
    # top-3 are ids 5, 0, 1 with softmax(2·logit) = (0.867, 0.117, 0.016) at temperature 0.5;
    # top-p 0.9 drops id 1 (its tail mass 0.016 <= 0.1) and renormalises the other two
    expected = torch.zeros(6)
    expected[[5, 0]] = torch.softmax(torch.tensor([6.0, 4.0]), 0)
    frequencies = torch.bincount(draws, minlength=6) / len(draws)
    torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)
    assert sample_next(logits, generator, temperature=0).item() == 5


def test_generate_image_gives_exactly_the_grid_inside_the_image_range(unified):
    model, processor = unified
    out = generate_image(model, processor, "a cup of coffee", cfg_scale=4.0, seed=0)
    assert out.ids.shape == (1, 8, 8)
    assert out.ids.min() >= 0 and out.ids.max() < model.image_vocab.size
    assert out.images[0].size == (64, 64)  # the tiny preset's image size


@pytest.mark.slow
def test_generate_image_is_deterministic_for_a_seed(unified):
    model, processor = unified
    run = lambda seed: generate_image(model, processor, "a cat", seed=seed, decode=False).ids  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.slow
def test_the_sliced_head_samples_the_same_ids_as_the_full_head(unified):
    model, processor = unified
    kwargs = dict(cfg_scale=2.0, seed=1, top_p=0.9, decode=False)
    sliced = generate_image(model, processor, "a cat", **kwargs).ids
    full = generate_image(model, processor, "a cat", image_slice_head=False, **kwargs).ids
    assert torch.equal(sliced, full)


def test_chat_is_greedy_over_text_ids_only(unified):
    model, processor = unified
    conversation, images = [VQA[:1]], [[sample_photo("chelsea")]]
    (answer,) = chat(model, processor, conversation, images, max_new_tokens=6)
    ids = processor(conversation, images)["input_ids"]
    prompt_length = ids.shape[1]
    with torch.no_grad():
        for _ in range(6):
            logits = model(ids).logits[0, -1]
            logits[len(processor.tokenizer) :] = -float("inf")  # padded rows and image ids
            logits[[processor.image_start_id, processor.image_end_id]] = -float("inf")
            ids = torch.cat([ids, logits.argmax().view(1, 1)], 1)
            if ids[0, -1] == processor.tokenizer.eos_token_id:
                break
    expected = processor.tokenizer.decode(ids[0, prompt_length:], skip_special_tokens=True)
    assert answer == expected


def test_chat_answers_a_padded_batch_as_it_answers_each_alone(unified):
    model, processor = unified
    conversations = [VQA[:1], [{"role": "user", "content": "Describe a cat."}]]
    images = [[sample_photo("chelsea")], []]
    batched = chat(model, processor, conversations, images, max_new_tokens=5)
    alone = [
        chat(model, processor, [c], [i], max_new_tokens=5)[0]
        for c, i in zip(conversations, images, strict=True)
    ]
    assert batched == alone
