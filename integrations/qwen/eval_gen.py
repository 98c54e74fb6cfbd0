"""Text-to-image evaluation of the unified MLLM (the paper's Tab. 8: MJHQ-30K gFID, GenAI-Bench).

``semhitok-qwen eval-gen`` samples one image per prompt of a benchmark's prompt file into
``OUT/images/<id>.png`` and lists them in ``OUT/manifest.jsonl``; ``semhitok-qwen
eval-gen-metrics OUT`` (or the same metric options given to ``eval-gen``) scores the folder into
``OUT/metrics.json``.

**Prompt files** (:func:`read_prompts`): MJHQ-30K's ``meta_data.json`` (``{id: {"prompt",
"category"}}``); GenAI-Bench's ``genai_image.json`` (``{"00000": {"prompt", ...}}``), whose skill
tags come from the ``genai_skills.json`` next to it (``{skill: [prompt index, ...]}``, the file
t2v_metrics' ``genai_bench/evaluate.py`` reads); a JSON list or a JSONL file of
``{"prompt", "id"?, "category"?, "tags"?}``.

**Sampling.** The paper states no CFG scale, temperature or top-k for Tab. 8, so :class:`Sampling`
defaults to :func:`~semhitok_qwen.generation.generate_image`'s own (CFG 4, temperature 1, no
top-k/top-p), and every run records what it used. ``generate_image`` draws all rows of a batch from
one generator, so the prompts are cut into fixed batches in file order and batch ``b`` is sampled
with seed ``seed + b``: an image depends on the settings and its batch, not on the number of
processes, nor on what an interrupted run already wrote. Under torchrun each rank holds a model copy
and samples the batches ``b ≡ rank (mod world size)``.

**Resuming.** A rerun with the same settings (checked against ``OUT/settings.json``) samples only
the batches that miss an image and writes only the missing files. Files are written under a
temporary name and renamed, so a killed run leaves whole PNGs or none.

**Metrics** (:func:`evaluate_folder`):

* ``fid``: pytorch-fid's protocol (``python -m pytorch_fid GEN REF``): images read as stored, RGB,
  resized to 299 inside the network, 2048-d pool3 features, Fréchet distance, using the core's
  Inception loader and statistics (:mod:`semhitok_plugin.evaluation`). Overall, and per category
  when the reference folder has one subfolder per category (MJHQ-30K's ``mjhq30k_imgs/<category>``).
* ``clip_score``: ``100 · max(cos(image, prompt), 0)`` with an open_clip model (torchmetrics'
  ``CLIPScore`` definition), mean over images. Not in the paper's tables; a diagnostic.
* ``vqa_score``: VQAScore, the probability that a VQA model answers ``Yes`` to
  ``Does this figure show "{prompt}"? Please answer yes or no.`` (teacher-forced answer tokens).
  Means over all prompts, per GenAI-Bench skill and over the ``basic``/``advanced`` groups (Tab. 8's
  columns). The paper's scorer is t2v_metrics' clip-flant5-xxl, which is not a transformers model;
  the scorers here are a semhitok-qwen model or any transformers image-text-to-text model, and
  their numbers are not comparable with Tab. 8's.

Every weight and data path is checked before a model is loaded or an image is sampled; a missing one
stops the run with one line naming the option that supplies it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from semhitok_plugin.config import ConfigError
from semhitok_plugin.images import ImageReadError, load_image

from .generation import TextOnly, generate_image
from .processor import IMAGE_PLACEHOLDER

if TYPE_CHECKING:  # the metrics import pytorch-fid, lpips and scikit-image only when they run
    from semhitok_plugin.evaluation import FrechetStats

IMAGES, MANIFEST, SETTINGS, METRICS = "images", "manifest.jsonl", "settings.json", "metrics.json"
GENAI_SKILLS = "genai_skills.json"
GENAI_GROUPS = ("basic", "advanced")  # Tab. 8's GenAI-Bench columns (skill tags of the same name)
QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
ANSWER = "Yes"
FID_DIMS = 2048
RANDOM_INCEPTION = "RANDOM (--random-backbones): smoke test only, FID not comparable"
VQA_NOTE = (
    "Tab. 8 scores GenAI-Bench with t2v_metrics' clip-flant5-xxl; VQAScores from another scorer "
    "are not comparable with its numbers"
)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PromptFileError(ConfigError):
    """A prompt file that does not hold a list of prompts; the message names the file and entry."""


class ResumeMismatchError(ConfigError):
    """An output folder whose images were sampled with other settings than this run's."""


