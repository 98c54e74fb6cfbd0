"""Finding weight files: a local file, a local directory, or a Hugging Face hub repo id.

Used for teacher weights and for ``SemHiTok.from_pretrained``. The offline switch
(``HF_HUB_OFFLINE``) is read when a file is requested, not when ``huggingface_hub`` is imported,
and a file that cannot be had fails at once with a message naming it and the option to supply it.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class WeightsNotFoundError(FileNotFoundError):
    """Weights or configs that are neither on disk nor obtainable from the hub."""


class UnsafeWeightsError(pickle.UnpicklingError):
    """A torch file that only full unpickling, which can run arbitrary code, could load."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.fullmatch(spec)) and not Path(spec).expanduser().exists()


def resolve_file(
    spec: str, filenames: Sequence[str], *, what: str, option: str, local_only: bool = False
) -> Path:
    """Path of the first of ``filenames`` found at ``spec``.

    ``spec`` is a file (returned as is), a directory (searched for ``filenames``) or a hub repo id
    (downloaded, or taken from the cache when offline or ``local_only``).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in filenames:
            if (path / name).is_file():
                return path / name
        raise WeightsNotFoundError(f"{what}: directory {path} contains none of {list(filenames)}")
    if not is_hub_id(spec):
        raise WeightsNotFoundError(
            f"{what}: {spec!r} is neither an existing file or directory nor a hub id "
            f"('org/name'). Supply it with {option}."
        )
    return _download(spec, filenames, what=what, option=option, local_only=local_only)


def _download(repo: str, filenames, *, what: str, option: str, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = local_only or hub_offline()
    reason = "not in the repo"
    for name in filenames:
        try:
            return Path(hf_hub_download(repo, name, local_files_only=offline))
        except LocalEntryNotFoundError:
            reason = (
                "offline (HF_HUB_OFFLINE=1) and not in the local cache"
                if offline
                else ("the hub cannot be reached and it is not in the local cache")
            )
            if not offline:
                break  # a network failure will not get better for the next file name
        except EntryNotFoundError:
            continue
        except Exception as err:  # auth, repo-not-found, HTTP errors: report, do not retry
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            break
    raise WeightsNotFoundError(
        f"{what} {repo!r} ({' or '.join(filenames)}) is unavailable: {reason}. "
        f"Download it where the hub is reachable and pass the local file or directory with "
        f"{option}."
    )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or from a torch file without unpickling arbitrary code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path} does not hold a state dict")
    return state


def torch_load(path: str | Path) -> Any:
    """``torch.load`` of tensors and plain values only (``weights_only=True``, on the CPU).

    Anything else is refused with :class:`UnsafeWeightsError` naming the file: torch's own message
    names no file and suggests ``weights_only=False``, which would run what the pickle says."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((ln for ln in str(err).splitlines() if "nsupported" in ln), "").strip()
        raise UnsafeWeightsError(
            f"refused to load {path}: it holds more than tensors and plain values, and unpickling "
            f"the rest could run arbitrary code ({reason or 'not loadable with weights_only'}). "
            "Use safetensors, or re-save weights you trust as tensors only."
        ) from err
