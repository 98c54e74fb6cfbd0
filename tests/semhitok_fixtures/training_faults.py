"""Training faults, provoked in tiny real runs: non-finite losses, preemption, a full disk, SIGKILL.

Each ``*_case`` function runs the real trainer (in-process ``Trainer.fit`` or the ``semhitok
train`` CLI in a subprocess) on four bundled photos with the ``tiny`` preset, provokes one fault
and returns a :class:`Probe` saying what happened; the run's files stay in the directory, so the
tests inspect them further. Faults are injected at the edges only: NaN images in the batches the
data stream yields (the cheapest road to a non-finite loss) and a checkpoint file that fills the
disk after a few bytes (``ENOSPC``). ``probe`` runs them all in about 20 s on an idle 2-core CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import yaml

from semhitok_plugin import checkpoint, cli
from semhitok_plugin.checkpoint import latest_checkpoint, load_checkpoint
from semhitok_plugin.samples import write_sample_photos
from semhitok_plugin.training import TrainConfig, Trainer, TrainingDiverged

from . import Probe

FAMILY = "training fault"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SMALL = {"pixel": {"encoder": {"width": 64, "depth": 2, "heads": 2}}}  # a quicker stage 2
STATE_KEYS = ("model", "ema", "disc")  # the weights; optimizer moments are compared separately


# -- builders --------------------------------------------------------------------------------------
def write_photos(directory: Path) -> Path:
    folder = directory / "photos"
    if not folder.is_dir():
        write_sample_photos(folder, PHOTOS)
    return folder


def train_config(directory: Path, photos: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny stage-1 run (64 px, batch 8, a metrics line per step) as a plain config dict."""
    base = {
        "stage": "semantic",
        "model": "tiny",
        "output_dir": str(directory / "run"),
        "data": {"source": str(photos), "image_size": 64, "crop": "random"},
        "batch_size": 8,
        "max_steps": 4,
        "log_every": 1,
        "image_every": 1000,
        "checkpoint_every": 2,
        "optim": {"lr": 1e-3},
    }
    return base | overrides


def pixel_overrides(init: Path, **overrides: Any) -> dict[str, Any]:
    """Stage 2 from ``init`` with the discriminator on from step 2 and an EMA of the weights."""
    losses = {"perceptual_weight": 0.0, "disc_start": 1, "disc_channels": 16}
    base = {"stage": "pixel", "init": str(init), "model_overrides": SMALL, "ema_decay": 0.9}
    return base | {"losses": losses} | overrides


class NaNBatches:
    """The trainer's data stream with every pixel of the chosen batches (counted from the first
    batch it yields) set to NaN; everything else (state, counters) is the real stream's."""

    def __init__(self, stream: Any, batches: Container[int]) -> None:
        self.stream, self.batches = stream, batches

    def __iter__(self) -> Iterator[dict]:
        for i, batch in enumerate(self.stream):
            if i in self.batches:
                batch = {**batch, "images": torch.full_like(batch["images"], float("nan"))}
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def fit_with_nan_batches(config: dict[str, Any], batches: Container[int]) -> Trainer:
    trainer = Trainer(TrainConfig.load_dict(config))
    trainer.out.mkdir(parents=True, exist_ok=True)
    trainer.stream = NaNBatches(trainer.stream, batches)
    trainer.fit()
    return trainer