# -- prompts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    id: str  # also the image's file name: OUT/images/<id>.png
    prompt: str
    category: str | None = None
    tags: tuple[str, ...] = ()


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a MJHQ-30K / GenAI-Bench JSON file, a JSON list or a JSONL file, in order.

    An entry without an id gets its position (``00000``, ``00001``, ...). GenAI-Bench's skill tags
    are read from ``genai_skills.json`` next to ``path`` when it is there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist (--prompts)")
    entries = _entries(path)
    prompts = [_prompt(key, entry, i, where) for i, (key, entry, where) in enumerate(entries)]
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts")
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise PromptFileError(f"{path}: prompt id {p.id!r} occurs twice")
        seen.add(p.id)
    skills = path.with_name(GENAI_SKILLS)
    return _with_skills(prompts, skills) if skills.is_file() else prompts


def _entries(path: Path) -> list[tuple[str | None, object, str]]:
    """(id from a dict key or None, entry, where) of each entry of the file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                entries.append((None, _json(line, f"{path}:{n}"), f"{path}:{n}"))
        return entries
    data = _json(text, str(path))
    if isinstance(data, dict):
        return [(str(k), v, f"{path} entry {k!r}") for k, v in data.items()]
    if isinstance(data, list):
        return [(None, v, f"{path} item {i}") for i, v in enumerate(data)]
    raise PromptFileError(f"{path} holds a JSON {type(data).__name__}, not a dict or list")


def _json(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PromptFileError(f"{where}: not JSON ({err.msg}, line {err.lineno})") from err


def _prompt(key: str | None, entry: object, index: int, where: str) -> Prompt:
    if isinstance(entry, str):
        entry = {"prompt": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        raise PromptFileError(f"{where}: needs a 'prompt' string")
    pid = key if key is not None else entry.get("id", f"{index:05d}")
    if not isinstance(pid, str | int) or not _SAFE_ID.fullmatch(str(pid)):
        raise PromptFileError(
            f"{where}: id {pid!r} is not usable as a file name (letters, digits, '.', '_', '-')"
        )
    category, tags = entry.get("category"), entry.get("tags", [])
    if category is not None and not isinstance(category, str):
        raise PromptFileError(f"{where}: 'category' must be a string")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise PromptFileError(f"{where}: 'tags' must be a list of strings")
    return Prompt(str(pid), entry["prompt"], category, tuple(tags))


def _with_skills(prompts: list[Prompt], skills: Path) -> list[Prompt]:
    """GenAI-Bench's tags: ``genai_skills.json`` maps each skill to prompt indices (ints)."""
    data = _json(skills.read_text(encoding="utf-8"), str(skills))
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(i, int) for i in v) for v in data.values()
    ):
        raise PromptFileError(f"{skills}: expected {{skill: [prompt index, ...]}}")
    tags: dict[int, set[str]] = defaultdict(set)
    for skill, indices in data.items():
        for i in indices:
            tags[i].add(skill)
    return [
        replace(p, tags=tuple(sorted(set(p.tags) | tags[int(p.id)]))) if p.id.isdigit() else p
        for p in prompts
    ]


