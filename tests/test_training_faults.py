"""Training faults: a NaN/inf step is skipped on the device and changes nothing, a
diverged run stops with a clear error and a finite last checkpoint, SIGTERM checkpoints and exits
0, a failing disk leaves the previous checkpoint loadable. SIGKILL + resume: test_training.py."""

import copy
import errno
import json
import os
import resource
import signal

import pytest
import torch

from semhitok_fixtures import training_faults as tf
from semhitok_plugin import ConfigError
from semhitok_plugin.checkpoint import (
    CheckpointWriteError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from semhitok_plugin.training import TrainConfig, Trainer, TrainingPreempted, train


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return tf.write_photos(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, photo_dir):
    tmp = tmp_path_factory.mktemp("stage1")
    return train(TrainConfig.load_dict(tf.train_config(tmp, photo_dir, checkpoint_every=100)))


def adam_steps(state: dict, key: str = "optimizer") -> set[float]:
    return {float(s["step"]) for s in state[key]["state"].values()}


@pytest.mark.slow
@pytest.mark.parametrize("stage, fused", [("semantic", True), ("semantic", False), ("pixel", True)])
def test_a_nan_batch_is_skipped_reported_and_changes_nothing(
    stage, fused, stage1, tmp_path, photo_dir, caplog
):
    """Semantic: the EMA codebook (updated in the forward) is put back. Pixel: the discriminator
    (on from step 2) is skipped too. All: weights, AdamW moments and step count, weight EMA;
    fused AdamW skips on the device, the default AdamW after reading the flag."""
    extra = tf.pixel_overrides(stage1) if stage == "pixel" else {}
    extra |= {"optim": {"lr": 1e-3, "fused": fused}}
    handler = signal.getsignal(signal.SIGTERM)
    probe = tf.one_bad_batch_case(tmp_path, photo_dir, **extra)
    assert probe.input == f"one NaN batch ({stage} stage)"
    assert probe.outcome.startswith(
        "skipped and counted (1 of 4 steps; max_bad_steps=5): step 3 skipped: non-finite loss"
    )
    parts = (
        "weights, optimizer, EMA, discriminator" if stage == "pixel" else "weights, optimizer, EMA"
    )
    assert probe.outcome.endswith(f"; {parts} and codebook unchanged by it; run finished")
    assert signal.getsignal(signal.SIGTERM) == handler  # the trainer's handler is gone again
    run = tmp_path / "run"
    lines = tf.metrics(run)
    bad = [m for m in lines if m.get("bad_step")]
    assert [(m["step"], m["consecutive_bad_steps"]) for m in bad] == [(3, 1)]
    assert {"loss", "grad_norm"} <= set(bad[0]["non_finite"])
    if stage == "pixel":
        assert {"disc", "disc_grad_norm"} <= set(bad[0]["non_finite"])
    logged = {m["step"]: m for m in lines if not m.get("bad_step")}
    assert logged[3]["loss"] is None and logged[4]["loss"] is not None  # strict JSON: null
    assert [logged[s]["skipped_steps"] for s in (2, 3, 4)] == [0, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if "skipped" in w] == [
        f"step 3 skipped: non-finite {', '.join(bad[0]['non_finite'])} "
        "(1 in a row; the run stops at max_bad_steps=5)"
    ]
    s2, s3, s4 = (tf.checkpoint_at(run, s) for s in (2, 3, 4))
    assert tf.same_weights(s2, s3)
    assert not tf.equal(s3["model"], s4["model"]) and not tf.equal(s3["ema"], s4["ema"])
    assert adam_steps(s4) == {3.0}  # 4 steps, 3 updates: the skipped one is not counted
    if stage == "pixel":
        assert adam_steps(s4, "disc_optimizer") == {2.0}  # steps 2, 3 (skipped) and 4
    else:
        assert not tf.equal(
            s3["model"]["semantic_codebook.codebook"], s4["model"]["semantic_codebook.codebook"]
        )
    assert tf.all_finite(s4)


@pytest.mark.slow
def test_consecutive_bad_steps_stop_the_run_with_a_finite_last_checkpoint(tmp_path, photo_dir):
    probe = tf.bad_streak_case(tmp_path, photo_dir)
    assert probe.outcome.startswith(
        "TrainingDiverged: training diverged: 3 consecutive steps (max_bad_steps=3), steps 3-5, "
        "had a non-finite loss or gradient (step 5: loss"
    )
    assert probe.outcome.endswith("Checkpoints left: step_00000002.pt, step_00000004.pt (finite)")
    run = tmp_path / "run"
    last = latest_checkpoint(run / "checkpoints")
    assert f"last good checkpoint: {last}" in probe.outcome
    bad = [(m["step"], m["consecutive_bad_steps"]) for m in tf.metrics(run) if m.get("bad_step")]
    assert bad == [(3, 1), (4, 2), (5, 3)]
    assert sorted(p.name for p in last.parent.iterdir()) == [
        "latest",
        "step_00000002.pt",
        "step_00000004.pt",  # written at 2 of 3 bad steps: the weights are still step 2's
    ]
    state = load_checkpoint(last)
    assert tf.all_finite(state) and tf.same_weights(state, tf.checkpoint_at(run, 2))
    assert not (run / "final").exists()


def test_max_bad_steps_must_be_positive(tmp_path, photo_dir):
    with pytest.raises(ConfigError, match="max_bad_steps must be >= 1, got 0"):
        TrainConfig.load_dict(tf.train_config(tmp_path, photo_dir, max_bad_steps=0))


@pytest.mark.slow
def test_sigterm_in_process_stops_within_two_steps_with_a_checkpoint(tmp_path, photo_dir):
    """The stop flag travels with the step's flags, read one step late (or at a metrics line):
    SIGTERM during step 3 ends the run after step 3, 4 or 5, with a checkpoint there."""
    config = tf.train_config(tmp_path, photo_dir, max_steps=50, checkpoint_every=50, log_every=50)
    trainer = Trainer(TrainConfig.load_dict(config))
    trainer.out.mkdir(parents=True)
    stream = trainer.stream

    class SignalOnThirdBatch:
        def __iter__(self):
            for i, batch in enumerate(stream):
                if i == 2:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        def __getattr__(self, name):
            return getattr(stream, name)

    trainer.stream = SignalOnThirdBatch()
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingPreempted) as stopped:
        trainer.fit()
    assert stopped.value.code == 0 and 3 <= stopped.value.step <= 5
    assert stopped.value.checkpoint == latest_checkpoint(trainer.out / "checkpoints")
    assert load_checkpoint(stopped.value.checkpoint)["step"] == stopped.value.step
    assert signal.getsignal(signal.SIGTERM) == handler