class _FullFile:
    """A file on a disk with ``room`` bytes left: writes beyond it stop there (ENOSPC)."""

    def __init__(self, file: Any, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


class _DiskFillingOS:
    """``os`` as ``checkpoint.py`` sees it: its ``n``-th opened file runs out of room."""

    def __init__(self, n: int, room: int) -> None:
        self.n, self.room, self.opened = n, room, 0

    def fdopen(self, fd: int, mode: str) -> Any:
        self.opened += 1
        file = os.fdopen(fd, mode)
        return _FullFile(file, self.room) if self.opened == self.n else file

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@contextlib.contextmanager
def disk_fills_on_file(n: int, room: int = 4096) -> Iterator[None]:
    """Within the block, the ``n``-th file the checkpoint code opens fills the disk after
    ``room`` bytes (each checkpoint opens two: the ``.pt`` file, then the ``latest`` pointer)."""
    with mock.patch.object(checkpoint, "os", _DiskFillingOS(n, room)):
        yield


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """WARNING lines of the trainer's logger, as the user would read them."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("semhitok_plugin.training")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def equal(a: Any, b: Any) -> bool:
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def same_weights(a: dict, b: dict) -> bool:
    """Same weights, EMA, discriminator and optimizer moments (the lr in the groups may move)."""
    optimizers = ("optimizer", "disc_optimizer")
    moments = all(equal((a[k] or {}).get("state"), (b[k] or {}).get("state")) for k in optimizers)
    return moments and all(equal(a[k], b[k]) for k in STATE_KEYS)


def all_finite(state: dict) -> bool:
    def tensors(value: Any) -> Iterator[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict | list | tuple):
            for v in value.values() if isinstance(value, dict) else value:
                yield from tensors(v)

    picked = [state[k] for k in (*STATE_KEYS, "optimizer")]
    return all(t.isfinite().all() for t in tensors(picked) if t.is_floating_point())


def checkpoint_at(run: Path, step: int) -> dict:
    return load_checkpoint(run / "checkpoints" / f"step_{step:08d}.pt")


def config_file(config: dict[str, Any]) -> Path:
    """``config`` as YAML, next to its run folder."""
    path = Path(config["output_dir"]).parent / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def cli_train(config: dict[str, Any], cwd: Path, *args: str) -> subprocess.Popen:
    """``python -m semhitok_plugin.cli train CONFIG ARGS`` with stdout and stderr merged, on one
    thread (a tiny model gains nothing from more, and on a busy machine OpenMP threads that
    wait for each other at every operation make a step up to 50x slower)."""
    return subprocess.Popen(
        [sys.executable, "-m", "semhitok_plugin.cli", "train", str(config_file(config)), *args],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def cli_resume(config: dict[str, Any], *args: str) -> tuple[int, str]:
    """``semhitok train CONFIG --resume ARGS`` in this process (a second interpreter would only
    add its start-up time), on one thread as ``cli_train``: exit status and what it printed."""
    printed, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(printed):
            status = cli.main(["train", str(config_file(config)), "--resume", *args])
    finally:
        torch.set_num_threads(threads)
    return status, printed.getvalue()


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """What the process printed once it ended; killed if it is still running after ``timeout``
    (a run that ignored SIGTERM would otherwise go on for its 10,000 steps)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists and is not empty, or the process ended."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if path.is_file() and path.stat().st_size:
            return
        time.sleep(0.01)


# -- the faults ------------------------------------------------------------------------------------
def one_bad_batch_case(directory: Path, photos: Path, **overrides: Any) -> Probe:
    """Step 3's batch is all NaN: it must be skipped, reported, counted, and change nothing."""
    config = train_config(
        directory, photos, max_steps=4, checkpoint_every=1, keep_checkpoints=10, ema_decay=0.9
    )
    config |= overrides
    previous = signal.getsignal(signal.SIGTERM)
    with captured_warnings() as warnings:
        trainer = fit_with_nan_batches(config, {2})
    run = trainer.out
    bad = [m for m in metrics(run) if m.get("bad_step")]
    untouched = same_weights(checkpoint_at(run, 2), checkpoint_at(run, 3))
    handler_back = signal.getsignal(signal.SIGTERM) == previous
    ok = [m["step"] for m in bad] == [3] and len(warnings) == 1 and untouched and handler_back
    outcome = (
        f"skipped and counted ({trainer.skipped_steps} of {trainer.cfg.max_steps} steps; "
        f"max_bad_steps={trainer.cfg.max_bad_steps}): {warnings[0] if warnings else 'no warning'}"
        f"; weights, optimizer, EMA{', discriminator' if trainer.disc else ''} and codebook "
        f"{'unchanged' if untouched else 'CHANGED'} by it; run finished"
    )
    stage = trainer.cfg.stage
    return Probe(FAMILY, f"one NaN batch ({stage} stage)", "Trainer.fit", outcome, ok)


def bad_streak_case(directory: Path, photos: Path) -> Probe:
    """Every batch from step 3 on is NaN, max_bad_steps=3: the run must stop with a clear error,
    write nothing after the streak, and leave a finite, loadable last checkpoint."""
    config = train_config(directory, photos, max_steps=20, max_bad_steps=3, keep_checkpoints=10)
    try:
        fit_with_nan_batches(config, range(2, 10**9))
        message = "no error: the run went on"
    except TrainingDiverged as err:
        message = str(err)
    run = Path(config["output_dir"])
    last = latest_checkpoint(run / "checkpoints")
    state = load_checkpoint(last)
    written = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    ok = (
        "max_bad_steps=3" in message
        and "step 5" in message
        and str(last) in message
        and written == ["step_00000002.pt", "step_00000004.pt"]
        and all_finite(state)
        and same_weights(state, checkpoint_at(run, 2))
    )
    outcome = f"TrainingDiverged: {message} Checkpoints left: {', '.join(written)} (finite)"
    return Probe(FAMILY, "NaN loss 3 steps in a row", "Trainer.fit", outcome, ok)


def disk_full_case(directory: Path, photos: Path) -> Probe:
    """The disk fills while the step-2 checkpoint is written (after 4 KiB of it)."""
    config = train_config(directory, photos, max_steps=3, checkpoint_every=1)
    run = Path(config["output_dir"])
    try:
        with disk_fills_on_file(3):  # step 1's file and pointer are written, step 2's file fails
            fit_with_nan_batches(config, ())
        message, code = "no error: the run went on", None
    except OSError as err:
        message, code = str(err), err.errno
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    latest = latest_checkpoint(run / "checkpoints")
    loads = load_checkpoint(latest)["step"] == 1
    failed = run / "checkpoints" / "step_00000002.pt"
    ok = (
        code == errno.ENOSPC
        and str(failed) in message
        and not failed.exists()
        and not leftovers
        and latest.name == "step_00000001.pt"
        and loads
    )
    outcome = (
        f"run stopped: {message}; latest -> {latest.name} (loads); "
        f"temporary files left: {len(leftovers)}"
    )
    return Probe(FAMILY, "disk full during a checkpoint write", "Trainer.fit", outcome, ok)


def sigterm_case(directory: Path, photos: Path) -> Probe:
    """SIGTERM once the first step has been logged; then ``--resume`` for two more steps."""
    config = train_config(directory, photos, max_steps=10_000, checkpoint_every=10_000)
    run = Path(config["output_dir"])
    proc = cli_train(config, directory)
    wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    latest = latest_checkpoint(run / "checkpoints")
    step = load_checkpoint(latest)["step"] if latest else None
    logged = metrics(run)[-1]["step"]
    status, again = cli_resume(config, "--set", f"max_steps={(step or 0) + 2}")
    ok = (
        proc.returncode == 0
        and step == logged
        and f"SIGTERM: stopped at step {step}" in out
        and status == 0
        and f"at step {step}" in again
        and [m["step"] for m in metrics(run)] == list(range(1, (step or 0) + 3))
        and (run / "final" / "model.safetensors").is_file()
    )
    outcome = (
        f"exit status {proc.returncode}; checkpoint {latest.name if latest else None} at the step "
        f"reached ({step}); --resume: exit status {status}, continued from step "
        f"{step} to {(step or 0) + 2} and exported"
    )
    return Probe(FAMILY, "SIGTERM after the first step", "semhitok train", outcome, ok)


@dataclasses.dataclass
class KillResume:
    straight: Path  # run folder of the uninterrupted run
    killed: Path  # run folder of the SIGKILLed and resumed run
    straight_status: int
    killed_status: int
    resumed_status: int
    resumed_output: str


def kill_and_resume(directory: Path, photos: Path, **overrides: Any) -> KillResume:
    """The same config twice through ``semhitok train``, side by side: straight, and SIGKILLed
    as soon as its first checkpoint exists (mid-step), then ``--resume``d to the end (in this
    process: the state comes from the checkpoint alone)."""
    configs = {
        name: train_config(directory / name, photos, **overrides) for name in ("straight", "killed")
    }
    straight = cli_train(configs["straight"], directory)
    killed = cli_train(configs["killed"], directory)
    wait_for(Path(configs["killed"]["output_dir"]) / "checkpoints" / "latest", killed)
    killed.send_signal(signal.SIGKILL)
    finish(killed)
    resumed_status, out = cli_resume(configs["killed"])
    finish(straight)
    return KillResume(
        Path(configs["straight"]["output_dir"]),
        Path(configs["killed"]["output_dir"]),
        straight.returncode,
        killed.returncode,
        resumed_status,
        out,
    )


def run_differences(a: Path, b: Path) -> list[str]:
    """What differs between two runs: logged values (bar the timing) and exported weights."""
    from safetensors.torch import load_file

    def logged(run: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k != "images_per_s"} for m in metrics(run)]

    found = [] if logged(a) == logged(b) else ["metrics.jsonl"]
    wa, wb = (load_file(run / "final" / "model.safetensors") for run in (a, b))
    return found + [k for k in wa if not torch.equal(wa[k], wb.get(k, torch.empty(0)))]