# -- sampling --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """Sampling settings of a run (the defaults are ``generate_image``'s: the paper gives none)."""

    cfg_scale: float = 4.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    batch_size: int = 8


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a torchrun job (alone: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@contextlib.contextmanager
def distributed(device: str | None = None) -> Iterator[Ranks]:
    """This process's rank, world size and device, from torchrun's environment
    (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); a process group (NCCL on GPUs, else gloo) exists
    for the duration. Alone: rank 0 of 1 on ``device`` (default: CUDA when present)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if world == 1:
        yield Ranks(0, 1, dev)
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), world, dev)
    finally:
        dist.destroy_process_group()


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def image_file(prompt: Prompt) -> str:
    """The image's path relative to the output folder."""
    return f"{IMAGES}/{prompt.id}.png"


def generate_folder(
    model,
    processor,
    prompts: Sequence[Prompt],
    output: str | Path,
    sampling: Sampling,
    *,
    run: dict,
    limit: int | None = None,
    ranks: Ranks | None = None,
    progress: bool = True,
) -> int:
    """Sample the images ``output`` lacks for ``prompts[:limit]`` and write the manifest; return
    how many images this process wrote. ``run`` (model, dtype, ...) is recorded with the sampling
    settings, and a rerun must match both."""
    output, ranks = Path(output), ranks or Ranks()
    check_settings(output, {**asdict(sampling), **run, "prompts": _digest(prompts)})
    images = output / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    if ranks.rank == 0:
        for stale in images.glob(".*.tmp"):  # left by a killed run
            stale.unlink()
    _barrier()
    wanted = len(prompts) if limit is None else min(limit, len(prompts))
    size = sampling.batch_size
    mine = [
        (b, list(prompts[start : start + size]))
        for b, start in enumerate(range(0, wanted, size))
        if b % ranks.world_size == ranks.rank
    ]
    written = 0
    for b, batch in tqdm(
        mine, desc="eval-gen", unit="batch", disable=not progress or ranks.rank != 0
    ):
        missing = [
            i
            for i, p in enumerate(batch)
            if b * size + i < wanted and not (output / image_file(p)).exists()
        ]
        if not missing:
            continue
        out = generate_image(
            model,
            processor,
            [p.prompt for p in batch],
            cfg_scale=sampling.cfg_scale,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            seed=sampling.seed + b,
        )
        for i in missing:
            save_png(out.images[i], output / image_file(batch[i]))
            written += 1
    _barrier()
    if ranks.rank == 0:
        write_manifest(output, prompts[:wanted], sampling)
    return written


def check_settings(output: Path, settings: dict) -> None:
    """Record ``settings`` in ``output/settings.json``, or check them against the recorded ones."""
    path = output / SETTINGS
    if not path.is_file():
        output.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=2) + "\n"))
        return
    recorded = json.loads(path.read_text())
    changed = [
        f"{key} {recorded.get(key)!r} -> {settings.get(key)!r}"
        for key in sorted(set(recorded) | set(settings))
        if recorded.get(key) != settings.get(key)
    ]
    if changed:
        raise ResumeMismatchError(
            f"{output} holds images sampled with other settings ({'; '.join(changed)}): rerun "
            "with the recorded ones (settings.json) or write to another --output"
        )