@pytest.mark.slow
def test_sigterm_through_the_cli_exits_zero_and_resume_continues(tmp_path, photo_dir):
    probe = tf.sigterm_case(tmp_path, photo_dir)
    run = tmp_path / "run"
    steps = [m["step"] for m in tf.metrics(run)]
    stopped = steps[-1] - 2  # the resumed run added two steps
    assert probe.outcome == (
        f"exit status 0; checkpoint step_{stopped:08d}.pt at the step reached ({stopped}); "
        f"--resume: exit status 0, continued from step {stopped} to {stopped + 2} and exported"
    )
    assert (run / "final" / "model.safetensors").is_file()
    assert load_checkpoint(run / "checkpoints" / f"step_{stopped:08d}.pt")["step"] == stopped
    assert steps == list(range(1, stopped + 3))  # no step lost or logged twice


@pytest.mark.slow
def test_disk_full_mid_checkpoint_stops_the_run_and_keeps_the_previous_one(tmp_path, photo_dir):
    probe = tf.disk_full_case(tmp_path, photo_dir)
    folder = tmp_path / "run" / "checkpoints"
    assert probe.outcome == (
        f"run stopped: [Errno 28] could not write checkpoint file {folder / 'step_00000002.pt'}: "
        f"No space left on device; the last good checkpoint is {folder / 'step_00000001.pt'}; "
        "latest -> step_00000001.pt (loads); temporary files left: 0"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step_00000001.pt"]
    assert tf.all_finite(load_checkpoint(latest_checkpoint(folder)))


def test_a_real_write_failure_names_the_file_and_leaves_latest(tmp_path):
    """No mock: the kernel refuses to grow a file past RLIMIT_FSIZE (EFBIG), as a full disk
    refuses with ENOSPC; torch.save alone would report it as "unexpected pos"."""
    save_checkpoint(tmp_path, 1, {"w": torch.ones(10)})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))
    try:
        with pytest.raises(CheckpointWriteError) as failed:
            save_checkpoint(tmp_path, 2, {"w": torch.ones(1 << 18)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert failed.value.errno == errno.EFBIG
    assert str(tmp_path / "step_00000002.pt") in str(failed.value)
    assert f"the last good checkpoint is {tmp_path / 'step_00000001.pt'}" in str(failed.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001.pt"]
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["w"], torch.ones(10))


def test_a_failed_pointer_write_keeps_latest_and_pruning_spares_the_new_file(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(1)})
    with tf.disk_fills_on_file(2, room=0), pytest.raises(CheckpointWriteError, match="latest"):
        save_checkpoint(tmp_path, 3, {"w": torch.ones(3)})  # the .pt is written, the pointer not
    assert latest_checkpoint(tmp_path).name == "step_00000001.pt"
    save_checkpoint(tmp_path, 2, {"w": torch.ones(2)}, keep=1)  # resumed from 1; 3 is stale
    assert load_checkpoint(latest_checkpoint(tmp_path))["w"].shape == (2,)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_00000002.pt",
        "step_00000003.pt",
    ]


