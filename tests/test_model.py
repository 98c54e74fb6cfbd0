import dataclasses

import pytest
import torch

from semhitok_plugin import SemHiTok, TokenIdError
from semhitok_plugin.config import ConfigError


def test_encode_shapes_and_id_relations(tiny_model, photos):
    out = tiny_model.encode(photos)
    h, w = tiny_model.grid_size
    assert out.flat_ids.shape == out.sem_ids.shape == out.pix_ids.shape == (4, h, w)
    assert torch.equal(out.flat_ids, out.sem_ids * tiny_model.sub_codebook_size + out.pix_ids)
    assert out.flat_ids.max() < tiny_model.vocab_size == 64 * 4
    assert out.sem_features.shape == (4, h * w, 8) and out.pix_features.shape == (4, h * w, 4)


def test_decode_of_encoded_ids_equals_reconstruct(tiny_model, photos):
    ids = tiny_model.encode(photos).flat_ids
    decoded = tiny_model.decode(ids)
    assert torch.equal(decoded, tiny_model.reconstruct(photos))
    assert torch.equal(decoded, tiny_model.decode(ids.flatten(1)))  # (B, h*w) layout too
    assert decoded.shape == photos.shape and decoded.min() >= -1 and decoded.max() <= 1


def test_decode_rejects_bad_ids(tiny_model):
    with pytest.raises(TokenIdError, match=r"256, outside the valid range \[0, 256\)"):
        tiny_model.decode(torch.full((1, 8, 8), 256))
    with pytest.raises(ValueError, match=r"shape \(B, 8, 8\) or \(B, 64\)"):
        tiny_model.decode(torch.zeros(1, 7, 7, dtype=torch.long))


def test_encode_rejects_wrong_image_size(tiny_model):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 64, 64\)"):
        tiny_model.encode(torch.zeros(1, 3, 32, 32))


def snapshot(model, photos):
    ids = model.encode(photos).sem_ids
    return (
        ids,
        model.semantic_features(ids),
        {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("pixel_")},
    )


def test_pixel_training_never_changes_semantics(tiny_model, photos):
    """The paper's non-conflicting extension, with an optimizer over *all* parameters."""
    model = tiny_model.train()
    model(photos, stage="semantic")  # k-means init + one EMA step: a non-trivial codebook
    model.freeze_for("pixel")
    ids0, feats0, sem_state0 = snapshot(model.eval(), photos)
    pix0 = model.pixel_encoder.transformer.proj_out.weight.clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        out = model(photos, stage="pixel")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    ids1, feats1, sem_state1 = snapshot(model.eval(), photos)
    assert not torch.equal(pix0, model.pixel_encoder.transformer.proj_out.weight)  # it trained
    assert torch.equal(ids0, ids1)
    assert torch.equal(feats0, feats1)
    for key, value in sem_state0.items():
        assert torch.equal(value, sem_state1[key]), key


def test_semantic_stage_updates_codebook_only_in_training_mode(tiny_model, photos):
    before = tiny_model.semantic_codebook.codebook.clone()
    out = tiny_model.eval()(photos, stage="semantic")
    assert torch.equal(before, tiny_model.semantic_codebook.codebook)
    assert list(out.scalars()) == ["loss", "distill", "commitment"]
    assert torch.equal(out.loss, out.terms["distill"] + out.terms["commitment"])
    assert out.reconstruction is None
    tiny_model.train()(photos, stage="semantic")
    assert not torch.equal(before, tiny_model.semantic_codebook.codebook)


def test_semantic_stage_gradients_reach_only_semantic_modules(tiny_model, photos):
    params = tiny_model.freeze_for("semantic")
    tiny_model.train()(photos, stage="semantic").loss.backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in tiny_model.named_parameters() if n.startswith("pixel"))
    assert all(not p.requires_grad for p in tiny_model.teacher.parameters())


def test_decoder_stage_trains_only_the_decoder(tiny_model, photos):
    tiny_model.freeze_for("decoder")
    tiny_model.train()(photos, stage="decoder").loss.backward()
    for name, p in tiny_model.named_parameters():
        assert (p.grad is not None) == name.startswith("pixel_decoder."), name


def test_pixel_stage_output_and_the_distillation_path(tiny_model, photos):
    out = tiny_model.eval()(photos, stage="pixel")
    assert list(out.terms) == ["recon", "codebook", "commitment"]
    assert out.reconstruction.shape == photos.shape
    more = out.with_term("perceptual", torch.tensor(0.5))
    assert torch.equal(more.loss, out.loss + 0.5)
    assert list(more.scalars()) == ["loss", "recon", "codebook", "commitment", "perceptual"]
    target, sem = tiny_model.distill(tiny_model.to_canvas(photos))
    grid = tiny_model.grid_size
    assert target.shape == (len(photos), grid[0] * grid[1], tiny_model.teacher.embed_dim)
    assert torch.equal(sem.ids, tiny_model.encode(photos).sem_ids.flatten(1))


@pytest.mark.parametrize("concat", ["channel", "sequence", "none", "semantic"])
def test_concat_modes_and_their_use_of_semantic_codes(tiny_config, photos, concat):
    config = dataclasses.replace(
        tiny_config, pixel=dataclasses.replace(tiny_config.pixel, concat=concat)
    )
    torch.manual_seed(0)
    model = SemHiTok(config).eval()
    out = model.encode(photos)
    recon = model.decode_features(out.sem_features, out.pix_features)
    other_sem = model.decode_features(out.sem_features.roll(1, dims=0), out.pix_features)
    other_pix = model.decode_features(out.sem_features, out.pix_features.roll(1, dims=0))
    assert recon.shape == photos.shape
    assert torch.equal(recon, other_sem) == (concat == "none")
    assert torch.equal(recon, other_pix) == (concat == "semantic")


def test_canvas_for_grids_that_do_not_divide_the_image(tiny_config):
    """Like 384 px with a /14 teacher: 60 px with /8 patches -> 7x7 tokens on a 56 px canvas."""
    config = dataclasses.replace(tiny_config, image_size=60)
    model = SemHiTok(config).eval()
    assert model.grid_size == (7, 7) and config.canvas_size == 56
    x = torch.rand(2, 3, 60, 60) * 2 - 1
    out = model.encode(x)
    assert out.flat_ids.shape == (2, 7, 7)
    assert model.decode(out.flat_ids).shape == (2, 3, 60, 60)


def test_unknown_stage_and_bad_config_raise(tiny_model, tiny_config, photos):
    with pytest.raises(ValueError, match="stage must be one of"):
        tiny_model(photos, stage="joint")
    with pytest.raises(ConfigError, match="concat must be one of"):
        dataclasses.replace(tiny_config.pixel, concat="diagonal")
