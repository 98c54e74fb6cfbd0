"""The trainer: stages, frozen-part refusal, kill-and-resume equality, 2-rank codebook sync."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from semhitok_fixtures import training_faults as tf
from semhitok_fixtures.training_faults import kill_and_resume, run_differences
from semhitok_plugin import ConfigError, SemHiTok
from semhitok_plugin.samples import write_sample_photos
from semhitok_plugin.training import TrainConfig, build_stage_model, train

SMALL = {"pixel": {"encoder": {"width": 64, "depth": 2, "heads": 2}}}


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_sample_photos(root, ("astronaut", "coffee", "chelsea", "rocket"))
    (root / "broken.jpg").write_text("not an image")  # skipped and counted, never a crash
    return root


def config(tmp_path, photo_dir, **kw) -> dict:
    """A tiny stage-1 run (see ``training_faults.train_config``) that also draws pictures."""
    return tf.train_config(tmp_path, photo_dir, image_every=2) | kw


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, photo_dir):
    tmp = tmp_path_factory.mktemp("stage1")
    return train(TrainConfig.load_dict(config(tmp, photo_dir)))


@pytest.mark.slow
def test_stage1_writes_outputs_and_counts_bad_files(stage1):
    run = stage1.parent
    lines = metrics(run)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert {"distill", "commitment", "semantic_used", "skipped_files"} <= set(lines[0])
    assert lines[-1]["skipped_files"] >= 1  # broken.jpg
    assert (run / "images" / "step_00000004_tokens.png").is_file()
    assert SemHiTok.from_pretrained(stage1).semantic_codebook.initialized


@pytest.mark.slow
def test_stage2_freezes_semantics_and_trains_pixels(stage1, tmp_path, photo_dir, photos):
    cfg = config(
        tmp_path,
        photo_dir,
        stage="pixel",
        init=str(stage1),
        model_overrides=SMALL,
        losses={
            "perceptual_weight": 1.0,
            "random_lpips": True,
            "disc_start": 2,
            "disc_channels": 16,
        },
    )
    final = train(TrainConfig.load_dict(cfg))
    before, after = SemHiTok.from_pretrained(stage1), SemHiTok.from_pretrained(final)
    assert torch.equal(before.encode(photos).sem_ids, after.encode(photos).sem_ids)
    for key, value in before.state_dict().items():
        if not key.startswith("pixel_"):
            assert torch.equal(value, after.state_dict()[key]), key
    lines = metrics(final.parent)
    assert "adversarial" not in lines[0] and {"adversarial", "disc"} <= set(lines[-1])
    assert {"recon", "perceptual", "codebook", "flat_used"} <= set(lines[-1])
    assert (final.parent / "images" / "step_00000004_recon.png").is_file()


def test_later_stages_refuse_to_change_frozen_parts(stage1, tmp_path, photo_dir, tiny_model):
    bad = config(
        tmp_path,
        photo_dir,
        stage="pixel",
        init=str(stage1),
        model_overrides={"semantic": {"codebook_size": 32}},
    )
    with pytest.raises(ConfigError, match=r"semantic.codebook_size: 64 -> 32"):
        build_stage_model(TrainConfig.load_dict(bad))
    bad = config(
        tmp_path,
        photo_dir,
        stage="decoder",
        init=str(stage1),
        model_overrides={"pixel": {"encoder": {"width": 48}}},
    )
    with pytest.raises(ConfigError, match=r"pixel.encoder.width: 32 -> 48"):
        build_stage_model(TrainConfig.load_dict(bad))
    untrained = tiny_model.save_pretrained(tmp_path / "untrained")
    bad = config(tmp_path, photo_dir, stage="pixel", init=str(untrained))
    with pytest.raises(ConfigError, match="untrained semantic codebook"):
        build_stage_model(TrainConfig.load_dict(bad))


@pytest.mark.slow
def test_decoder_stage_grows_only_the_decoder(stage1, tmp_path, photo_dir):
    bigger = {"pixel": {"decoder": {"width": 48, "depth": 2, "heads": 2}}}
    cfg = TrainConfig.load_dict(
        config(
            tmp_path,
            photo_dir,
            stage="decoder",
            init=str(stage1),
            model_overrides=bigger,
            losses={"perceptual_weight": 0.0, "adversarial_weight": 0.0},
            max_steps=2,
        )
    )
    model = build_stage_model(cfg)
    init = SemHiTok.from_pretrained(stage1)
    for key, value in init.state_dict().items():
        if not key.startswith("pixel_decoder."):
            assert torch.equal(value, model.state_dict()[key]), key
    assert model.pixel_decoder.transformer.proj_in.out_features == 48
    final = train(cfg)
    assert SemHiTok.from_pretrained(final).config.pixel.decoder.width == 48


# Per stage: random crops, an EMA of the weights and (pixel, decoder) the GAN, joining before
# (pixel) or after (decoder) the checkpoint the run resumes from; killed as soon as that first
# checkpoint exists, i.e. inside the step after it.
KILL_RUNS = {
    "semantic": {},
    "pixel": {
        "model_overrides": SMALL,
        "losses": {"perceptual_weight": 0.0, "disc_start": 2, "disc_channels": 16},
    },
    "decoder": {"losses": {"perceptual_weight": 0.0, "disc_start": 4, "disc_channels": 16}},
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", KILL_RUNS)
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(stage, stage1, tmp_path, photo_dir):
    """Every logged value and every exported weight must match the uninterrupted run exactly."""
    init = {} if stage == "semantic" else {"init": str(stage1)}
    common = {"max_steps": 10, "checkpoint_every": 3, "ema_decay": 0.9, "image_every": 100}
    run = kill_and_resume(tmp_path, photo_dir, stage=stage, **init, **common | KILL_RUNS[stage])
    assert run.straight_status == 0
    assert run.killed_status == -signal.SIGKILL, "the run finished before it could be killed"
    assert run.resumed_status == 0, run.resumed_output
    assert "resumed from" in run.resumed_output
    assert [m["step"] for m in metrics(run.killed)] == list(range(1, 11))
    assert run_differences(run.straight, run.killed) == []


@pytest.mark.slow
def test_two_ranks_keep_identical_codebooks(tmp_path, photo_dir):
    cfg = config(tmp_path, photo_dir, max_steps=3, image_every=100)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "semhitok_plugin.cli",
        "train",
        str(path),
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = metrics(tmp_path / "run")
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        assert (
            len(m["codebook_digests"]) == 2 and m["codebook_digests"][0] == m["codebook_digests"][1]
        )
    assert lines[0]["codebook_digests"] != lines[-1]["codebook_digests"]  # it did train