def _digest(prompts: Sequence[Prompt]) -> str:
    """Identifies the prompt list (ids, texts and order), so a resume cannot mix prompt files."""
    text = json.dumps([[p.id, p.prompt] for p in prompts], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_png(image: Image.Image, path: Path) -> None:
    _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a hidden temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(output: Path, prompts: Sequence[Prompt], sampling: Sampling) -> None:
    """One JSON line per image: id, prompt, category, tags, file, the seed of its batch, the
    batch and the sampling settings."""
    absent = [image_file(p) for p in prompts if not (output / image_file(p)).is_file()]
    if absent:
        raise RuntimeError(f"{len(absent)} images were not written, e.g. {output / absent[0]}")
    settings = asdict(sampling)
    lines = []
    for index, p in enumerate(prompts):
        batch = index // sampling.batch_size
        record = {
            "id": p.id,
            "prompt": p.prompt,
            "category": p.category,
            "tags": list(p.tags),
            "file": image_file(p),
            "seed": sampling.seed + batch,
            "batch": batch,
            "settings": settings,
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    _atomic_write(output / MANIFEST, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))


def read_manifest(output: str | Path) -> list[dict]:
    path = Path(output) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: generate the images with semhitok-qwen eval-gen first"
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# -- metric sources --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSources:
    """The data and weights the metrics need, each checked to exist (:func:`metric_sources`)."""

    reference: Path | None = None  # FID reference images (one subfolder per category, optional)
    inception: Path | None = None  # FID Inception weights; None with a reference: random
    fid_dims: int = FID_DIMS
    clip_model: str | None = None  # open_clip name or "local-dir:PATH"
    clip_weights: Path | None = None
    vqa_model: Path | None = None

    @property
    def any(self) -> bool:
        return any(x is not None for x in (self.reference, self.clip_model, self.vqa_model))


def metric_sources(
    *,
    reference: str | None = None,
    inception_weights: str | None = None,
    random_backbones: bool = False,
    fid_dims: int = FID_DIMS,
    clip_model: str | None = None,
    clip_weights: str | None = None,
    vqa_model: str | None = None,
) -> MetricSources:
    """Check every path a metric needs, before anything is loaded or sampled; a missing one
    raises an error naming the option that supplies it (offline: no download is tried)."""
    inception = None
    if reference is None:
        if inception_weights is not None or random_backbones:
            raise ConfigError(
                "--inception-weights and --random-backbones are for FID: add --reference"
            )
    else:
        if not Path(reference).is_dir():
            raise FileNotFoundError(
                f"FID reference folder {reference} does not exist: supply the reference images "
                "(MJHQ-30K: mjhq30k_imgs, one subfolder per category) with --reference"
            )
        if random_backbones and inception_weights is not None:
            raise ConfigError("--random-backbones cannot be combined with --inception-weights")
        from pytorch_fid.inception import InceptionV3

        if fid_dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
            widths = ", ".join(map(str, sorted(InceptionV3.BLOCK_INDEX_BY_DIM)))
            raise ConfigError(f"--fid-dims must be one of {widths}, got {fid_dims}")
        if not random_backbones:
            from semhitok_plugin.evaluation import resolve_inception_weights

            inception = resolve_inception_weights(inception_weights)
    clip_path = None
    if clip_model is not None:
        clip_model, clip_path = _check_clip(clip_model, clip_weights)
    elif clip_weights is not None:
        raise ConfigError("--clip-weights needs --clip-model (the architecture it belongs to)")
    vqa = None
    if vqa_model is not None:
        vqa = Path(vqa_model)
        if not (vqa / "config.json").is_file():
            raise FileNotFoundError(
                f"VQAScore model {vqa_model} is not a model folder (no config.json): supply a "
                "local semhitok-qwen or transformers image-text-to-text model with --vqa-model"
            )
    return MetricSources(
        Path(reference) if reference else None, inception, fid_dims, clip_model, clip_path, vqa
    )


_CLIP_FILES = ("*.safetensors", "*.bin", "*.pth")  # what open_clip's local-dir loader looks for


def _check_clip(spec: str, weights: str | None) -> tuple[str, Path | None]:
    """(open_clip model name, weights file); a directory becomes ``local-dir:DIR``, whose
    weights open_clip finds in it."""
    import open_clip

    local = Path(spec.removeprefix("local-dir:"))
    if spec.startswith("local-dir:") or local.is_dir():
        if weights is not None:
            raise ConfigError(
                "--clip-weights is for a model name; a --clip-model folder holds its own"
            )
        if not (local / "open_clip_config.json").is_file() or not any(
            next(local.glob(pattern), None) for pattern in _CLIP_FILES
        ):
            raise FileNotFoundError(
                f"CLIP model folder {local} needs open_clip_config.json and a weights file "
                f"({', '.join(_CLIP_FILES)}): supply one with --clip-model"
            )
        return f"local-dir:{local}", None
    if spec not in open_clip.list_models():
        raise ConfigError(
            f"unknown open_clip model {spec!r} (--clip-model): a name from "
            "open_clip.list_models() or a local folder with open_clip_config.json"
        )
    if weights is None or not Path(weights).is_file():
        raise FileNotFoundError(
            f"CLIP weights for {spec}: {weights or 'none given'} is not a file; supply a local "
            "checkpoint with --clip-weights"
        )
    return spec, Path(weights)


# -- metrics ---------------------------------------------------------------------------------------
def evaluate_folder(
    output: str | Path,
    sources: MetricSources,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 4,
    progress: bool = True,
) -> dict:
    """The requested metrics of a folder written by :func:`generate_folder`, also written to
    ``output/metrics.json``."""
    output, device = Path(output), torch.device(device)
    records = read_manifest(output)
    result: dict = {"images": len(records), "folder": str(output)}
    if sources.reference is not None:
        result["fid"] = fid_metrics(
            records,
            output,
            sources,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
    if sources.clip_model is not None:
        scorer = load_clip(sources, device)
        scores = _score(records, output, scorer, batch_size, progress, "clip-score")
        result["clip_score"] = {
            **_means(scores, records),
            "model": sources.clip_model,
            **_weights_label(sources.clip_weights),
            "definition": "100 * max(cos(image, prompt), 0), mean over images",
        }
    if sources.vqa_model is not None:
        vqa = load_vqa_scorer(sources.vqa_model, device)
        scores = _score(records, output, vqa, batch_size, progress, "vqa-score")
        result["vqa_score"] = {
            **_means(scores, records, groups=GENAI_GROUPS),
            "scorer": str(sources.vqa_model),
            "scorer_kind": vqa.kind,
            "question": QUESTION,
            "answer": ANSWER,
            "note": VQA_NOTE,
        }
    text = json.dumps(result, indent=2)
    _atomic_write(output / METRICS, lambda tmp: tmp.write_text(text + "\n"))
    return result


def _means(scores: torch.Tensor, records: list[dict], groups: Sequence[str] = ()) -> dict:
    """Mean score overall, per tag group named in ``groups`` (when any image has that tag), per
    tag and per category."""
    by_tag, by_category = defaultdict(list), defaultdict(list)
    for score, record in zip(scores.tolist(), records, strict=True):
        for tag in record.get("tags") or ():
            by_tag[tag].append(score)
        if record.get("category") is not None:
            by_category[record["category"]].append(score)
    out = {"overall": float(scores.mean())}
    out |= {g: float(np.mean(by_tag[g])) for g in groups if by_tag.get(g)}
    if by_tag:
        out["per_tag"] = {t: float(np.mean(v)) for t, v in sorted(by_tag.items())}
    if by_category:
        out["per_category"] = {c: float(np.mean(v)) for c, v in sorted(by_category.items())}
    return out


def _score(
    records: list[dict],
    output: Path,
    score: Callable[[list[Image.Image], list[str]], torch.Tensor],
    batch_size: int,
    progress: bool,
    desc: str,
) -> torch.Tensor:
    """``score(images, prompts)`` over the manifest, in batches; one value per image."""
    values = []
    starts = range(0, len(records), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        chunk = records[start : start + batch_size]
        images = [load_image(output / r["file"], as_stored=True) for r in chunk]
        values.append(score(images, [r["prompt"] for r in chunk]).float().cpu())
    return torch.cat(values)


def _weights_label(path: Path | None, published_prefix: str | None = None) -> dict:
    """Where a backbone's weights came from: the file and its sha256; with ``published_prefix``,
    whether the digest starts with it (the hash in a torch hub file name)."""
    if path is None:
        return {}
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    label = {"weights": str(path), "sha256": digest.hexdigest()}
    if published_prefix is not None:
        label["published"] = label["sha256"].startswith(published_prefix)
    return label


# FID ----------------------------------------------------------------------------------------------
class _ImageFiles(Dataset):
    """(category, uint8 (3, H, W) or None, read error or None) per file, read as pytorch-fid reads
    images (``Image.open(path).convert("RGB")``: as stored)."""

    def __init__(self, items: list[tuple[Path, str | None]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, category = self.items[i]
        try:
            pixels = np.asarray(load_image(path, as_stored=True))
        except ImageReadError as err:
            return category, None, str(err)
        return category, torch.from_numpy(pixels.copy()).permute(2, 0, 1), None


@dataclass
class _FIDSet:
    overall: FrechetStats
    per_category: dict[str, FrechetStats]
    skipped: list[str] = field(default_factory=list)


def _fid_statistics(
    items: list[tuple[Path, str | None]],
    inception: nn.Module,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
    desc: str,
) -> _FIDSet:
    """Inception statistics of the images, overall and per category, in one pass. Images of one
    size are batched together (pytorch-fid needs equal sizes; the network resizes to 299)."""
    from semhitok_plugin.evaluation import FrechetStats, inception_activations

    stats = _FIDSet(FrechetStats(), defaultdict(FrechetStats))
    loader = DataLoader(_ImageFiles(items), batch_size=None, num_workers=num_workers)
    pending: list[tuple[str | None, torch.Tensor]] = []

    def flush() -> None:
        pixels = torch.stack([p for _, p in pending]).to(device)
        acts = inception_activations(inception, pixels.float() / 255).cpu()
        stats.overall.update(acts)
        categories = [c for c, _ in pending]
        for category in set(categories) - {None}:
            stats.per_category[category].update(
                acts[[i for i, c in enumerate(categories) if c == category]]
            )
        pending.clear()

    for category, pixels, error in tqdm(loader, desc=desc, unit="image", disable=not progress):
        if pixels is None:
            stats.skipped.append(error)
            continue
        if pending and (pixels.shape != pending[0][1].shape or len(pending) == batch_size):
            flush()
        pending.append((category, pixels))
    if pending:
        flush()
    return stats


def load_fid_inception(sources: MetricSources, device: torch.device) -> tuple[nn.Module, dict]:
    """The FID Inception (pytorch-fid's, from ``sources.inception``; random without it) and a
    label of its weights for the results."""
    from semhitok_plugin import evaluation as ev
    from semhitok_plugin.hub import load_state_dict

    with torch.random.fork_rng(devices=[]):  # random weights reproducible, caller's RNG untouched
        torch.manual_seed(0)
        if sources.inception is None:
            return ev.fid_inception(dims=sources.fid_dims).to(device), {"weights": RANDOM_INCEPTION}
        try:
            net = ev.fid_inception(load_state_dict(sources.inception), dims=sources.fid_dims)
        except RuntimeError as err:
            raise ev.MetricWeightsError(
                f"{sources.inception} does not hold pytorch-fid's FID Inception weights "
                f"({ev.INCEPTION_FILE}): {' '.join(str(err).split())[:300]}"
            ) from err
    published = re.search(r"-([0-9a-f]{8,})\.pth$", ev.INCEPTION_FILE).group(1)
    return net.to(device), _weights_label(sources.inception, published)


def fid_metrics(
    records: list[dict],
    output: Path,
    sources: MetricSources,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> dict:
    """FID of the generated images against ``sources.reference``, overall and per category (a
    reference image's category is its top-level subfolder)."""
    from semhitok_plugin.data import image_files
    from semhitok_plugin.evaluation import frechet_distance

    inception, label = load_fid_inception(sources, device)
    generated = [(output / r["file"], r.get("category")) for r in records]
    reference = [
        (p, p.relative_to(sources.reference).parts[0] if p.parent != sources.reference else None)
        for p in image_files(sources.reference)
    ]
    kwargs = dict(device=device, batch_size=batch_size, num_workers=num_workers, progress=progress)
    gen = _fid_statistics(generated, inception, desc="fid generated", **kwargs)
    ref = _fid_statistics(reference, inception, desc="fid reference", **kwargs)

    def pair(a, b) -> dict:
        return {"fid": frechet_distance(a, b), "generated": a.n, "reference": b.n}

    result = {"overall": pair(gen.overall, ref.overall)}
    shared = sorted(set(gen.per_category) & set(ref.per_category))
    shared = [c for c in shared if gen.per_category[c].n > 1 and ref.per_category[c].n > 1]
    if shared:
        result["per_category"] = {c: pair(gen.per_category[c], ref.per_category[c]) for c in shared}
    result |= {"inception": label, "dims": gen.overall.dims, "skipped": gen.skipped + ref.skipped}
    caveats = _fid_caveats(label, gen.overall.dims, gen.overall.n, ref.overall.n)
    result["comparable"] = not caveats
    if caveats:
        result["note"] = "not comparable with published FIDs: " + "; ".join(caveats)
    return result


def _fid_caveats(label: dict, dims: int, generated: int, reference: int) -> list[str]:
    caveats = []
    if label.get("weights") == RANDOM_INCEPTION:
        caveats.append("random Inception")
    elif not label.get("published", False):
        caveats.append("Inception weights are not pytorch-fid's published file (sha256 prefix)")
    if dims != FID_DIMS:
        caveats.append(f"{dims}-d features (published FIDs use {FID_DIMS})")
    if min(generated, reference) < FID_DIMS:
        caveats.append(f"fewer than {FID_DIMS} images in a set (singular covariance)")
    return caveats


# CLIP score ---------------------------------------------------------------------------------------
class ClipScorer:
    """``100 · max(cos, 0)`` between open_clip's image and text embeddings."""

    def __init__(self, model: nn.Module, preprocess, tokenizer, device: torch.device) -> None:
        self.model, self.preprocess, self.tokenizer = model.eval().to(device), preprocess, tokenizer
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        text = F.normalize(
            self.model.encode_text(self.tokenizer(prompts).to(self.device)).float(), dim=-1
        )
        return (100 * (image * text).sum(-1)).clamp(min=0)


def load_clip(sources: MetricSources, device: torch.device) -> ClipScorer:
    """open_clip's model, eval transform and tokenizer for ``sources.clip_model`` (weights from
    ``sources.clip_weights``, or from the ``local-dir:`` folder)."""
    import open_clip

    weights = None if sources.clip_weights is None else str(sources.clip_weights)
    model, _, preprocess = open_clip.create_model_and_transforms(
        sources.clip_model, pretrained=weights, device=device
    )
    return ClipScorer(model, preprocess, open_clip.get_tokenizer(sources.clip_model), device)


# VQAScore -----------------------------------------------------------------------------------------
class VQAScorer(Protocol):
    kind: str

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """P(ANSWER | image, QUESTION.format(prompt)) per image."""
        ...


def _answer_probability(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """exp(Σ log p(answer token)) from the logits (B, n, V) that predict the n answer tokens."""
    logp = logits.float().log_softmax(-1)
    return logp.gather(-1, answer.expand(len(logits), -1)[..., None]).squeeze(-1).sum(-1).exp()


class SemHiTokQwenVQA:
    """VQAScore with a semhitok-qwen model: the question as a user turn after the image, the
    answer teacher-forced in the assistant turn; only text ids compete (as in ``chat``)."""

    kind = "semhitok_qwen"

    def __init__(self, model, processor) -> None:
        self.model, self.processor = model, processor
        ids = processor.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
        self.answer = torch.tensor(ids, device=model.device)
        self.text_only = TextOnly(processor)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        rows = [
            self.processor.tokenize_chat(
                [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{QUESTION.format(p)}"}],
                [image],
                add_generation_prompt=True,
            )[0]
            + self.answer.tolist()
            for image, p in zip(images, prompts, strict=True)
        ]
        batch = {k: v.to(self.model.device) for k, v in self.processor.pad(rows).items()}
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate_image
        n = len(self.answer)
        logits = self.model(**batch, position_ids=positions, num_logits_to_keep=n + 1).logits
        logits = logits[:, :-1]
        logits = self.text_only(None, logits.flatten(0, 1)).view_as(logits)
        return _answer_probability(logits, self.answer)


class TransformersVQA:
    """VQAScore with a local transformers image-text-to-text model (LLaVA, Qwen2-VL, ...): its own
    processor and chat template ask the question; the answer is appended and teacher-forced."""

    kind = "transformers"

    def __init__(self, directory: Path, device: torch.device) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(directory)
        if not getattr(self.processor, "chat_template", None):
            raise ConfigError(
                f"VQAScore model {directory} (--vqa-model) has no chat template to ask with"
            )
        self.processor.tokenizer.padding_side = "left"  # the answers end every row
        model = AutoModelForImageTextToText.from_pretrained(
            directory, torch_dtype="auto", use_safetensors=True
        )
        self.model = model.to(device).eval()
        ids = self.processor.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
        self.answer = torch.tensor(ids, device=device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        texts = [
            self.processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image"},
                            {"type": "text", "text": QUESTION.format(p)},
                        ],
                    }
                ],
                add_generation_prompt=True,
            )
            + ANSWER
            for p in prompts
        ]
        batch = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        batch = batch.to(self.device)
        n = len(self.answer)
        if not torch.equal(batch["input_ids"][:, -n:], self.answer.expand(len(texts), -1)):
            raise ValueError(f"the scorer's tokenizer merges {ANSWER!r} into the prompt's end")
        logits = self.model(**batch).logits[:, -n - 1 : -1]
        return _answer_probability(logits, self.answer)


def load_vqa_scorer(directory: Path, device: torch.device) -> VQAScorer:
    """A semhitok-qwen model folder gives :class:`SemHiTokQwenVQA`, any other model folder
    :class:`TransformersVQA`."""
    from .build import load_unified
    from .model import SemHiTokQwen2Config

    config = json.loads((directory / "config.json").read_text())
    if config.get("model_type") == SemHiTokQwen2Config.model_type:
        return SemHiTokQwenVQA(*load_unified(directory, device=device))
    return TransformersVQA(directory, device)


__all__ = [
    "ANSWER",
    "QUESTION",
    "ClipScorer",
    "MetricSources",
    "Prompt",
    "PromptFileError",
    "Ranks",
    "ResumeMismatchError",
    "Sampling",
    "SemHiTokQwenVQA",
    "TransformersVQA",
    "distributed",
    "evaluate_folder",
    "fid_metrics",
    "generate_folder",
    "load_clip",
    "load_fid_inception",
    "load_vqa_scorer",
    "metric_sources",
    "read_manifest",
    "read_prompts",
]