def sigkill_case(directory: Path, photos: Path) -> Probe:
    result = kill_and_resume(directory, photos, max_steps=10, checkpoint_every=3)
    differences = run_differences(result.straight, result.killed)
    ok = result.straight_status == 0 == result.resumed_status
    ok = ok and result.killed_status == -signal.SIGKILL
    ok = ok and "resumed from" in result.resumed_output and not differences
    same = "metrics and final weights bit-identical to the uninterrupted run"
    outcome = (
        f"killed (status {result.killed_status}), resumed (status {result.resumed_status}): "
        + (f"differs in {', '.join(differences[:5])}" if differences else same)
    )
    return Probe(FAMILY, "SIGKILL mid-step, then --resume", "semhitok train", outcome, ok)


def probe(directory: Path) -> list[Probe]:
    """Every training fault once, in tiny real runs under ``directory`` (paths in the outcomes
    are shown relative to it: "run/checkpoints/...", not a temporary folder)."""
    directory = Path(directory)
    photos = write_photos(directory)
    cases = (one_bad_batch_case, bad_streak_case, disk_full_case, sigterm_case, sigkill_case)
    probes = [case(directory / case.__name__, photos) for case in cases]
    here = f"{directory}/"
    return [dataclasses.replace(p, outcome=p.outcome.replace(here, "")) for p in probes]
