"""Finding weight files: a local file or directory, else a download into a cache.

Two remote sources, one set of rules: a Hugging Face hub repo id (:func:`resolve_file`: teacher
weights, ``SemHiTok.from_pretrained``) or a plain URL cached where torch hub keeps its downloads
(:func:`resolve_url_file`: the FID Inception and LPIPS VGG16 weights, which are not on the hub).
The offline switch (``HF_HUB_OFFLINE``) is read when a file is requested, not at import, and a
file that cannot be had fails at once with a message naming it and the option to supply it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_URL_TIMEOUT_S = 30  # per socket operation; one attempt, no retries


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
    local = _local_file(spec, filenames, what=what)
    if local is not None:
        return local
    if not is_hub_id(spec):
        raise WeightsNotFoundError(
            f"{what}: {spec!r} is neither an existing file or directory nor a hub id "
            f"('org/name'). Supply it with {option}."
        )
    return _hub_download(spec, filenames, what=what, option=option, local_only=local_only)


def resolve_url_file(
    spec: str | None,
    url: str,
    filename: str,
    *,
    what: str,
    option: str,
    hash_prefix: str | None = None,
    error: type[WeightsNotFoundError] = WeightsNotFoundError,
) -> Path:
    """Path of the file ``filename`` published at ``url``: ``spec`` (the file, or a directory
    holding it), else torch hub's cache, else a download into that cache (refused when offline;
    checked against ``hash_prefix`` of its sha256 when given). Failures raise ``error``."""
    if spec is not None:
        local = _local_file(spec, [filename], what=what, error=error)
        if local is None:
            raise error(f"{what}: {spec!r} does not exist. Supply it with {option}.")
        return local
    cached = torch_hub_cache() / filename
    if cached.is_file():
        return cached
    missing = f"{what} {filename} is not in torch hub's cache ({cached.parent}) and"
    hint = f"Download {url} where the network is reachable and pass the file with {option}."
    if hub_offline():
        raise error(f"{missing} downloads are off (HF_HUB_OFFLINE=1). {hint}")
    try:
        _url_download(url, cached, hash_prefix=hash_prefix)
    except (OSError, ValueError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise error(f"{missing} could not be downloaded ({reason}). {hint}") from err
    return cached


def torch_hub_cache() -> Path:
    """Where torch hub, pytorch-fid and torchvision keep downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _local_file(
    spec: str,
    filenames: Sequence[str],
    *,
    what: str,
    error: type[WeightsNotFoundError] = WeightsNotFoundError,
) -> Path | None:
    """``spec`` when it is a file, the first of ``filenames`` in it when it is a directory
    (``error`` when none is there), ``None`` when nothing exists at ``spec``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in filenames:
            if (path / name).is_file():
                return path / name
        raise error(f"{what}: directory {path} contains none of {list(filenames)}")
    return None


def _url_download(url: str, dst: Path, *, hash_prefix: str | None) -> None:
    """One attempt with a socket timeout (torch hub's downloader has none), written atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S) as response,
            tmp.open("wb") as f,
        ):
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if hash_prefix and not digest.hexdigest().startswith(hash_prefix):
            raise ValueError(f"sha256 {digest.hexdigest()[:12]}… does not start with {hash_prefix}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _hub_download(repo: str, filenames, *, what: str, option: str, local_only: bool) -> Path:
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