def test_resume_drops_a_metrics_line_torn_by_a_kill(tmp_path):
    from semhitok_plugin.checkpoint import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + '\n{"step": 3, "lo')
    truncate_metrics(path, 5)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


@pytest.mark.slow
def test_a_nan_first_step_leaves_the_k_means_init_to_the_next(tmp_path, photo_dir):
    """Stage 1 initialises its codebook by k-means on the first batch: a NaN first batch must
    not leave it NaN, nor uninitialised for good."""
    config = tf.train_config(tmp_path, photo_dir, max_steps=2, checkpoint_every=1)
    trainer = tf.fit_with_nan_batches(config, {0})
    assert trainer.skipped_steps == 1
    first, second = (tf.checkpoint_at(trainer.out, s)["model"] for s in (1, 2))
    assert not first["semantic_codebook.initialized"]
    assert second["semantic_codebook.initialized"]
    assert second["semantic_codebook.codebook"].isfinite().all()


@pytest.mark.slow
def test_the_discriminator_learns_from_its_own_loss_only(stage1, tmp_path, photo_dir):
    """The generator's adversarial loss back-propagates through the discriminator too; those
    gradients must not reach the discriminator's update."""
    from semhitok_plugin.discriminator import hinge_d_loss

    config = tf.train_config(tmp_path, photo_dir, optim={"lr": 1e-3, "grad_clip": 0.0})
    config |= tf.pixel_overrides(stage1, losses={"perceptual_weight": 0.0, "disc_start": 0})
    # Codes initialised on the batch's own features make some fake logits sit on the hinge,
    # where float noise between this forward and the step's flips a gradient term.
    config["model_overrides"] = {
        "pixel": {**config["model_overrides"]["pixel"], "data_init": False}
    }
    trainer = Trainer(TrainConfig.load_dict(config))
    batch = next(iter(trainer.stream))
    images = batch["images"]
    with torch.no_grad():  # the step's fakes: the generator before its update
        fakes = trainer.model(images, stage="pixel").reconstruction
    disc = copy.deepcopy(trainer.disc)  # the discriminator before its update
    got = []
    trainer.disc_opt.register_step_pre_hook(
        lambda *_: got.extend(p.grad.clone() for p in trainer.disc.parameters())
    )
    trainer.train_step([batch])
    d_loss = hinge_d_loss(disc(images), disc(fakes))
    expected = torch.autograd.grad(d_loss, list(disc.parameters()))
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)  # without the fix: off by ~100 %


def test_semhitok_train_reports_a_diverged_run_in_one_line(tmp_path, photo_dir, capsys):
    """``semhitok train`` turns TrainingDiverged into exit status 1 and its message, not a
    traceback. Every batch is NaN (injected at the data edge: the real stream, then NaN pixels)."""
    from unittest import mock

    from semhitok_plugin import cli, training

    config = tmp_path / "stage1.yaml"
    config.write_text(json.dumps(tf.train_config(tmp_path, photo_dir, max_bad_steps=2)))
    real = training.ImageStream
    poisoned = mock.patch.object(
        training, "ImageStream", lambda *a, **k: tf.NaNBatches(real(*a, **k), range(10**6))
    )
    with poisoned:
        assert cli.main(["train", str(config)]) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: training diverged: 2 consecutive steps (max_bad_steps=2)")
    assert "last good checkpoint: none" in line and "Traceback" not in err
