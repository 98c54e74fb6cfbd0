"""The three stages' recipe: the discriminator carried across stages, the shipped configs."""

from pathlib import Path

import pytest
import torch

from semhitok_fixtures import training_faults as tf
from semhitok_plugin import SemHiTok
from semhitok_plugin.checkpoint import DISCRIMINATOR_FILE, load_discriminator
from semhitok_plugin.config import SemHiTokConfig
from semhitok_plugin.model import resolve_config
from semhitok_plugin.samples import write_sample_photos
from semhitok_plugin.training import (
    SHIPPED_CONFIGS,
    TrainConfig,
    Trainer,
    _merge,
    build_stage_model,
)

LOSSES = {"perceptual_weight": 0.0, "disc_channels": 16}


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_sample_photos(root, ("astronaut", "coffee"))
    return root


@pytest.fixture(scope="module")
def semantic_init(tmp_path_factory) -> Path:
    """A tiny tokenizer that passes for a stage-1 output (stage 2 refuses untrained codebooks)."""
    torch.manual_seed(0)
    model = SemHiTok(resolve_config("tiny")[0], load_teacher_weights=False)
    model.semantic_codebook.initialized.fill_(True)
    return model.save_pretrained(tmp_path_factory.mktemp("init") / "stage1")


def trainer(tmp_path, photos, init, stage="pixel", **losses) -> Trainer:
    cfg = tf.train_config(
        tmp_path, photos, stage=stage, init=str(init), losses=LOSSES | losses, max_steps=1
    )
    return Trainer(TrainConfig.load_dict(cfg))


def test_pixel_stage_exports_its_discriminator_and_the_next_stage_continues_it(
    tmp_path, photo_dir, semantic_init
):
    first = trainer(tmp_path / "a", photo_dir, semantic_init, disc_start=0)
    first.train_step([next(iter(first.stream))])  # one adversarial step: moments exist
    final = first.export()
    saved = load_discriminator(final)
    assert saved is not None and saved["disc_optimizer"]["state"]

    second = trainer(
        tmp_path / "b", photo_dir, final, stage="decoder", disc_start=0, fresh_disc_start=50
    )
    assert second.disc_carried and second.disc_start == 0
    for key, value in first.disc_module.state_dict().items():
        assert torch.equal(second.disc_module.state_dict()[key], value), key
    moments = second.disc_opt.state_dict()["state"]
    assert moments and all(
        torch.equal(moments[k]["exp_avg"], v["exp_avg"])
        for k, v in saved["disc_optimizer"]["state"].items()
    )
    # this stage's lr, not the previous stage's
    assert {g["lr"] for g in second.disc_opt.param_groups} == {second.cfg.optim.lr}


def test_without_a_carried_discriminator_the_gan_is_delayed(tmp_path, photo_dir, semantic_init):
    assert not (semantic_init / DISCRIMINATOR_FILE).exists()
    fresh = trainer(tmp_path, photo_dir, semantic_init, disc_start=0, fresh_disc_start=50)
    assert not fresh.disc_carried and fresh.disc_start == 50
    plain = trainer(tmp_path / "p", photo_dir, semantic_init, disc_start=0)
    assert plain.disc_start == 0  # fresh_disc_start unset: disc_start as written


PAPER_CONFIGS = sorted(p for p in SHIPPED_CONFIGS.glob("siglip-*/stage*.yaml"))


def test_every_paper_scale_config_is_checked():
    names = {f"{p.parent.name}/{p.stem}" for p in PAPER_CONFIGS}
    assert len(names) == 8, names


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_scale_config_loads_and_validates(path):
    cfg = TrainConfig.load(path)
    preset = path.parent.name
    assert cfg.batch_size == 256  # Tab. 3
    base, _ = resolve_config(preset)
    # the stage's model overrides on the preset give a valid tokenizer config
    model = SemHiTokConfig.from_dict(_merge(base.to_dict(), cfg.model_overrides))
    assert model.image_size == int(preset[-3:])
    if cfg.stage == "semantic":
        assert cfg.model == preset and cfg.optim.lr == 1e-4
        return
    assert cfg.init and Path(cfg.init).parent.parent.name == preset
    if cfg.stage == "decoder":  # a new random decoder: warm-up without the GAN, 5x Tab. 3's lr
        assert cfg.losses.disc_start >= 10_000 and cfg.optim.lr == 1e-4
    gan_now = cfg.losses.adversarial_weight > 0 and cfg.losses.disc_start == 0
    if gan_now:  # a GAN from step 0 only against a carried discriminator
        assert cfg.losses.fresh_disc_start and cfg.losses.fresh_disc_start >= 10_000
    lrs = {"stage2-imagenet": 1e-4, "stage2-coyo": 4e-5}
    assert cfg.optim.lr >= lrs.get(path.stem, 2e-5)


@pytest.mark.parametrize("decoder_init", ["inherit", "random"])
def test_decoder_stage_starts_from_the_trained_decoder_where_shapes_fit(
    tmp_path, photo_dir, semantic_init, decoder_init
):
    base = SemHiTok.from_pretrained(semantic_init)
    deeper = base.config.pixel.decoder
    grown = {"pixel": {"decoder": {"width": deeper.width, "depth": deeper.depth + 1}}}
    cfg = tf.train_config(
        tmp_path,
        photo_dir,
        stage="decoder",
        init=str(semantic_init),
        model_overrides=grown,
        decoder_init=decoder_init,
    )
    model = build_stage_model(TrainConfig.load_dict(cfg))
    key = "pixel_decoder.transformer.blocks.0.attn.qkv.weight"
    inherited = torch.equal(model.state_dict()[key], base.state_dict()[key])
    assert inherited == (decoder_init == "inherit")
    assert torch.equal(model.semantic_codebook.codebook, base.semantic_codebook.codebook)
