"""Training checkpoints that survive being killed at any instant.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, then
renamed over its final name (``os.replace`` is atomic on POSIX), and only then is the ``latest``
pointer replaced the same way. A run killed mid-write leaves the previous checkpoint and pointer
untouched. Files hold only tensors and plain Python values, so they load with
``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file, fsync it, and rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step_{step:08d}.pt`` atomically, point ``latest`` at it, prune older ones."""
    path = directory / f"step_{step:08d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    atomic_write(directory / LATEST, lambda f: f.write(path.name.encode()))
    for old in sorted(directory.glob("step_*.pt"))[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def latest_checkpoint(directory: Path) -> Path | None:
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"{pointer} points to {path.name}, which does not exist")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    """Drop JSONL log lines written after the checkpoint a resumed run restarts from."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        path.write_text("".join(f"{ln}\n" for ln in lines))
