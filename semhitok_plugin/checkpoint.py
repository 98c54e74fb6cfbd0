"""Training checkpoints that survive being killed at any instant.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, then
renamed over its final name (``os.replace`` is atomic on POSIX), and only then is the ``latest``
pointer replaced the same way. A run killed mid-write leaves the previous checkpoint and pointer
untouched. A write that fails (disk full, I/O error) removes its temporary file and raises
:class:`CheckpointWriteError` naming the file; the previous checkpoint and pointer stay loadable.
Files hold only tensors and plain Python values, so they load with ``weights_only=True`` (no
arbitrary unpickling).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import numpy as np
import torch

from .hub import torch_load

LATEST = "latest"
# Written next to a pixel stage's exported tokenizer: the PatchGAN and its optimizer, so the
# next stage continues the adversarial game instead of restarting it against a trained generator.
DISCRIMINATOR_FILE = "discriminator.pt"


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed; the message names the file, the cause and what is intact."""

    def __init__(self, path: Path, cause: OSError) -> None:
        intact = latest_checkpoint_or_none(path.parent)
        super().__init__(
            cause.errno or errno.EIO,
            f"could not write checkpoint file {path}: {cause.strerror or cause}; "
            f"the last good checkpoint is {intact or 'none (no checkpoint written yet)'}",
        )
        self.path = path


def latest_checkpoint_or_none(directory: Path) -> Path | None:
    """The checkpoint ``latest`` points to; None when there is none or the pointer dangles."""
    try:
        return latest_checkpoint(directory)
    except OSError:
        return None


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file, fsync it, and rename it onto ``path``.

    Any failure removes the temp file (nothing half-written is left behind); an ``OSError``
    surfaces as :class:`CheckpointWriteError`, whose message names ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, CheckpointWriteError):
            raise CheckpointWriteError(path, err) from err
        raise


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step_{step:08d}.pt`` atomically, point ``latest`` at it, prune older ones.

    Only checkpoints older than the new one are pruned: a newer file left by a run that failed
    between writing a checkpoint and moving the pointer must not push the new one out.
    """
    path = directory / f"step_{step:08d}.pt"
    atomic_write(path, lambda f: _save_tensors(state, f))
    atomic_write(directory / LATEST, lambda f: f.write(path.name.encode()))
    older = sorted(p for p in directory.glob("step_*.pt") if p.name < path.name)
    for old in older[: max(0, len(older) - keep + 1)] if keep > 0 else []:
        old.unlink()
    return path


def _save_tensors(state: dict[str, Any], file: BinaryIO) -> None:
    """``torch.save``, except that a failed write surfaces as the ``OSError`` it was: torch
    reports it as an unrelated ``RuntimeError`` ("unexpected pos ...")."""
    errors: list[OSError] = []

    def write(data: bytes) -> int:
        try:
            return file.write(data)
        except OSError as err:
            errors.append(err)
            raise

    try:
        torch.save(state, SimpleNamespace(write=write, flush=file.flush))
    except RuntimeError as err:
        if errors:
            raise errors[0] from err
        raise


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint ``latest`` names: a ``step_*.pt`` file of ``directory`` itself, never a path
    elsewhere (a tampered pointer such as ``../x`` or ``/abs/x`` is refused)."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not re.fullmatch(r"step_\d+\.pt", name):
        raise FileNotFoundError(f"{pointer} names {name!r}, not a step_*.pt file of {directory}")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{pointer} points to {path.name}, which does not exist")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch_load(path)


def save_discriminator(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``{"disc": ..., "disc_optimizer": ..., "disc_channels": ...}`` atomically."""
    path = Path(directory) / DISCRIMINATOR_FILE
    atomic_write(path, lambda f: _save_tensors(state, f))
    return path


def load_discriminator(directory: str | Path) -> dict[str, Any] | None:
    """What :func:`save_discriminator` wrote in ``directory``; None when it holds none."""
    path = Path(directory) / DISCRIMINATOR_FILE
    return torch_load(path) if path.is_file() else None


def rng_state() -> dict[str, Any]:
    """Every random number generator a training step draws from."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """``random.setstate`` needs tuples; a round trip through torch.save may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def truncate_metrics(path: Path, step: int) -> None:
    """Drop JSONL log lines written after the checkpoint a resumed run restarts from, and a
    last line torn by a kill or a full disk (it has no newline)."""
    if path.is_file():
        text = path.read_text()
        whole = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        lines = [ln for ln in whole.splitlines() if json.loads(ln)["step"] <= step]
        path.write_text("".join(f"{ln}\n" for ln in lines))
